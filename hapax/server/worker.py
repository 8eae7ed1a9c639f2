"""One worker process: an event loop (uvloop), a listener, a gateway.

:class:`Server` can also run inside an existing loop (tests, ``hapax.testing``).
Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections, let in-flight
requests and streams finish up to ``server.drain_timeout``, then exit 0.

Reload (SIGHUP): re-read the configuration file, check it as ``hapax check`` does, and
if it is valid swap a new gateway in for new requests (:meth:`Server.reload`) while the
old one finishes what it has in flight; if not, log every problem and keep serving.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from hapax.config import Config, default_config, load
from hapax.errors import ConfigError, PluginError
from hapax.metrics import Counter, Gauge
from hapax.node import NodeState
from hapax.node_metrics import NodeMetrics
from hapax.pipeline.gateway import Gateway
from hapax.server.h3_metrics import h3_counters
from hapax.server.http11 import HTTP11Protocol, ListenerState
from hapax.server.tls import reload_tcp_context, tcp_context

if TYPE_CHECKING:
    from hapax.server.http3 import H3Listener

__all__ = ["Server", "run_worker", "new_event_loop", "check_config", "describe_problem",
           "RESTART_KEYS"]

log = logging.getLogger("hapax.server")

#: ``server.*`` settings a reload cannot change: they shape the listening sockets and
#: the processes, made once at start-up.  (Turning ``server.tls`` or its ``http3`` on or
#: off does too; its certificate files are re-read by a reload.)
RESTART_KEYS = ("host", "port", "workers", "backlog")


def check_config(path: str | None) -> Config:
    """Load ``path`` (``None``: the built-in default) and build — not start — a gateway
    from it on a throwaway node state: the checks of ``hapax check``.  Raises
    :class:`ConfigError` or :class:`PluginError`."""
    config = default_config() if path is None else load(path)
    Gateway(config)
    return config


def describe_problem(exc: ConfigError | PluginError) -> str:
    """What ``hapax check`` prints for ``exc``: one ``FILE: KEY.PATH: expectation``
    line per problem (or the plugin error)."""
    return str(exc) if isinstance(exc, ConfigError) else f"plugin error: {exc}"


def restart_keys(old: Config, new: Config) -> list[str]:
    """The :data:`RESTART_KEYS` whose value differs between ``old`` and ``new``."""
    stale = [f"server.{key}" for key in RESTART_KEYS
             if getattr(old.server, key) != getattr(new.server, key)]
    if _tls_mode(old) != _tls_mode(new):
        stale.append("server.tls")
    return stale


def _tls_mode(config: Config) -> tuple[bool, bool]:
    """(HTTPS on, HTTP/3 on): what the listening sockets were made for."""
    tls = config.server.tls
    return (tls is not None, tls is not None and tls.http3)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where available, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Server:
    """A gateway behind an HTTP/1.1 listener on the running loop — HTTPS with
    ``server.tls``, plus an HTTP/3 listener on the same port over UDP with
    ``server.tls.http3``.

    ``generation`` counts the configurations this server has run (1 at start-up);
    :meth:`reload` swaps in the next one.
    """

    def __init__(self, gateway: Gateway, *, generation: int = 1) -> None:
        self.gateway = gateway
        self.generation = generation
        self.state: ListenerState | None = None
        self._server: asyncio.base_events.Server | None = None
        #: The TCP listener's TLS context (reloaded in place), if ``server.tls``.
        self.ssl: ssl.SSLContext | None = None
        #: The HTTP/3 listener, if this worker serves it.
        self.h3: H3Listener | None = None
        #: Gateways replaced by a reload, closing once their requests are done.
        self._retiring: set[asyncio.Task[None]] = set()
        metrics = gateway.metrics  # carried over by every reload: registered once
        self.reloads = metrics.add(Counter(
            "hapax_config_reloads_total", "Configuration reloads (SIGHUP), by result "
            "(ok|error).", ("result",)))
        for result in ("ok", "error"):
            self.reloads.inc((result,), 0.0)  # both series from the start, for alerts
        metrics.add(Gauge("hapax_config_generation", "Configurations this worker has run: "
                          "1 at start-up, plus one per successful reload.", (),
                          lambda: {(): float(self.generation)}, merge="none"))
        metrics.add(Gauge("hapax_http3_connections", "Open HTTP/3 (QUIC) connections.", (),
                          lambda: {(): float(len(self.h3.connections) if self.h3 else 0)}))
        metrics.add(Gauge("hapax_http3_streams", "HTTP/3 requests being received or "
                          "answered.", (), lambda: {(): float(
                              sum(len(c.requests) for c in self.h3.connections)
                              if self.h3 else 0)}))
        # Also registered by the HTTP/3 listener, which records into them: here so that
        # every worker exposes them (at 0 without HTTP/3).
        h3_counters(metrics)

    async def start(self, *, sock: socket.socket | None = None, host: str | None = None,
                    port: int | None = None, reuse_port: bool = False,
                    http3: bool = True) -> None:
        """Listen (TCP, and UDP for HTTP/3 if configured and ``http3``: one worker of a
        supervisor serves it, see docs/how-to/http3.md)."""
        loop = asyncio.get_running_loop()
        cfg = self.gateway.config.server
        await self.gateway.start()
        self.state = state = ListenerState(self.gateway, loop)
        tls = cfg.tls
        self.ssl = tcp_context(tls) if tls is not None else None
        # A TLS handshake gets the time a request head gets (the header timeout starts
        # once the handshake is done).
        secure: dict[str, Any] = {} if self.ssl is None else {
            "ssl": self.ssl, "ssl_handshake_timeout": cfg.limits.header_timeout}
        if sock is not None:
            self._server = await loop.create_server(lambda: HTTP11Protocol(state), sock=sock,
                                                    backlog=cfg.backlog, **secure)
        else:
            self._server = await loop.create_server(
                lambda: HTTP11Protocol(state), host=host or cfg.host,
                port=cfg.port if port is None else port, backlog=cfg.backlog,
                reuse_port=reuse_port or None, **secure)
        if tls is None or not tls.http3:
            return
        bound = self.sockets[0].getsockname()
        if http3:
            from hapax.server.http3 import H3Listener

            h3 = H3Listener(state, tls)
            try:
                await h3.start(bound[0], bound[1])
            except OSError as exc:
                self._server.close()
                raise OSError(exc.errno, f"UDP port for HTTP/3: {exc.strerror or exc} "
                                         f"(or set server.tls.http3: false)") from exc
            self.h3 = h3
        # Every worker advertises HTTP/3, also those not serving it: the port is the same.
        state.alt_svc = b'alt-svc: h3=":%d"; ma=86400\r\n' % bound[1]

    @property
    def sockets(self) -> list[Any]:
        return list(self._server.sockets) if self._server else []

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def reload(self, config: Config) -> None:
        """Answer new requests from a gateway built from ``config``.

        ``config`` must have passed :func:`check_config`.  The new gateway carries over
        the old one's metrics, retry budget and target health, and shares its node state
        (limiter and queue slots, the response cache).  Requests already running —
        streams included — finish on the old gateway, which then closes (waiting at
        most ``server.drain_timeout``).  On failure nothing changes and the error
        propagates (the reload counts as failed).
        """
        old = self.gateway
        try:
            new = Gateway(config, node=old.node, previous=old)
        except BaseException:
            self.reloads.inc(("error",))
            raise
        tls = config.server.tls
        if tls is not None:
            try:  # renewed certificates: for connections accepted from now on
                if self.ssl is not None:
                    reload_tcp_context(self.ssl, tls)
                if self.h3 is not None:
                    self.h3.use(tls, idle_timeout=config.server.limits.keepalive)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.reloads.inc(("error",))
                raise ConfigError([("server.tls", f"cannot load the certificate: {exc}")],
                                  config.source) from None
        try:
            await new.start()
        except BaseException:
            self.reloads.inc(("error",))
            await new.close()
            raise
        self.gateway = new
        if self.state is not None:
            self.state.use(new)
        self.generation += 1
        self.reloads.inc(("ok",))
        task = asyncio.get_running_loop().create_task(
            old.close(drain=old.config.server.drain_timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("closing the gateway replaced by a reload failed",
                      exc_info=task.exception())
        if gc.get_freeze_count():
            # run_worker froze the start-up objects, the first gateway among them: frozen
            # reference cycles are never collected, so let the collector see them once.
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful stop: no new connections; in-flight work gets ``timeout`` seconds."""
        if timeout is None:
            timeout = self.gateway.config.server.drain_timeout
        self.gateway.draining = True
        if self._server is not None:
            self._server.close()
        state = self.state
        h3 = self.h3
        if state is not None:
            state.draining = True
            if h3 is not None:
                h3.begin_shutdown()  # GOAWAY: no new requests on any QUIC connection
            for conn in list(state.connections):
                conn.shutdown()
            deadline = time.monotonic() + timeout
            while (state.connections or (h3 is not None and h3.busy)) and \
                    time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if state.connections:
                log.warning("drain timeout (%.1fs): closing %d connection(s) with requests "
                            "in flight", timeout, len(state.connections))
                for conn in list(state.connections):
                    conn.transport.abort()
                    if conn.task is not None:
                        conn.task.cancel()  # (one whose client left after its answer)
                await asyncio.sleep(0)
            if h3 is not None:
                if h3.busy:
                    log.warning("drain timeout (%.1fs): closing HTTP/3 connections with "
                                "requests in flight", timeout)
                h3.close()
                await asyncio.sleep(0)
        if self._retiring:
            await asyncio.wait(list(self._retiring))
        await self.gateway.close()


class _Reloader:
    """SIGHUP in a worker: re-read ``path`` and reload the server, one reload at a time
    (a SIGHUP during a reload queues one more, never more than one)."""

    def __init__(self, server: Server, path: str | None, *, warn_restart: bool) -> None:
        self.server = server
        self.path = path
        self.warn_restart = warn_restart
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                await self.reload()
                if not self._again:
                    return
        finally:
            self._task = None

    async def reload(self) -> bool:
        """One reload; True if the new configuration now serves."""
        server, path = self.server, self.path
        if path is None:
            log.info("SIGHUP: started with the built-in default configuration: there is "
                     "no file to re-read; nothing reloaded")
            return False
        try:
            # Off the loop: parsing and loading plugins must not stall the requests.
            config = await asyncio.to_thread(check_config, path)
        except (ConfigError, PluginError) as exc:
            server.reloads.inc(("error",))
            log.error("reload of %s rejected; still serving generation %d:\n%s", path,
                      server.generation, describe_problem(exc))
            return False
        except Exception:  # e.g. a plugin's hapax_configure with a bug
            server.reloads.inc(("error",))
            log.exception("reload of %s rejected; still serving generation %d", path,
                          server.generation)
            return False
        stale = restart_keys(server.gateway.config, config)
        if stale and self.warn_restart:
            log.warning("reload of %s: %s changed; that takes a restart (the rest applies)",
                        path, ", ".join(stale))
        try:
            await server.reload(config)
        except (ConfigError, PluginError) as exc:
            log.error("reload of %s failed; still serving generation %d:\n%s", path,
                      server.generation, describe_problem(exc))
            return False
        except Exception:
            log.exception("reload of %s failed; still serving generation %d", path,
                          server.generation)
            return False
        log.info("reloaded %s (generation %d)", path, server.generation)
        return True

    async def wait(self) -> None:
        """Let a reload in progress finish (at shutdown)."""
        task = self._task
        if task is not None:
            await asyncio.wait([task])


def _announce(server: Server, cfg: Config) -> None:
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if cfg.server.tls is not None else "http"
        log.info("hapax listening on %s://%s:%d", scheme, shown, port)
    if server.h3 is not None:
        for sock in server.h3.sockets:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            log.info("hapax listening on %s:%d (UDP: HTTP/3)", shown, port)


def run_worker(config: Config, *, host: str | None = None, port: int | None = None,
               reuse_port: bool = False, announce: bool = True,
               parent_pid: int | None = None, ready_fd: int | None = None,
               node: NodeState | None = None, path: str | None = None,
               generation: int = 1) -> int:
    """Run one worker until SIGTERM/SIGINT; return the exit code.

    With ``parent_pid`` (the supervisor), the worker also drains and exits once that
    process is gone: a worker outliving a killed supervisor would keep the port, and a
    new supervisor on the same port (SO_REUSEPORT) would share it with stale workers.
    ``ready_fd``: a pipe to write one byte to once the worker listens.  ``path``: the
    file ``config`` came from, re-read on SIGHUP (``None``: the built-in default, which
    a reload leaves as it is); ``generation``: the configuration's number (a worker the
    supervisor restarts after reloads continues the count).

    SIGHUP may be blocked on entry (``hapax serve`` and the supervisor block it so that
    an early one cannot kill the process); it is unblocked once its handler is in place.
    """
    if node is None:
        # One process: the node state still outlives each gateway, so that limiter
        # state and the response cache survive a reload.
        cached = any(m.cache is not None for m in config.models.values())
        node = NodeState(cache_bytes=config.cache.max_bytes if cached else 0)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        # No local name for the gateway: a reload replaces it, and the old one must go.
        server = Server(Gateway(config, node=node), generation=generation)
        try:
            # HTTP/3: worker 0 only.  The kernel spreads UDP datagrams over SO_REUSEPORT
            # sockets by address, so a client that migrates (or any client, once a worker
            # restarts) would reach a worker that does not know its connection.
            await server.start(host=host, port=port, reuse_port=reuse_port,
                               http3=node.worker == 0)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", host or config.server.host,
                      config.server.port if port is None else port, exc.strerror or exc)
            await server.gateway.close()
            return 1
        # Under a supervisor: /metrics reports the whole node (hapax.node_metrics).  The
        # metrics object outlives every reload.
        shared = None
        if node.metrics_dir:
            shared = NodeMetrics(server.gateway.metrics, node.metrics_dir, node.worker)
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
        # Under a supervisor, it warns about settings that need a restart, once.
        reloader = _Reloader(server, path, warn_restart=parent_pid is None)
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
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
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info(
            "SIGHUP while shutting down: not reloading"))
        await reloader.wait()
        drain = server.gateway.config.server.drain_timeout
        log.info("shutting down: draining for up to %.1fs", drain)
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
