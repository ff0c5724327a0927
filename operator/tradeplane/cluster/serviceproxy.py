"""Cluster DNS and kube-proxy's part on the local control plane: a loopback address per Service name.

`<service>.<namespace>:<port>` gets a loopback address in 127.4/16 (moved with the cluster's port offset),
derived from the name, so it exists before the Service does, as a DNS name does. Every new connection to
it looks the Service up then: it goes to one Running pod behind it, picked in turn per connection, as
kube-proxy picks per connection; a pod that does not accept yet is skipped; no Service or no pod closes
the connection, and the caller's reconnect logic retries. The upstream connection keeps the caller's
source address (loopback allows binding any 127/8 address), as kube-proxy's DNAT keeps it, so a service
that answers to its caller's address (market data's unicast subscribers) sees the caller, not the proxy.
A process that reconnects after its peer's pod was replaced thus reaches the replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import threading
from collections.abc import Callable
from functools import partial

from tradeplane.cluster.local import pod_prefix

CONNECT_TIMEOUT_SECONDS = 0.5
SERVICE_PREFIX = "127.4"

# (namespace, service name, port) -> (target port, Running pod IPs), or None when no such Service exists.
Resolver = Callable[[str, str, int], tuple[int, list[str]] | None]


def service_host(namespace: str, name: str) -> str:
    """The loopback address standing in for a Service, the same in every process of the machine."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return f"{pod_prefix(SERVICE_PREFIX)}.{digest[0]}.{digest[1]}"


class ServiceProxy:
    """Listeners for Services, served by one asyncio loop in a thread of its own."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="service-proxy", daemon=True)
        self.thread.start()
        self.servers: dict[tuple[str, int], asyncio.Server | None] = {}
        self.turns = itertools.count()

    def address(self, namespace: str, name: str, port: int) -> str:
        """`host:port` that reaches the Service's pods; listens there from the first call on."""
        host = service_host(namespace, name)
        key = (host, port)
        if key not in self.servers:
            handler = partial(self._forward, namespace, name, port)
            started = asyncio.run_coroutine_threadsafe(asyncio.start_server(handler, host, port), self.loop)
            try:
                self.servers[key] = started.result(timeout=5)
            except OSError:
                # Another runner of the same cluster proxies this Service already: share its listener.
                self.servers[key] = None
        return f"{host}:{port}"

    def stop(self) -> None:
        async def close() -> None:
            for server in self.servers.values():
                if server is not None:
                    server.close()
            # Connections being forwarded end with the proxy, as they would with their node.
            forwarding = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in forwarding:
                task.cancel()
            await asyncio.gather(*forwarding, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    async def _connect_upstream(
        self, namespace: str, name: str, port: int, source: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        resolved = await asyncio.to_thread(self.resolve, namespace, name, port)
        if resolved is None or not resolved[1]:
            return None
        target_port, ips = resolved
        first = next(self.turns) % len(ips)
        for ip in ips[first:] + ips[:first]:
            with contextlib.suppress(OSError, TimeoutError):
                return await asyncio.wait_for(
                    asyncio.open_connection(ip, target_port, local_addr=(source, 0)),
                    CONNECT_TIMEOUT_SECONDS,
                )
        return None

    async def _forward(
        self,
        namespace: str,
        name: str,
        port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        source = writer.get_extra_info("peername")[0]
        upstream = await self._connect_upstream(namespace, name, port, source)
        if upstream is None:
            writer.close()  # no Service or no pod accepts: the caller retries, as in a cluster
            return
        pod_reader, pod_writer = upstream
        await asyncio.gather(_pipe(reader, pod_writer), _pipe(pod_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes, then close the other side so the caller sees its peer go."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
