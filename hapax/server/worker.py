"""One worker process: an event loop (uvloop), a listener, a gateway.

:class:`Server` can also run inside an existing loop (tests, ``hapax.testing``).
Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections, let in-flight
requests and streams finish up to ``server.drain_timeout``, then exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from typing import Any

from hapax.config import Config
from hapax.node import NodeState
from hapax.node_metrics import NodeMetrics
from hapax.pipeline.gateway import Gateway
from hapax.server.http11 import HTTP11Protocol, ListenerState

__all__ = ["Server", "run_worker", "new_event_loop"]

log = logging.getLogger("hapax.server")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where available, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Server:
    """A gateway behind an HTTP/1.1 listener on the running loop."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.state: ListenerState | None = None
        self._server: asyncio.base_events.Server | None = None

    async def start(self, *, sock: socket.socket | None = None, host: str | None = None,
                    port: int | None = None, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.gateway.config.server
        await self.gateway.start()
        self.state = state = ListenerState(self.gateway, loop)
        if sock is not None:
            self._server = await loop.create_server(lambda: HTTP11Protocol(state), sock=sock,
                                                    backlog=cfg.backlog)
        else:
            self._server = await loop.create_server(
                lambda: HTTP11Protocol(state), host=host or cfg.host,
                port=cfg.port if port is None else port, backlog=cfg.backlog,
                reuse_port=reuse_port or None)

    @property
    def sockets(self) -> list[Any]:
        return list(self._server.sockets) if self._server else []

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful stop: no new connections; in-flight work gets ``timeout`` seconds."""
        if timeout is None:
            timeout = self.gateway.config.server.drain_timeout
        self.gateway.draining = True
        if self._server is not None:
            self._server.close()
        state = self.state
        if state is not None:
            state.draining = True
            for conn in list(state.connections):
                conn.shutdown()
            deadline = time.monotonic() + timeout
            while state.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if state.connections:
                log.warning("drain timeout (%.1fs): closing %d connection(s) with requests "
                            "in flight", timeout, len(state.connections))
                for conn in list(state.connections):
                    conn.transport.abort()
                await asyncio.sleep(0)
        await self.gateway.close()


def _announce(server: Server, cfg: Config) -> None:
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("hapax listening on http://%s:%d", shown, port)


def run_worker(config: Config, *, host: str | None = None, port: int | None = None,
               reuse_port: bool = False, announce: bool = True,
               parent_pid: int | None = None, ready_fd: int | None = None,
               node: NodeState | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; return the exit code.

    With ``parent_pid`` (the supervisor), the worker also drains and exits once that
    process is gone: a worker outliving a killed supervisor would keep the port, and a
    new supervisor on the same port (SO_REUSEPORT) would share it with stale workers.
    ``ready_fd``: a pipe to write one byte to once the worker listens.
    """

    async def main() -> int:
        loop = asyncio.get_running_loop()
        gateway = Gateway(config, node=node)
        server = Server(gateway)
        try:
            await server.start(host=host, port=port, reuse_port=reuse_port)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", host or config.server.host,
                      config.server.port if port is None else port, exc.strerror or exc)
            await gateway.close()
            return 1
        # Under a supervisor: /metrics reports the whole node (hapax.node_metrics).
        shared = None
        if node is not None and node.metrics_dir:
            shared = NodeMetrics(gateway.metrics, node.metrics_dir, node.worker)
            shared.start()
        # Start-up objects (modules, config, plugins) live as long as the worker: take
        # them out of the collector's reach, so a full collection does not walk ~40k
        # objects while requests wait (docs/performance.md, benchmarks/load).
        gc.collect()
        gc.freeze()
        # Requests allocate many short-lived containers that die by reference count; a
        # larger young generation means far fewer collections that find nothing to free.
        gc.set_threshold(20_000, 50, 100)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.warning(
            "SIGHUP: configuration reload is not implemented yet; ignoring"))
        if announce:
            _announce(server, config)
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        watch: asyncio.TimerHandle | None = None

        def check_parent() -> None:
            nonlocal watch
            if os.getppid() != parent_pid:  # reparented: the supervisor died
                log.warning("supervisor (pid %s) is gone: shutting down", parent_pid)
                stop.set()
            else:
                watch = loop.call_later(1.0, check_parent)

        if parent_pid is not None:
            check_parent()
        await stop.wait()
        if watch is not None:
            watch.cancel()
        log.info("shutting down: draining for up to %.1fs", config.server.drain_timeout)
        await server.shutdown()
        if shared is not None:
            shared.close(orphaned=parent_pid is not None and os.getppid() != parent_pid)
        log.info("stopped")
        return 0

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
