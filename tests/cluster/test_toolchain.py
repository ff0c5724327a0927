"""The binaries' build: grouped wrapper modules, a cache that tests only read, progress a log can follow."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tradeplane.cluster import toolchain
from tradeplane.cluster.progress import BuildProgress


def test_kubernetes_components_share_one_build_pinned_to_published_staging_modules() -> None:
    group = toolchain.GROUP_OF["kube-apiserver"]
    others = ("kube-controller-manager", "kube-scheduler", "kubectl")
    assert all(toolchain.GROUP_OF[name] is group for name in others)
    go_mod = toolchain.VERSION_SET_OF[group.name].go_mod()
    assert f"require k8s.io/kubernetes {toolchain.KUBERNETES_VERSION}" in go_mod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.34.4\n" in go_mod
    assert len(toolchain.ALL_BINARIES) == len(set(toolchain.ALL_BINARIES))
    assert set(toolchain.CLUSTER_BINARIES) <= set(toolchain.ALL_BINARIES)


def test_a_test_never_builds_it_is_told_to_run_set_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEPLANE_CACHE", str(tmp_path))
    with pytest.raises(
        toolchain.ToolchainError, match=r"kubectl v1\.34\.4 is not built yet: run scripts/bootstrap"
    ):
        toolchain.require("kubectl")
    assert toolchain.missing(("kubectl", "helm")) == ["kubectl", "helm"]
    built = toolchain.binary_path("helm")
    built.parent.mkdir(parents=True)
    built.write_text("")
    assert toolchain.require("helm") == built
    # Nothing missing: no Go toolchain is asked for, nothing is built.
    monkeypatch.setenv("PATH", "")
    assert toolchain.ensure(("helm",)) == {"helm": built}


def test_a_log_without_a_terminal_gets_timed_lines_per_group() -> None:
    out = io.StringIO()
    progress = BuildProgress(Console(file=out, force_terminal=False, width=200))
    with progress:
        progress.start([("etcd", "v3.6.6", ["etcd"])])
        progress.fetching("etcd")
        progress.fetched("etcd", 3)
        progress.compiling("etcd")
        for package in ("a", "b", "c"):
            progress.compiled("etcd", package)
        progress.built("etcd", 12.0)
    lines = out.getvalue().splitlines()
    assert "building 1 binaries" in lines[0]
    assert lines[1].endswith("etcd v3.6.6: modules fetched, 3 packages to compile")
    assert lines[-1].endswith("etcd v3.6.6: built in 12s")


def test_groups_that_share_client_go_resolve_one_version_set() -> None:
    # One version of client-go, grpc and protobuf for all of them: Go's build cache compiles each once.
    names = ("kubectl", "helm", "pulumi-resource-kubernetes")
    version_set = toolchain.VERSION_SET_OF[toolchain.GROUP_OF["kubectl"].name]
    assert all(toolchain.VERSION_SET_OF[toolchain.GROUP_OF[name].name] is version_set for name in names)
    # etcd keeps its own; kwok and the Pulumi CLI do not build against these versions.
    assert all(toolchain.VERSION_SET_OF[name] is not version_set for name in ("etcd", "kwok", "pulumi"))
    go_mod = version_set.go_mod()
    for group in version_set.groups:
        assert f"require {group.module} {group.version}\n" in go_mod
    # A binary built from another version set is another cached file.
    assert (
        toolchain.binary_path("kubectl").name
        == f"kubectl-{toolchain.KUBERNETES_VERSION}-{version_set.digest()}"
    )


def test_each_binary_is_found_where_go_build_writes_it() -> None:
    # `go build -o DIR/` names a main package after its last element, or the one before a /vN suffix.
    names = {
        name: toolchain.output_name(toolchain.GROUP_OF[name].binaries[name])
        for name in toolchain.ALL_BINARIES
    }
    assert names["etcd"] == "server"
    assert all(names[name] == name for name in toolchain.ALL_BINARIES if name != "etcd")


def test_pulumi_cli_pins_its_sdk_and_the_provider_is_built_from_a_completed_copy(tmp_path: Path) -> None:
    go_mod = toolchain.VERSION_SET_OF[toolchain.GROUP_OF["pulumi"].name].go_mod()
    assert f"require github.com/pulumi/pulumi/pkg/v3 {toolchain.PULUMI_VERSION}" in go_mod
    assert (
        f"github.com/pulumi/pulumi/sdk/v3 => github.com/pulumi/pulumi/sdk/v3 {toolchain.PULUMI_VERSION}"
        in go_mod
    )
    assert "github.com/atotto/clipboard => github.com/tgummerer/clipboard" in go_mod
    provider = toolchain.GROUP_OF["pulumi-resource-kubernetes"]
    assert provider.packages() == {
        "pulumi-resource-kubernetes": f"{toolchain.WRAPPER_MODULE}/pulumi-resource-kubernetes"
    }
    # The module ships schema.json and terraform-mapping.json; main.go embeds their generated forms.
    (tmp_path / "schema.json").write_text('{"name": "kubernetes", "resources": {"a": {}}}')
    (tmp_path / "terraform-mapping.json").write_text('{"x": [1, 2]}')
    provider.completions["pulumi-resource-kubernetes"](tmp_path)
    assert json.loads((tmp_path / "schema-embed.json").read_text()) == {
        "name": "kubernetes",
        "resources": {"a": {}},
        "version": toolchain.PULUMI_KUBERNETES_VERSION.removeprefix("v"),
    }
    assert (tmp_path / "terraform-mapping-embed.json").read_text() == '{"x":[1,2]}'


def test_pulumi_root_names_the_cached_binaries_as_the_cli_looks_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADEPLANE_CACHE", str(tmp_path))
    with pytest.raises(toolchain.ToolchainError, match=r"pulumi v3\S+ is not built yet"):
        toolchain.pulumi_root()
    for name in toolchain.PULUMI_TOOLS:
        toolchain.binary_path(name).parent.mkdir(parents=True, exist_ok=True)
        toolchain.binary_path(name).write_text(name)
    root = toolchain.pulumi_root()
    assert sorted(path.name for path in (root / "bin").iterdir()) == sorted(toolchain.PULUMI_TOOLS)
    assert all((root / "bin" / name).read_text() == name for name in toolchain.PULUMI_TOOLS)
    assert toolchain.pulumi_root() == root
