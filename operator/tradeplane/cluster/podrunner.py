"""Run the real processes behind kwok's simulated pods, bound to each pod's loopback IP.

kwok marks pods Running without starting anything. On the local control plane each node's podCIDR is a
loopback range, so this runner plays the kubelet's part for the commands we ship: for every Running pod
it selects, it starts the first container's command with the pod's environment, its ConfigMap and Secret
volumes written to local directories only the runner's user may read, and TRADEPLANE_BIND set to the pod
IP. Prometheus' pod service discovery and the operator's direct scrape then reach real processes exactly
as in a cluster. A pod that goes away has its process stopped (SIGTERM, so the service drains); a
process that exits is restarted after a growing back-off, and every process dies with the runner.

There is no kube-proxy or cluster DNS here, so addresses in env values, alone or comma-separated, with or
without a scheme (`nats://...`), are replaced before the process starts by stand-in addresses on the
runner's ServiceProxy, which looks their target up at each connection (so a Service created later, or a
pod replaced since, is found, as through DNS and kube-proxy): `<service>[.<namespace>[.svc[.cluster.local]]]
:<port>` reaches the Service's Ready pods, and a StatefulSet pod's own name
`<hostname>.<service>.<namespace>.svc[.cluster.local]:<port>` reaches that pod (Ready or not when the
headless Service publishes not-ready addresses). `$(VAR)` in command and args is then expanded from the
container's env, as the kubelet does, and mounted paths in env values and args mapped to the
local directories standing in for the volumes. Volumes other than ConfigMaps and Secrets (emptyDir) are a
directory that lives as long as the pod: a restarted process finds what it wrote there.
"""

from __future__ import annotations

import base64
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tradeplane.cluster.serviceproxy import ServiceProxy

DEFAULT_SELECTOR = "app.kubernetes.io/managed-by=tradeplane"
_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_MAX_SECONDS = 10.0
READY_CONDITIONS = ("Ready", "ContainersReady")
_SERVICE_ADDRESS = re.compile(r"^([a-z0-9-]+)(?:\.([a-z0-9-]+))?(?:\.svc(?:\.cluster\.local)?)?:([0-9]+)$")
# A pod's DNS name under its headless Service; `.svc` is required (`a.b` names Service a in namespace b).
_POD_ADDRESS = re.compile(r"^([a-z0-9-]+)\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:([0-9]+)$")
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*://)?(.*)$")
_VARIABLE_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass
class RunningPod:
    uid: str
    name: str
    ip: str
    process: subprocess.Popen[bytes]
    workdir: Path
    probe: ReadinessProbe | None = None
    """The readinessProbe, when the runner reports readiness for this pod."""
    ready: bool = False
    failures: int = 0
    """Probes failed in a row since the last success."""
    next_probe: float = 0.0
    """When a Ready pod is probed next (monotonic)."""


@dataclass(frozen=True)
class ReadinessProbe:
    """An httpGet readinessProbe with the kubelet's defaults: a Ready pod turns unready only after
    `failure_threshold` failures in a row, one probe each `period` seconds (a single slow answer from a
    busy process is not a lost pod). A pod not yet Ready is probed at every sync, so starts are quick."""

    url: str
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3


def _die_with_runner() -> None:
    """In the child: SIGTERM when the runner's thread dies, so a runner killed outright leaves no process
    holding a pod's address (a kubelet's containers do not outlive it either)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], signum: int, timeout: float) -> None:
    """Send `signum` and wait up to `timeout` seconds for the process to finish; SIGKILL it if it does not."""
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _local_path() -> str:
    """PATH with this interpreter's bin dir first, so the project's console scripts are found."""
    return os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def _volume_files(api: client.CoreV1Api, namespace: str, pod: Any) -> dict[str, dict[str, bytes]]:
    """mountPath -> files, for each ConfigMap and Secret volume the first container mounts (only the
    volume's `items` when it lists some, as the kubelet does)."""
    volumes = {v.name: v for v in pod.spec.volumes or [] if v.config_map is not None or v.secret is not None}
    mounted: dict[str, dict[str, bytes]] = {}
    for mount in pod.spec.containers[0].volume_mounts or []:
        volume = volumes.get(mount.name)
        if volume is None:
            continue
        if volume.config_map is not None:
            source = volume.config_map
            text = api.read_namespaced_config_map(source.name, namespace).data or {}
            data = {key: value.encode() for key, value in text.items()}
        else:
            source = volume.secret
            encoded = api.read_namespaced_secret(source.secret_name, namespace).data or {}
            data = {key: base64.b64decode(value) for key, value in encoded.items()}
        if source.items:
            missing = [item.key for item in source.items if item.key not in data]
            if missing:
                raise LookupError(f"{mount.name}: no key {', '.join(missing)}")
            data = {item.path: data[item.key] for item in source.items}
        mounted[mount.mount_path] = data
    return mounted


def readiness_probe(pod: Any) -> ReadinessProbe | None:
    """The first container's httpGet readinessProbe, its URL on the pod IP; None without one."""
    container = pod.spec.containers[0]
    probe = container.readiness_probe
    if probe is None or probe.http_get is None:
        return None
    port = probe.http_get.port
    if isinstance(port, str) and not port.isdigit():
        named = [p.container_port for p in container.ports or [] if p.name == port]
        if not named:
            raise LookupError(f"{pod.metadata.name}: readinessProbe port {port!r} names no container port")
        port = named[0]
    return ReadinessProbe(
        f"http://{pod.status.pod_ip}:{port}{probe.http_get.path or '/'}",
        probe.period_seconds or ReadinessProbe.period,
        probe.timeout_seconds or ReadinessProbe.timeout,
        probe.failure_threshold or ReadinessProbe.failure_threshold,
    )


def probe_answers(url: str, timeout: float) -> bool:
    """As the kubelet's httpGet probe: any status from 200 to 399 is a success."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
    except OSError:  # refused, timed out, or an HTTPError (4xx/5xx; redirects are followed)
        return False
    return 200 <= status < 400


def _is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def resolve_service(
    api: client.CoreV1Api, namespace: str, name: str, port: int
) -> tuple[int, list[str]] | None:
    """The target port of a Service's `port` and its Ready pods' IPs, as kube-proxy's endpoints; for
    `<hostname>.<service>` (a pod of a headless Service), that pod's IP as its DNS record has it and `port`
    itself. None without such a Service."""
    hostname, _, service_name = name.rpartition(".")
    try:
        service: Any = api.read_namespaced_service(service_name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    target = next(
        (
            p.target_port
            for p in service.spec.ports or []
            if p.port == port and isinstance(p.target_port, int)
        ),
        port,
    )
    selector = ",".join(f"{key}={val}" for key, val in (service.spec.selector or {}).items())
    pods: list[Any] = api.list_namespaced_pod(namespace, label_selector=selector).items
    if hostname:
        pods = [p for p in pods if p.spec.hostname == hostname and p.spec.subdomain == service_name]
        target = port
    ready_only = not (hostname and service.spec.publish_not_ready_addresses)
    ips = sorted(
        p.status.pod_ip
        for p in pods
        if p.status.phase == "Running"
        and p.status.pod_ip
        and p.metadata.deletion_timestamp is None
        and (_is_ready(p) or not ready_only)
    )
    return target, ips


def _stand_in(proxy: ServiceProxy, namespace: str, address: str) -> str | None:
    """The stand-in `host:port` of the Service or StatefulSet pod a cluster address names; None when it
    names neither."""
    pod = _POD_ADDRESS.match(address)
    if pod is not None:
        hostname, service, pod_namespace, port = pod.groups()
        return proxy.address(pod_namespace, f"{hostname}.{service}", int(port))
    match = _SERVICE_ADDRESS.match(address)
    if match is None:
        return None
    name, service_namespace, port = match.group(1), match.group(2) or namespace, int(match.group(3))
    return proxy.address(service_namespace, name, int(port))


def _service_address(proxy: ServiceProxy, namespace: str, value: str) -> str | None:
    """`value` with every cluster address in it (alone or comma-separated, with or without a scheme)
    replaced by its stand-in; None when it holds none."""
    replaced = False
    parts = []
    for item in value.split(","):
        scheme, address = _SCHEME.match(item).groups()  # type: ignore[union-attr]  # matches any string
        stand_in = _stand_in(proxy, namespace, address)
        replaced = replaced or stand_in is not None
        parts.append(f"{scheme or ''}{stand_in or address}")
    return ",".join(parts) if replaced else None


def expand_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion of command and args: a defined variable's value, an undefined
    reference left as written, `$$` for a literal `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VARIABLE_REFERENCE.sub(replace, text)


def local_path(value: str, mounts: dict[str, Path]) -> str:
    """A path under a mount's path mapped to the local directory standing in for it; any other value as
    it is."""
    # Mapped once, by the deepest mount holding the path: a mapped path may lie under another mount's path
    # (the local directories live in /tmp, and pods mount an emptyDir at /tmp).
    holding = [path for path in mounts if value == path or value.startswith(path.rstrip("/") + "/")]
    if not holding:
        return value
    mount_path = max(holding, key=len)
    return str(mounts[mount_path]) + value[len(mount_path) :]


def _environment(pod: Any, mounts: dict[str, Path]) -> dict[str, str]:
    """The container's env with field references resolved and mounted paths mapped to local ones."""
    env = {key: value for key, value in os.environ.items() if key in ("HOME", "LANG", "PYTHONPATH")}
    env["PATH"] = _local_path()
    fields = {
        "status.podIP": pod.status.pod_ip,
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "spec.nodeName": pod.spec.node_name,
    }
    for variable in pod.spec.containers[0].env or []:
        if variable.value is not None:
            env[variable.name] = local_path(variable.value, mounts)
        elif variable.value_from is not None and variable.value_from.field_ref is not None:
            env[variable.name] = fields.get(variable.value_from.field_ref.field_path) or ""
    env["TRADEPLANE_BIND"] = pod.status.pod_ip
    return env


class PodRunner:
    """Poll the selected pods of a namespace and keep one local process per Running pod."""

    def __init__(self, namespace: str, selector: str = DEFAULT_SELECTOR, kubeconfig: str | None = None):
        # The kubernetes package ships no annotations for its config loaders.
        api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        self.api = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.selector = selector
        self.proxy = ServiceProxy(partial(resolve_service, self.api))
        self.running: dict[str, RunningPod] = {}
        self.skipped: dict[str, str] = {}
        self.exits: dict[str, str] = {}
        """Pod name -> how its process last exited, with its last log line."""
        self.restarts: dict[str, int] = {}
        self.restart_after: dict[str, float] = {}
        self.pod_dirs: dict[str, Path] = {}
        """Pod UID -> its local directory (volumes, output.log), kept while the pod exists."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, pod: Any) -> None:
        container = pod.spec.containers[0]
        command = [*(container.command or []), *(container.args or [])]
        if not command or shutil.which(command[0], path=_local_path()) is None:
            self.skipped[pod.metadata.uid] = f"{pod.metadata.name}: {command[:1]} is not a local command"
            return
        try:
            volume_files = _volume_files(self.api, self.namespace, pod)
        except LookupError:
            return  # as a kubelet does: the container waits for its Secret's key, tried again next sync
        except client.ApiException as error:
            if error.status == 404:
                return  # the container waits for its ConfigMap or Secret, tried again next sync
            raise
        workdir = self.pod_dirs.get(pod.metadata.uid) or Path(
            tempfile.mkdtemp(prefix=f"pod-{pod.metadata.name}-")
        )
        self.pod_dirs[pod.metadata.uid] = workdir
        mounts: dict[str, Path] = {}
        for index, (mount_path, files) in enumerate(volume_files.items()):
            local = workdir / f"volume-{index}"
            local.mkdir(mode=0o700, exist_ok=True)
            for file_name, content in files.items():
                (local / file_name).write_bytes(content)
            mounts[mount_path] = local
        for mount in container.volume_mounts or []:
            if mount.mount_path not in mounts:
                # emptyDir, hugepages and state volumes: a private writable directory stands in.
                local = workdir / mount.name
                local.mkdir(exist_ok=True)
                mounts[mount.mount_path] = local
        env = _environment(pod, mounts)
        for key, value in env.items():
            env[key] = _service_address(self.proxy, self.namespace, value) or value
        command = [local_path(expand_references(part, env), mounts) for part in command]
        log = (workdir / "output.log").open("ab")
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=_die_with_runner,
        )
        self.running[pod.metadata.uid] = RunningPod(
            pod.metadata.uid, pod.metadata.name, pod.status.pod_ip, process, workdir, readiness_probe(pod)
        )

    def _report_ready(self, name: str, ready: bool) -> None:
        """Set the pod's Ready and ContainersReady conditions, as the kubelet reports its probes."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        state, reason = ("True", "ReadinessProbeSucceeded") if ready else ("False", "ReadinessProbeFailed")
        conditions = [
            {"type": kind, "status": state, "reason": reason, "lastTransitionTime": now}
            for kind in READY_CONDITIONS
        ]
        try:
            self.api.patch_namespaced_pod_status(
                name,
                self.namespace,
                {"status": {"conditions": conditions}},
                _content_type="application/strategic-merge-patch+json",
            )
        except client.ApiException as error:
            if error.status != 404:  # a pod deleted meanwhile has nothing left to report on
                raise

    def _probe(self, running: RunningPod, now: float) -> None:
        probe = running.probe
        if probe is None or (running.ready and now < running.next_probe):
            return
        running.next_probe = now + probe.period
        if running.process.poll() is None and probe_answers(probe.url, probe.timeout):
            running.failures, ready = 0, True
        else:
            running.failures += 1
            ready = running.ready and running.failures < probe.failure_threshold
        if ready != running.ready:
            self._report_ready(running.name, ready)
            running.ready = ready

    def _stop_pod(self, uid: str) -> None:
        running = self.running.pop(uid)
        if running.process.poll() is None:
            stop_process(running.process, signal.SIGTERM, timeout=10)

    def _remove_pod(self, uid: str) -> None:
        """The pod is gone: its process stopped and its directory (emptyDir volumes) removed."""
        if uid in self.running:
            self._stop_pod(uid)
        shutil.rmtree(self.pod_dirs.pop(uid), ignore_errors=True)

    def sync(self) -> None:
        pods: list[Any] = self.api.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        wanted = {
            pod.metadata.uid: pod
            for pod in pods
            if pod.status.phase == "Running" and pod.status.pod_ip and pod.metadata.deletion_timestamp is None
        }
        for uid, pod in wanted.items():
            starting = uid not in self.running and uid not in self.skipped
            if starting and _is_ready(pod) and readiness_probe(pod) is not None:
                # kwok says Ready at once; taken back before anything else (stopping a pod that went
                # takes seconds), so nobody routes to a pod whose process does not run yet.
                self._report_ready(pod.metadata.name, False)
        for uid in [uid for uid in self.pod_dirs if uid not in wanted]:
            self._remove_pod(uid)
        now = time.monotonic()
        for uid, running in list(self.running.items()):
            if running.process.poll() is not None:
                # As a kubelet restarts a container that exited: not Ready, again after a growing back-off.
                if running.probe is not None and running.ready:
                    self._report_ready(running.name, False)
                lines = (running.workdir / "output.log").read_text(errors="replace").splitlines()
                self.exits[running.name] = f"exited {running.process.returncode}: {(lines or [''])[-1]}"
                restarts = self.restarts.get(uid, 0) + 1
                self.restarts[uid] = restarts
                self.restart_after[uid] = now + min(RESTART_BACKOFF_MAX_SECONDS, 0.5 * 2 ** (restarts - 1))
                self._stop_pod(uid)
        for uid, pod in wanted.items():
            if uid not in self.running and uid not in self.skipped and now >= self.restart_after.get(uid, 0):
                self._start(pod)
        for running in self.running.values():
            self._probe(running, now)

    def run(self, interval: float = 0.5) -> None:
        while not self._stop.is_set():
            self.sync()
            self._stop.wait(interval)

    def start(self) -> PodRunner:
        self._thread = threading.Thread(target=self.run, name="pod-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for uid in list(self.pod_dirs):
            self._remove_pod(uid)
        self.proxy.stop()

    def wait_running(self, count: int, timeout: float = 30.0) -> list[RunningPod]:
        """Block until `count` local processes run; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [pod for pod in self.running.values() if pod.process.poll() is None]
            if len(alive) >= count:
                return alive
            time.sleep(0.1)
        raise TimeoutError(
            f"{len(self.running)} of {count} pod processes running after {timeout:.0f}s; "
            f"skipped: {list(self.skipped.values())}; "
            f"exited: {self.exits}"
        )
