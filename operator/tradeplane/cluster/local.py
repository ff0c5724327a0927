"""The local control plane: real etcd, kube-apiserver, controller-manager, scheduler, and kwok nodes.

Every component runs as a background process started by `up`, with its pid and log in the state dir;
`down` stops exactly those pids. The apiserver listens on 127.0.0.1 only, authorizes with Node,RBAC and
signs service-account tokens; clients use the admin certificate through the written kubeconfig.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tradeplane import crd
from tradeplane.cluster import pki, toolchain

# TRADEPLANE_PORT_OFFSET shifts every port, so a second cluster (a benchmark's) can run beside the first.
_PORT_OFFSET = int(os.environ.get("TRADEPLANE_PORT_OFFSET", "0"))
ETCD_CLIENT_PORT = 23790 + _PORT_OFFSET
ETCD_PEER_PORT = 23800 + _PORT_OFFSET
APISERVER_PORT = 26443 + _PORT_OFFSET
# ... and moves pod addresses to other loopback /16s, so two clusters' pods never share an address.
_POD_OCTET_SHIFT = _PORT_OFFSET // 100
SERVICE_CIDR = "10.96.0.0/16"
READY_TIMEOUT_SECONDS = 90.0


class ClusterError(RuntimeError):
    """A component failed; the message names it and points at its log."""


def state_dir() -> Path:
    base = os.environ.get("TRADEPLANE_STATE") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "tradeplane"
    )
    return Path(base) / "cluster"


def kubeconfig_path() -> Path:
    return state_dir() / "kubeconfig"


@dataclass(frozen=True)
class Component:
    name: str
    binary: str
    args: list[str]


def _components(state: Path) -> list[Component]:
    pki_dir = state / "pki"
    return [
        Component(
            "etcd",
            "etcd",
            [
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
                f"--advertise-client-urls=http://127.0.0.1:{ETCD_CLIENT_PORT}",
                f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
                f"--initial-cluster=default=http://127.0.0.1:{ETCD_PEER_PORT}",
                # A throwaway dev/test store: fsync buys nothing here and costs seconds per test run.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        ),
        Component(
            "kube-apiserver",
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={APISERVER_PORT}",
                "--authorization-mode=Node,RBAC",
                f"--client-ca-file={pki_dir / 'ca.crt'}",
                f"--tls-cert-file={pki_dir / 'apiserver.crt'}",
                f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
                f"--service-account-key-file={pki_dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
        ),
        Component(
            "kube-controller-manager",
            "kube-controller-manager",
            [
                f"--kubeconfig={state / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={state / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={state / 'controller-manager.kubeconfig'}",
                f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                f"--root-ca-file={pki_dir / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki_dir / 'ca.crt'}",
                f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                # Pod IPs here are loopback addresses, which Endpoints and EndpointSlices refuse by
                # validation; those controllers would only log refusals (the pod runner resolves Services).
                "--controllers=*,-node-ipam-controller,-cloud-node-lifecycle-controller,-service-lb-controller,"
                "-node-route-controller,-endpoints-controller,-endpointslice-controller",
                "--v=1",
            ],
        ),
        Component(
            "kube-scheduler",
            "kube-scheduler",
            [
                f"--kubeconfig={state / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={state / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={state / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ],
        ),
        Component(
            "kwok",
            "kwok",
            [
                f"--kubeconfig={state / 'kubeconfig'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                "--server-address=127.0.0.1:0",
                f"--cidr=127.{3 + _POD_OCTET_SHIFT}.0.1/16",
                "--node-ip=127.0.0.1",
            ],
        ),
    ]


def _write_kubeconfig(path: Path, state: Path, user: str) -> None:
    pki_dir = state / "pki"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tradeplane-local",
                "cluster": {
                    "server": f"https://127.0.0.1:{APISERVER_PORT}",
                    "certificate-authority": str(pki_dir / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki_dir / f"{user}.crt"),
                    "client-key": str(pki_dir / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "tradeplane-local", "context": {"cluster": "tradeplane-local", "user": user}}],
        "current-context": "tradeplane-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def _pid_file(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.pid"


def _log_file(state: Path, name: str) -> Path:
    return state / "logs" / f"{name}.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of ours is dead for every purpose here.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _running_pid(state: Path, name: str) -> int | None:
    """The component's pid if that process still runs our binary (a pid left by a reboot may be reused)."""
    try:
        pid = int(_pid_file(state, name).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and os.path.basename(command).decode().startswith(name) else None


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _log_tail(state: Path, name: str, lines: int = 15) -> str:
    try:
        return "\n".join(_log_file(state, name).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _fail(state: Path, name: str, what: str) -> ClusterError:
    return ClusterError(
        f"{name} {what}; see its log {_log_file(state, name)}\n--- last lines ---\n{_log_tail(state, name)}"
    )


def _start(state: Path, component: Component, binary: Path) -> int:
    log = _log_file(state, component.name).open("ab")
    process = subprocess.Popen(
        [str(binary), *component.args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=state,
    )
    _pid_file(state, component.name).write_text(str(process.pid))
    return process.pid


def _wait(
    state: Path, name: str, pid: int, check: Callable[[], bool], timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise _fail(state, name, "exited during start-up")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise _fail(state, name, f"was not ready within {timeout:.0f}s")


def _api_ready(state: Path) -> bool:
    context = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    context.load_cert_chain(str(state / "pki" / "admin.crt"), str(state / "pki" / "admin.key"))
    url = f"https://127.0.0.1:{APISERVER_PORT}/readyz"
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _etcd_ready() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health", timeout=2) as response:
            return bool(json.load(response).get("health") == "true")
    except (OSError, ValueError):
        return False


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the cached kubectl of the pinned version against the local control plane."""
    binary = toolchain.require("kubectl")
    return subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig_path()}", *args],
        input=input,
        capture_output=True,
        text=True,
        check=check,
    )


def cluster_with_crd(log: Callable[[str], None]) -> str:
    """KUBECONFIG's cluster, or else the local control plane (brought up), with the TradingService CRD
    applied: the kubeconfig path. For the benchmarks that drive the API server."""
    kubeconfig = os.environ.get("KUBECONFIG") or str(up(log=log))
    subprocess.run(
        [str(toolchain.require("kubectl")), f"--kubeconfig={kubeconfig}", "apply", "--server-side",
         "--force-conflicts", "-f", str(crd.CRD_PATHS[0])],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return kubeconfig


def wait_established(
    run_kubectl: Callable[..., subprocess.CompletedProcess[str]], crd: str, timeout: float = 60.0
) -> None:
    """Wait until a CRD serves. `kubectl wait` cannot: it fails while the new CRD has no conditions yet."""
    condition = '{.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + timeout
    while run_kubectl("get", f"crd/{crd}", "-o", f"jsonpath={condition}", check=False).stdout != "True":
        if time.monotonic() > deadline:
            raise ClusterError(f"CRD {crd} was not Established within {timeout:.0f}s")
        time.sleep(0.2)


def load_node_pools(path: Path | None = None) -> dict[str, Any]:
    if path is None:
        text = resources.files("tradeplane.cluster").joinpath("nodes.yaml").read_text()
    else:
        text = path.read_text()
    pools = yaml.safe_load(text)
    if not isinstance(pools, dict):
        raise ClusterError(f"{path or 'nodes.yaml'}: expected a mapping of pool name to pool description")
    for pool_name, pool in pools.items():
        for key in ("count", "namePrefix", "podCIDRPrefix", "capacity"):
            if key not in pool:
                raise ClusterError(f"{path or 'nodes.yaml'}: pool {pool_name!r} lacks field {key!r}")
    return pools


def pod_prefix(prefix: str) -> str:
    """A pool's podCIDR prefix ("127.1") as this cluster uses it, moved by TRADEPLANE_PORT_OFFSET."""
    first, second = prefix.split(".")
    return f"{first}.{int(second) + _POD_OCTET_SHIFT}"


def node_manifests(pools: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Node objects for kwok to manage; each node gets a /24 of loopback addresses for its pods."""
    for pool in pools.values():
        for index in range(int(pool["count"])):
            name = f"{pool['namePrefix']}-{index}"
            prefix = pod_prefix(str(pool["podCIDRPrefix"]))
            cidr = f"{prefix}.{index}.0/24"
            node_ip = f"{prefix}.{index}.1"
            capacity = {key: str(value) for key, value in pool["capacity"].items()}
            yield {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        **{key: str(value) for key, value in (pool.get("labels") or {}).items()},
                    },
                },
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": pool.get("taints") or []},
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "addresses": [
                        {"type": "InternalIP", "address": node_ip},
                        {"type": "Hostname", "address": name},
                    ],
                },
            }


def _create_nodes(pools: dict[str, Any]) -> list[str]:
    names = []
    for node in node_manifests(pools):
        names.append(node["metadata"]["name"])
        existing = kubectl("get", "node", node["metadata"]["name"], "--ignore-not-found", "-o", "name")
        if not existing.stdout.strip():
            kubectl("create", "-f", "-", input=json.dumps(node))
    return names


def _nodes_ready(names: list[str]) -> bool:
    result = kubectl("get", "nodes", "-o", "json", check=False)
    if result.returncode != 0:
        return False
    # Schedulable too: the node lifecycle controller lifts the not-ready taint only after Ready.
    ready = {
        item["metadata"]["name"]
        for item in json.loads(result.stdout)["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in item.get("status", {}).get("conditions", [])
        )
        and not any(t["key"] == "node.kubernetes.io/not-ready" for t in item["spec"].get("taints") or [])
    }
    return set(names) <= ready


def running_components() -> dict[str, int | None]:
    state = state_dir()
    return {c.name: _running_pid(state, c.name) for c in _components(state)}


def up(nodes_file: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Start (or confirm) the local control plane; return the kubeconfig path. Idempotent."""
    pools = load_node_pools(nodes_file)
    bins = toolchain.ensure()
    state = state_dir()
    for sub in ("pids", "logs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    if not (state / "pki" / "ca.crt").exists():
        pki.generate(state / "pki")
        _write_kubeconfig(state / "kubeconfig", state, "admin")
        _write_kubeconfig(state / "controller-manager.kubeconfig", state, "controller-manager")
        _write_kubeconfig(state / "scheduler.kubeconfig", state, "scheduler")
    ports = {"etcd": (ETCD_CLIENT_PORT, ETCD_PEER_PORT), "kube-apiserver": (APISERVER_PORT,)}
    for component in _components(state):
        pid = _running_pid(state, component.name)
        if pid is not None:
            continue
        for port in ports.get(component.name, ()):
            if not _port_free(port):
                raise ClusterError(
                    f"{component.name} cannot start: port {port} on 127.0.0.1 is taken by another process"
                )
        log(f"starting {component.name}")
        pid = _start(state, component, bins[component.binary])
        if component.name == "etcd":
            _wait(state, component.name, pid, _etcd_ready)
        elif component.name == "kube-apiserver":
            _wait(state, component.name, pid, lambda: _api_ready(state))
    names = _create_nodes(pools)
    kwok_pid = _running_pid(state, "kwok")
    if kwok_pid is None:
        raise _fail(state, "kwok", "is not running")
    _wait(state, "kwok", kwok_pid, lambda: _nodes_ready(names))
    _wait(
        state,
        "kube-controller-manager",
        _running_pid(state, "kube-controller-manager") or -1,
        lambda: kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
    )
    log(f"cluster ready: {len(names)} nodes; kubeconfig {kubeconfig_path()}")
    return kubeconfig_path()


def down(log: Callable[[str], None] = print) -> None:
    """Stop exactly the processes `up` started (by pid), then remove the state dir."""
    state = state_dir()
    if not state.exists():
        log("no local cluster")
        return
    for component in reversed(_components(state)):
        pid = _running_pid(state, component.name)
        if pid is None:
            continue
        log(f"stopping {component.name} (pid {pid})")
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(state, ignore_errors=True)
    log("cluster removed")


def status() -> str:
    lines = []
    for name, pid in running_components().items():
        lines.append(f"{name:<24} {'running, pid ' + str(pid) if pid else 'stopped'}")
    if _running_pid(state_dir(), "kube-apiserver"):
        nodes = kubectl("get", "nodes", "-L", "tradeplane.io/pool", check=False)
        lines += ["", nodes.stdout.rstrip() or nodes.stderr.rstrip()]
    return "\n".join(lines)
