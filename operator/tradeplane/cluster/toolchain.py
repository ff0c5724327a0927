"""Build the real Kubernetes components, helm, etcd, kwok and pulumi from the Go module proxy, by version.

kind needs Docker; these machines have Go and the module proxy instead. `k8s.io/kubernetes` replaces
its `k8s.io/*` staging modules with local paths, which `go build` of the module refuses, so binaries are
built through small wrapper modules that pin the published `v0.X` staging versions instead.

Binaries that share a dependency graph are one `BuildGroup`: one `go build` compiles the shared packages
once and links every binary of the group. Groups whose graphs overlap resolve their dependencies together,
as one `VersionSet` (one wrapper module): helm and Pulumi's Kubernetes provider then compile against
the same client-go, grpc and protobuf as Kubernetes, so Go's build cache compiles those packages once
instead of once per version each group's own go.mod picks (6,225 package compiles down to 4,946). The
set-up command (`scripts/bootstrap`) builds everything before any test runs; tests only `require` what is
cached and fail with a clear message otherwise.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tradeplane.cluster.progress import BuildProgress

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.6"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.19.2"
PULUMI_VERSION = "v3.274.1"
# The provider's module is tagged v4.x.y at the repository's root only, so the proxy serves it by commit.
PULUMI_KUBERNETES_VERSION = "v4.0.0-20260115033456-f47bc2d6f199"
WRAPPER_MODULE = "tradeplane.local/build"

# The staging modules k8s.io/kubernetes replaces with local paths in its own go.mod.
STAGING_MODULES = [
    "api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
    "cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
    "controller-manager", "cri-api", "cri-client", "csi-translation-lib", "dynamic-resource-allocation",
    "endpointslice", "externaljwt", "kms", "kube-aggregator", "kube-controller-manager", "kube-proxy",
    "kube-scheduler", "kubectl", "kubelet", "metrics", "mount-utils", "pod-security-admission",
    "sample-apiserver", "sample-cli-plugin", "sample-controller",
]  # fmt: skip


@dataclass(frozen=True)
class BuildGroup:
    """Binaries built by one `go build` of one wrapper module, sharing its compiled packages."""

    name: str
    module: str
    version: str
    binaries: dict[str, str]  # binary name -> package path of its main
    ldflags: str = ""
    replaces: tuple[str, ...] = field(default=())  # go.mod replace lines, "old => new version"
    # Main packages whose module leaves out generated go:embed inputs: each is copied into the wrapper
    # module, where its function writes the missing files into the copy's directory.
    completions: dict[str, Callable[[Path], None]] = field(default_factory=dict)

    def packages(self) -> dict[str, str]:
        """Binary name -> the package `go build` compiles: the module's own, or the completed copy."""
        return {
            binary: f"{WRAPPER_MODULE}/{binary}" if binary in self.completions else package
            for binary, package in self.binaries.items()
        }


@dataclass(frozen=True)
class VersionSet:
    """Build groups resolved together in one wrapper module: every module they share is at one version,
    the highest any of them requires, so a package they share compiles once."""

    name: str
    groups: tuple[BuildGroup, ...]

    def go_mod(self) -> str:
        lines = [f"module {WRAPPER_MODULE}", "", "go 1.25.0", ""]
        lines += [f"require {group.module} {group.version}" for group in self.groups]
        replaces = [line for group in self.groups for line in group.replaces]
        if replaces:
            lines += ["", "replace (", *(f"\t{line}" for line in replaces), ")"]
        return "\n".join(lines) + "\n"

    def digest(self) -> str:
        """Names what the set's binaries were built from: another version of any member is another build."""
        return hashlib.sha256(self.go_mod().encode()).hexdigest()[:8]


def _kubernetes_ldflags() -> str:
    # Stamp the version so `kubectl version` and the apiserver's /version tell the truth.
    prefix = "k8s.io/component-base/version"
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    return " ".join(
        f"-X {prefix}.{key}={value}"
        for key, value in (
            ("gitVersion", KUBERNETES_VERSION),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )


_STAGING_VERSION = KUBERNETES_VERSION.replace("v1.", "v0.", 1)


def _complete_kubernetes_provider(directory: Path) -> None:
    """Write what the provider's `go generate` (generate.go) would: its schema stamped with the version,
    and both JSON documents compacted. Running generate.go itself compiles pulumi's codegen packages,
    about five minutes of CPU for two JSON rewrites."""
    schema = json.loads((directory / "schema.json").read_text())
    schema["version"] = PULUMI_KUBERNETES_VERSION.removeprefix("v")
    (directory / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
    mapping = json.loads((directory / "terraform-mapping.json").read_text())
    (directory / "terraform-mapping-embed.json").write_text(json.dumps(mapping, separators=(",", ":")))


VERSION_SETS: tuple[VersionSet, ...] = (
    # etcd stores the cluster's state: it keeps the grpc and bbolt its own release was tested with.
    VersionSet(
        "etcd",
        (
            BuildGroup(
                "etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, {"etcd": "go.etcd.io/etcd/server/v3"}
            ),
        ),
    ),
    # kwok v0.7.0 uses an apimachinery constant v0.34 dropped; v0.8.0 needs v0.36.
    VersionSet(
        "kwok", (BuildGroup("kwok", "sigs.k8s.io/kwok", KWOK_VERSION, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}),)
    ),
    VersionSet(
        "kubernetes",
        (
            BuildGroup(
                "kubernetes",
                "k8s.io/kubernetes",
                KUBERNETES_VERSION,
                {
                    name: f"k8s.io/kubernetes/cmd/{name}"
                    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
                },
                ldflags=_kubernetes_ldflags(),
                replaces=tuple(
                    f"k8s.io/{module} => k8s.io/{module} {_STAGING_VERSION}" for module in STAGING_MODULES
                ),
            ),
            # Stamped as helm's own Makefile does: without it `helm version` says v3.19 and `helm template`
            # renders for Kubernetes v1.20 (its client-go is v0.34).
            BuildGroup(
                "helm",
                "helm.sh/helm/v3",
                HELM_VERSION,
                {"helm": "helm.sh/helm/v3/cmd/helm"},
                ldflags=" ".join(
                    [
                        f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
                        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
                        *(
                            f"-X helm.sh/helm/v3/pkg/{package}.k8sVersion{part}={value}"
                            for package in ("chartutil", "lint/rules")
                            for part, value in (("Major", "1"), ("Minor", "34"))
                        ),
                    ]
                ),
            ),
            BuildGroup(
                "pulumi-kubernetes",
                "github.com/pulumi/pulumi-kubernetes/provider/v4",
                PULUMI_KUBERNETES_VERSION,
                {
                    "pulumi-resource-kubernetes": (
                        "github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/pulumi-resource-kubernetes"
                    )
                },
                ldflags="-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version="
                + PULUMI_KUBERNETES_VERSION.removeprefix("v"),
                completions={"pulumi-resource-kubernetes": _complete_kubernetes_provider},
            ),
        ),
    ),
    # The provider needs the pulumi packages of its own release (v3.274 changed codegen types it uses),
    # so the CLI resolves on its own.
    VersionSet(
        "pulumi",
        (
            # pkg/v3's go.mod points sdk/v3 at its sibling directory and swaps in a clipboard fork; replaces
            # only apply inside their own module, so both are restated here (sdk/v3 at pkg's version).
            BuildGroup(
                "pulumi",
                "github.com/pulumi/pulumi/pkg/v3",
                PULUMI_VERSION,
                {"pulumi": "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"},
                ldflags=f"-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={PULUMI_VERSION}",
                replaces=(
                    f"github.com/pulumi/pulumi/sdk/v3 => github.com/pulumi/pulumi/sdk/v3 {PULUMI_VERSION}",
                    "github.com/atotto/clipboard => "
                    "github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e",
                ),
            ),
        ),
    ),
)
GROUPS = tuple(group for version_set in VERSION_SETS for group in version_set.groups)
VERSION_SET_OF: dict[str, VersionSet] = {
    group.name: version_set for version_set in VERSION_SETS for group in version_set.groups
}
GROUP_OF: dict[str, BuildGroup] = {name: group for group in GROUPS for name in group.binaries}
ALL_BINARIES = tuple(GROUP_OF)
# The CLI and the plugin the engine needs for the local target.
PULUMI_TOOLS = ("pulumi", "pulumi-resource-kubernetes")
CLUSTER_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")


class ToolchainError(RuntimeError):
    """A binary could not be built, or is needed but not built; the message says what to run."""


def cache_dir() -> Path:
    base = os.environ.get("TRADEPLANE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tradeplane"
    )
    return Path(base) / "bin"


def binary_path(name: str) -> Path:
    group = GROUP_OF[name]
    return cache_dir() / f"{name}-{group.version}-{VERSION_SET_OF[group.name].digest()}"


def require(name: str) -> Path:
    """The cached binary; never builds (tests call this: a build inside a test's timeout is a defect)."""
    path = binary_path(name)
    if not path.exists():
        raise ToolchainError(f"{name} {GROUP_OF[name].version} is not built yet: run scripts/bootstrap first")
    return path


def pulumi_root() -> Path:
    """A Pulumi installation made of the cached binaries (never builds): `bin/` has each of PULUMI_TOOLS
    under the name the CLI looks for. The engine looks for plugins on PATH before its plugin cache, so a
    CLI run with this `bin/` first on PATH uses exactly these."""
    root = cache_dir().parent / f"pulumi-{PULUMI_VERSION}"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for name in PULUMI_TOOLS:
        target, link = require(name), root / "bin" / name
        if link.is_symlink() and link.readlink() == target:
            continue
        # Replaced atomically: another process may be running this CLI right now.
        partial = link.with_name(f".{name}.{os.getpid()}")
        partial.unlink(missing_ok=True)
        partial.symlink_to(target)
        partial.replace(link)
    return root


def missing(names: tuple[str, ...] = ALL_BINARIES) -> list[str]:
    return [name for name in names if not binary_path(name).exists()]


@contextmanager
def _cache_lock() -> Iterator[None]:
    # Two set-up runs at once (two checkouts on one machine) would build the same binaries twice.
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _go_env() -> dict[str, str]:
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}


def _run(command: list[str], cwd: Path, what: str) -> str:
    result = subprocess.run(command, cwd=cwd, env=_go_env(), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise ToolchainError(f"building {what} failed: {' '.join(command)}\n{tail}")
    return result.stdout


def _module_dir(group: BuildGroup, work: Path) -> Path:
    listed = _run(["go", "mod", "download", "-json", f"{group.module}@{group.version}"], work, group.name)
    return Path(json.loads(listed)["Dir"])


def _prepare(version_set: VersionSet, groups: list[BuildGroup], work: Path) -> dict[str, int]:
    """Write the set's wrapper module and fetch its modules; return, per group to build in that order, how
    many packages its build compiles (those an earlier group of the set compiled come from the cache)."""
    (work / "go.mod").write_text(version_set.go_mod())
    for group in version_set.groups:
        if not group.completions:
            continue
        source = _module_dir(group, work)
        for binary, complete in group.completions.items():
            copy = work / binary
            shutil.copytree(source / group.binaries[binary].removeprefix(f"{group.module}/"), copy)
            # The module cache is read-only, and so is what copytree copied from it.
            for path in (copy, *copy.rglob("*")):
                path.chmod(path.stat().st_mode | 0o200)
            complete(copy)
    packages = [package for group in version_set.groups for package in group.packages().values()]
    imports = "\n".join(f'import _ "{package}"' for package in packages)
    (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\n{imports}\n")
    _run(["go", "mod", "tidy"], work, version_set.name)
    totals, compiled = {}, set[str]()
    for group in groups:
        listed = set(_run(["go", "list", "-deps", *group.packages().values()], work, group.name).split())
        totals[group.name] = len(listed - compiled)
        compiled |= listed
    return totals


def output_name(package: str) -> str:
    """The file `go build -o DIR/` writes for a main package: its last path element, skipping a /vN."""
    elements = package.split("/")
    return elements[-2] if re.fullmatch(r"v[0-9]+", elements[-1]) else elements[-1]


def _compile(group: BuildGroup, work: Path, progress: BuildProgress) -> None:
    out = work / f"out-{group.name}"
    out.mkdir()
    command = [
        "go", "build", "-v", "-trimpath", "-ldflags", f"-s -w {group.ldflags}".strip(),
        "-o", f"{out}{os.sep}", *group.packages().values(),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=work, env=_go_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    tail: list[str] = []
    for line in process.stderr or ():
        tail = [*tail[-29:], line.rstrip()]
        progress.compiled(group.name, line.strip())
    if process.wait() != 0:
        raise ToolchainError(f"building {group.name} failed: {' '.join(command)}\n" + "\n".join(tail))
    for binary, package in group.packages().items():
        target = binary_path(binary)
        shutil.move(out / output_name(package), target.with_suffix(".partial"))
        target.with_suffix(".partial").rename(target)


def ensure(
    names: tuple[str, ...] = CLUSTER_BINARIES, progress: BuildProgress | None = None
) -> dict[str, Path]:
    """Build what is missing, then return every named binary's path.

    Fetching is network-bound, so every group's modules download at once; compiling is CPU-bound and
    `go build` is already parallel inside, so groups compile one after another.
    """
    if missing(names):
        with _cache_lock():
            _build_missing(names, progress or BuildProgress.for_terminal(sys.stderr))
    return {name: binary_path(name) for name in names}


def _build_missing(names: tuple[str, ...], progress: BuildProgress) -> None:
    todo = missing(names)
    if not todo:
        return
    if shutil.which("go") is None:
        raise ToolchainError(f"the Go toolchain is not on PATH; it is needed once to build {', '.join(todo)}")
    groups = [group for group in GROUPS if any(binary in group.binaries for binary in todo)]
    version_sets = [
        version_set for version_set in VERSION_SETS if any(group in groups for group in version_set.groups)
    ]
    with tempfile.TemporaryDirectory(prefix="tradeplane-build-") as scratch, progress:
        progress.start([(group.name, group.version, list(group.binaries)) for group in groups])
        works = {version_set.name: Path(scratch) / version_set.name for version_set in version_sets}
        for work in works.values():
            work.mkdir()
        errors: list[BaseException] = []
        lock = threading.Lock()

        def prepare(version_set: VersionSet) -> None:
            members = [group for group in version_set.groups if group in groups]
            try:
                for group in members:
                    progress.fetching(group.name)
                totals = _prepare(version_set, members, works[version_set.name])
                for group in members:
                    progress.fetched(group.name, totals[group.name])
            except BaseException as error:
                with lock:
                    errors.append(error)

        with ThreadPoolExecutor(max_workers=len(version_sets)) as pool:
            list(pool.map(prepare, version_sets))
        if errors:
            raise errors[0]
        for group in groups:
            started = time.monotonic()
            progress.compiling(group.name)
            _compile(group, works[VERSION_SET_OF[group.name].name], progress)
            progress.built(group.name, time.monotonic() - started)


# What `python -m tradeplane.cluster.toolchain [NAME|cluster ...]` builds: "cluster" names what the local
# control plane needs (all the demo needs); no name, everything the tests need too.
NAMED_SETS = {"cluster": CLUSTER_BINARIES}

if __name__ == "__main__":
    wanted = tuple(name for arg in sys.argv[1:] for name in NAMED_SETS.get(arg, (arg,)))
    for built in ensure(wanted or ALL_BINARIES).values():
        print(built)
