"""The Service stand-in: each connection reaches a live pod, keeping the caller's address."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tradeplane.cluster.serviceproxy import ServiceProxy, service_host

PORT = 7444


class _Server(socketserver.TCPServer):
    allow_reuse_address = True


class _Hello(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        # Answers with its own address and the caller's host, so the test sees both ends.
        self.request.sendall(f"{self.server.server_address[0]} {self.client_address[0]}".encode())


@pytest.fixture
def pods() -> Iterator[dict[str, _Server]]:
    servers: dict[str, _Server] = {}
    for ip in ("127.78.0.1", "127.78.0.2"):
        server = _Server((ip, PORT), _Hello)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[ip] = server
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


def _ask(address: str, source: str) -> str:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=2, source_address=(source, 0)) as connection:
        return connection.recv(100).decode()


def test_connections_follow_the_services_pods(pods: dict[str, _Server]) -> None:
    live = dict(pods)
    services = {("ns", "hello", 80): PORT}

    def resolve(namespace: str, name: str, port: int) -> tuple[int, list[str]] | None:
        target = services.get((namespace, name, port))
        return None if target is None else (target, sorted(live))

    proxy = ServiceProxy(resolve)
    try:
        # The address exists before the Service does, as a DNS name would; connections then find nothing.
        late = proxy.address("ns", "later", 80)
        assert _ask(late, "127.79.0.5") == ""
        services[("ns", "later", 80)] = PORT
        assert _ask(late, "127.79.0.5").endswith(" 127.79.0.5")
        address = proxy.address("ns", "hello", 80)
        assert address == f"{service_host('ns', 'hello')}:80" and address != late
        answers = {_ask(address, "127.79.0.5") for _ in range(4)}
        # One pod per connection, in turn; each pod saw the caller's own address, not the proxy's.
        assert answers == {"127.78.0.1 127.79.0.5", "127.78.0.2 127.79.0.5"}
        # A pod that is gone (its IP still listed for a moment, as a stale read would) is skipped.
        pods["127.78.0.1"].shutdown()
        pods["127.78.0.1"].server_close()
        assert {_ask(address, "127.79.0.5") for _ in range(3)} == {"127.78.0.2 127.79.0.5"}
        # No pod at all: the connection is closed unanswered, and the caller's reconnect logic takes over.
        live.clear()
        assert _ask(address, "127.79.0.5") == ""
    finally:
        proxy.stop()
