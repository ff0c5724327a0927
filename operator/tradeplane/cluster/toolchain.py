"""Build the real Kubernetes components from the Go module proxy and cache them by version.

kind needs Docker; these machines have Go and the module proxy instead. `k8s.io/kubernetes` replaces
its `k8s.io/*` staging modules with local paths, which `go build` of the module refuses, so each binary
is built through a small wrapper module that pins the published `v0.X` staging versions instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.6"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.19.2"

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
class GoBinary:
    """One binary: the module that provides it, its version and the package path of its main."""

    name: str
    module: str
    version: str
    package: str
    ldflags: str = ""
    pins_kubernetes_staging: bool = False


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


def _kubernetes_binary(name: str) -> GoBinary:
    return GoBinary(
        name=name,
        module="k8s.io/kubernetes",
        version=KUBERNETES_VERSION,
        package=f"k8s.io/kubernetes/cmd/{name}",
        ldflags=_kubernetes_ldflags(),
        pins_kubernetes_staging=True,
    )


BINARIES: dict[str, GoBinary] = {
    **{
        name: _kubernetes_binary(name)
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    },
    "etcd": GoBinary("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, "go.etcd.io/etcd/server/v3"),
    "kwok": GoBinary("kwok", "sigs.k8s.io/kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok"),
    # Stamped as helm's own Makefile does: without it `helm version` says v3.19 and `helm template`
    # renders for Kubernetes v1.20 (its client-go is v0.34).
    "helm": GoBinary(
        "helm",
        "helm.sh/helm/v3",
        HELM_VERSION,
        "helm.sh/helm/v3/cmd/helm",
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
}

CLUSTER_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")


class ToolchainError(RuntimeError):
    """A binary could not be built; the message carries the failing command's output tail."""


def cache_dir() -> Path:
    base = os.environ.get("TRADEPLANE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tradeplane"
    )
    return Path(base) / "bin"


def binary_path(name: str) -> Path:
    binary = BINARIES[name]
    return cache_dir() / f"{binary.name}-{binary.version}"


def _wrapper_go_mod(binary: GoBinary) -> str:
    lines = [
        "module tradeplane.local/build",
        "",
        "go 1.25.0",
        "",
        f"require {binary.module} {binary.version}",
    ]
    if binary.pins_kubernetes_staging:
        staging = KUBERNETES_VERSION.replace("v1.", "v0.", 1)
        lines += ["", "replace ("]
        lines += [f"\tk8s.io/{module} => k8s.io/{module} {staging}" for module in STAGING_MODULES]
        lines.append(")")
    return "\n".join(lines) + "\n"


def _run(command: list[str], cwd: Path, what: str) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise ToolchainError(f"building {what} failed: {' '.join(command)}\n{tail}")


def build(name: str, log: Callable[[str], None] | None = None) -> Path:
    """Return the cached binary, building it first when this version is not cached yet."""
    target = binary_path(name)
    if target.exists():
        return target
    binary = BINARIES[name]
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    say(f"building {name} {binary.version} from the Go module proxy (first time only; minutes on 2 cores)")
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"tradeplane-build-{name}-") as workdir:
        work = Path(workdir)
        (work / "go.mod").write_text(_wrapper_go_mod(binary))
        (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{binary.package}"\n')
        _run(["go", "mod", "tidy"], work, name)
        partial = target.with_suffix(".partial")
        command = ["go", "build", "-trimpath", "-o", str(partial)]
        if binary.ldflags:
            command += ["-ldflags", f"-s -w {binary.ldflags}"]
        else:
            command += ["-ldflags", "-s -w"]
        _run([*command, binary.package], work, name)
        partial.rename(target)
    say(f"built {name} in {time.monotonic() - started:.0f}s -> {target}")
    return target


def ensure(names: tuple[str, ...] = CLUSTER_BINARIES) -> dict[str, Path]:
    """Build what is missing, one at a time: the Go build is already parallel inside."""
    missing = [name for name in names if not binary_path(name).exists()]
    if missing and shutil.which("go") is None:
        raise ToolchainError(
            f"the Go toolchain is not on PATH; it is needed once to build {', '.join(missing)}"
        )
    return {name: build(name) for name in names}


if __name__ == "__main__":
    for built in ensure(tuple(sys.argv[1:]) or CLUSTER_BINARIES).values():
        print(built)
