"""Real processes behind kwok pods: reachable on the pod IP, configured from the pod's ConfigMap and env."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from support import Kubectl, wait_for
from tradeplane.cluster.podrunner import PodRunner

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
from tradeplane.cluster.podrunner import PodRunner
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
