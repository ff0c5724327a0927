"""Real processes behind kwok pods: reachable on the pod IP, configured from the pod's ConfigMap and env."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import Kubectl, wait_for
from tradeplane.cluster.podrunner import DEFAULT_SELECTOR, PodRunner, RunningPod

pytestmark = pytest.mark.cluster

SERVER = """
import http.server, os
body = open(os.environ["GREETING_FILE"]).read().encode() + os.environ["POD_NAME"].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer((os.environ["TRADEPLANE_BIND"], 8080), Handler).serve_forever()
"""

CALLER = """
import http.server, os, urllib.request
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = urllib.request.urlopen("http://" + os.environ["PEER"] + "/", timeout=2).read()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer((os.environ["TRADEPLANE_BIND"], 8080), Handler).serve_forever()
"""


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_pod_processes_serve_on_their_pod_ips(
    kubectl: Kubectl, namespace: str, pod_runner: Callable[..., PodRunner]
) -> None:
    labels = {"app.kubernetes.io/managed-by": "tradeplane", "app": "greeter"}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "greeting", "namespace": namespace},
        "data": {"greeting.txt": "hello from "},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "greeter", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.example/greeter:1",
                            "command": ["python", "-c", SERVER],
                            "env": [
                                {"name": "GREETING_FILE", "value": "/etc/greeting/greeting.txt"},
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                            "volumeMounts": [{"name": "greeting", "mountPath": "/etc/greeting"}],
                        }
                    ],
                    "volumes": [{"name": "greeting", "configMap": {"name": "greeting"}}],
                },
            },
        },
    }
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [config_map, deployment]}),
    )
    runner = pod_runner(namespace)
    pods = runner.wait_running(2)

    def answers() -> list[str] | None:
        try:
            return [
                urllib.request.urlopen(f"http://{pod.ip}:8080/", timeout=1).read().decode() for pod in pods
            ]
        except OSError:
            return None

    bodies = wait_for(answers, what="both pod processes to answer on their pod IPs")
    assert sorted(bodies) == sorted(f"hello from {pod.name}" for pod in pods)  # type: ignore[arg-type]
    assert len({pod.ip for pod in pods}) == 2

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "greeter", "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    caller = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "caller",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "tradeplane"},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/caller:1",
                    "command": ["python", "-c", CALLER],
                    "env": [{"name": "PEER", "value": f"greeter.{namespace}.svc.cluster.local:80"}],
                }
            ]
        },
    }
    # The caller starts before its Service exists; it reaches the greeter once the Service is there.
    kubectl("apply", "-f", "-", input=json.dumps(caller))
    (caller_pod,) = [pod for pod in runner.wait_running(3) if pod.name == "caller"]
    kubectl("apply", "-f", "-", input=json.dumps(service))
    relayed = wait_for(
        lambda: _get(f"http://{caller_pod.ip}:8080/"),
        what="the caller to reach the greeter through its Service",
    )
    assert str(relayed).startswith("hello from greeter-")

    # The greeter's pods are replaced (new names, new IPs); the caller, started before, reaches the new ones
    # through the Service's stand-in address, as it would through kube-proxy.
    old = {pod.name for pod in pods}
    kubectl("delete", "pod", "-l", "app=greeter", "-n", namespace, "--wait=false")

    def relayed_by_new_pod() -> str | None:
        answer = _get(f"http://{caller_pod.ip}:8080/")
        return answer if answer and answer.removeprefix("hello from ") not in old else None

    assert str(wait_for(relayed_by_new_pod, what="the caller to reach a replacement greeter")).startswith(
        "hello from greeter-"
    )

    kubectl("delete", "pod", "caller", "-n", namespace, "--wait=false")
    kubectl("scale", "deployment", "greeter", "--replicas=0", "-n", namespace)
    wait_for(lambda: not runner.running, what="the processes of deleted pods to stop")


LONE_SERVER = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"alive")
http.server.HTTPServer((os.environ["TRADEPLANE_BIND"], 8080), Handler).serve_forever()
"""

RUNNER = """
import sys, time
from tradeplane.cluster.podrunner import DEFAULT_SELECTOR, PodRunner, RunningPod
PodRunner(sys.argv[1], kubeconfig=sys.argv[2]).start()
time.sleep(600)
"""


def test_a_runner_killed_outright_leaves_no_process_on_a_pod_address(
    kubectl: Kubectl, namespace: str, kube_env: Path
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "lone",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "tradeplane"},
        },
        "spec": {
            "containers": [
                {"name": "app", "image": "registry.example/lone:1", "command": ["python", "-c", LONE_SERVER]}
            ]
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    ip = wait_for(
        lambda: json.loads(kubectl("get", "pod", "lone", "-n", namespace, "-o", "json").stdout)["status"].get(
            "podIP"
        ),
        what="the pod's IP",
    )
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, namespace, str(kube_env)])
    try:
        wait_for(lambda: _get(f"http://{ip}:8080/"), what="the pod's process to serve")
        runner.kill()  # SIGKILL: no cleanup of its own runs
        runner.wait()
        wait_for(lambda: _get(f"http://{ip}:8080/") is None, timeout=10, what="the pod's process to end")
    finally:
        runner.kill()


SLOW_SERVER = """
import http.server, os, pathlib, time
gate = pathlib.Path(os.environ["GATE"])
while not (gate / "listen").exists():
    time.sleep(0.05)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        draining = (gate / "drain").exists()
        self.send_response(503 if draining else 200); self.end_headers()
http.server.HTTPServer((os.environ["TRADEPLANE_BIND"], 8080), Handler).serve_forever()
"""


def test_a_pod_is_ready_only_while_its_process_answers_the_readiness_probe(
    kubectl: Kubectl, namespace: str, pod_runner: Callable[..., PodRunner], tmp_path: Path
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "slow",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "tradeplane"},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/slow:1",
                    "command": ["python", "-c", SLOW_SERVER],
                    "env": [{"name": "GATE", "value": str(tmp_path)}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/readyz", "port": "http"},
                        "periodSeconds": 1,
                        "failureThreshold": 3,
                    },
                }
            ]
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    runner = pod_runner(namespace)
    (running,) = runner.wait_running(1)

    def conditions() -> dict[str, str]:
        status = json.loads(kubectl("get", "pod", "slow", "-n", namespace, "-o", "json").stdout)["status"]
        return {c["type"]: c["status"] for c in status.get("conditions", [])}

    def ready() -> bool:
        return conditions().get("Ready") == "True"

    # kwok said Ready at once; the runner takes it back while nothing listens, and keeps it so.
    wait_for(lambda: conditions().get("Ready") == "False", what="the pod not Ready while nothing listens")
    assert conditions()["ContainersReady"] == "False"
    for _ in range(10):  # ten probes of the runner, each a miss: never Ready in between
        assert not ready(), "Ready before the process listens"
        assert _get(f"http://{running.ip}:8080/readyz") is None
        time.sleep(0.3)

    (tmp_path / "listen").touch()
    wait_for(ready, what="the pod Ready once its process answers /readyz")
    assert _get(f"http://{running.ip}:8080/readyz") is not None

    (tmp_path / "drain").touch()  # /readyz turns 503, as a draining service's does
    drained = time.monotonic()
    wait_for(lambda: not ready(), what="the pod not Ready once /readyz fails")
    # Three failures in a row, a second apart, as the kubelet counts them: one miss is not enough.
    assert time.monotonic() - drained >= 2, "not Ready before failureThreshold probes failed"


LINGERING = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(4), sys.exit(0)))
while True:
    time.sleep(1)
"""


def test_a_new_pod_kwok_calls_ready_is_unready_before_a_departed_pod_is_stopped(
    kubectl: Kubectl, namespace: str, kube_env: Path, tmp_path: Path
) -> None:
    # kwok marks a pod Ready the moment it exists; stopping a departed pod can take seconds (its drain).
    # In between, nobody may route to the new pod: its process has not even started.
    def pod(name: str, command: list[str], probe: dict[str, object] | None = None) -> str:
        container: dict[str, object] = {
            "name": "app",
            "image": f"registry.example/{name}:1",
            "command": command,
        }
        if probe:
            container |= {"ports": [{"name": "http", "containerPort": 8080}], "readinessProbe": probe}
        labels = {"app.kubernetes.io/managed-by": "tradeplane"}
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [container]},
        }
        return json.dumps(manifest)

    def status(name: str) -> dict[str, Any]:
        found = kubectl("get", "pod", name, "-n", namespace, "-o", "json", "--ignore-not-found").stdout
        return dict(json.loads(found)["status"]) if found.strip() else {}

    def ready(name: str) -> str | None:
        conditions = status(name).get("conditions") or []
        return next((c["status"] for c in conditions if c["type"] == "Ready"), None)

    def synced_and_running() -> dict[str, RunningPod]:
        runner.sync()
        return runner.running

    runner = PodRunner(namespace, DEFAULT_SELECTOR, kubeconfig=str(kube_env))  # synced by hand, no thread
    try:
        kubectl("apply", "-f", "-", input=pod("old", ["python", "-c", LINGERING]))
        wait_for(synced_and_running, what="the old pod's process")
        (old,) = runner.running.values()

        kubectl("delete", "pod", "old", "-n", namespace, "--wait=false")
        probe = {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1}
        kubectl("apply", "-f", "-", input=pod("new", ["python", "-c", SLOW_SERVER], probe))
        wait_for(lambda: ready("new") == "True" and status("new").get("podIP"), what="kwok to call new Ready")

        one_sync = threading.Thread(target=runner.sync)  # sees old gone and new arrived at once
        one_sync.start()
        seen_while_old_stops = set()
        while old.process.poll() is None:
            seen_while_old_stops.add(ready("new"))
            time.sleep(0.1)
        one_sync.join()
        assert seen_while_old_stops == {"False"}, "new was Ready while the departed pod was being stopped"
    finally:
        runner.stop()


PEER_SERVER = """
import http.server, os, pathlib, sys, urllib.request
name, starts = sys.argv[1], pathlib.Path(sys.argv[2]) / "starts"
count = int(starts.read_text()) + 1 if starts.exists() else 1
starts.write_text(str(count))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/peers":
            urls = os.environ["PEERS"].split(",")
            body = ",".join(urllib.request.urlopen(url + "/", timeout=2).read().decode() for url in urls)
        else:
            body = f"{name}:{count}"
        self.send_response(200); self.end_headers(); self.wfile.write(body.encode())
http.server.ThreadingHTTPServer((os.environ["TRADEPLANE_BIND"], 8080), Handler).serve_forever()
"""


def test_statefulset_pods_reach_each_other_by_name_and_keep_their_emptydir_across_restarts(
    kubectl: Kubectl, namespace: str, pod_runner: Callable[..., PodRunner]
) -> None:
    labels = {"app.kubernetes.io/managed-by": "tradeplane", "app": "peer"}
    peers = ",".join(f"http://peer-{index}.peer.{namespace}.svc:8080" for index in range(2))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "peer", "namespace": namespace},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels,
            "ports": [{"port": 8080}],
        },
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "peer", "namespace": namespace},
        "spec": {
            "serviceName": "peer",
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.example/peer:1",
                            "command": ["python", "-c", PEER_SERVER],
                            "args": ["$(POD_NAME)", "/state"],
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                                {"name": "PEERS", "value": peers},
                            ],
                            "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                        }
                    ],
                    "volumes": [{"name": "state", "emptyDir": {}}],
                },
            },
        },
    }
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [service, statefulset]}),
    )
    runner = pod_runner(namespace)
    pods = {pod.name: pod for pod in runner.wait_running(2)}

    def peers_seen_by(name: str, expected: str) -> Callable[[], bool]:
        return lambda: _get(f"http://{runner_pod(name).ip}:8080/peers") == expected

    def runner_pod(name: str) -> RunningPod:
        return next(pod for pod in runner.running.values() if pod.name == name)

    wait_for(peers_seen_by("peer-0", "peer-0:1,peer-1:1"), what="peer-0 to reach both pods by their names")

    # kill -9: the runner restarts the container; the process finds what it wrote in the pod's emptyDir.
    pods["peer-1"].process.kill()
    wait_for(peers_seen_by("peer-0", "peer-0:1,peer-1:2"), what="peer-1 restarted with its emptyDir kept")

    # A replaced pod keeps its name (not its emptyDir) and is reached by it again.
    kubectl("delete", "pod", "peer-1", "-n", namespace, "--wait=false")
    wait_for(
        peers_seen_by("peer-0", "peer-0:1,peer-1:1"),
        timeout=60,
        what="peer-1 replaced and reached by its name",
    )
