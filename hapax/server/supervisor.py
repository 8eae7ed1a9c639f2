"""`--workers N`: N worker processes on one port (SO_REUSEPORT), kept alive.

The supervisor holds a bound (not listening) socket to reserve the port — port 0 is
resolved once, so every worker joins the same port — forks the workers, restarts one
that dies (with a back-off if they keep dying at start-up), forwards SIGTERM/SIGINT
(graceful drain) and exits 0 once every worker has exited cleanly.

SIGHUP (configuration reload): the supervisor checks the file itself.  An invalid one
is logged and not forwarded.  A valid one becomes the configuration of workers started
from then on; the supervisor replays its node-state allocations (so a restarted worker
gets the same slots as the running ones) and forwards SIGHUP to every worker, which
reloads on its own.  Signal handlers only note the signal: the main loop does the work,
so a signal never interrupts a fork or a reload half-way.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time

from hapax.config import Config
from hapax.errors import ConfigError, PluginError
from hapax.node import NodeState
from hapax.node_metrics import make_dir, remove_dir
from hapax.pipeline.gateway import Gateway
from hapax.server.worker import check_config, describe_problem, restart_keys, run_worker

__all__ = ["run_supervisor"]

log = logging.getLogger("hapax.supervisor")


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_supervisor(config: Config, *, workers: int, host: str | None = None,
                   port: int | None = None, path: str | None = None) -> int:
    """Run ``workers`` workers until SIGTERM/SIGINT; ``path`` is re-read on SIGHUP."""
    host = host or config.server.host
    port = config.server.port if port is None else port
    try:
        reserved = _reserve(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", host, port, exc.strerror or exc)
        return 1
    port = reserved.getsockname()[1]
    ready_r, ready_w = os.pipe()
    # Made before the first fork: every worker, restarted ones included, maps it.
    cached = any(m.cache is not None for m in config.models.values())
    node = NodeState(workers=workers, metrics_dir=make_dir(),
                     cache_bytes=config.cache.max_bytes if cached else 0)
    # Record the start-up configuration's allocations here, before the fork: reloads then
    # allocate in the same order here and in every worker (see _Supervisor.reload).
    Gateway(config, node=node.planner())
    try:
        return _Supervisor(config, path, workers, host, port, reserved, ready_r, ready_w,
                           node).run()
    finally:
        remove_dir(node.metrics_dir)


class _Supervisor:
    def __init__(self, config: Config, path: str | None, workers: int, host: str, port: int,
                 reserved: socket.socket, ready_r: int, ready_w: int,
                 node: NodeState) -> None:
        self.config = config
        self.path = path
        self.generation = 1
        self.workers = workers
        self.host, self.port = host, port
        self.reserved = reserved
        self.ready_r, self.ready_w = ready_r, ready_w
        self.node = node
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}
        self.stopping = False
        self._stop_sent = False
        self.hups = 0  # SIGHUPs noted by the handler, not yet handled
        self.failures = 0
        self.exit_code = 0
        # The signal handlers' wake-up pipe (signal.set_wakeup_fd).
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    # -- signals: note them, wake the main loop (set_wakeup_fd) ----------------------

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.hups += 1

    def _forward(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # -- workers ------------------------------------------------------------------------

    def spawn(self, index: int) -> None:
        supervisor = os.getpid()
        # SIGHUP stays blocked in the child until its handler is in place (run_worker):
        # a reload forwarded to a worker still starting is delivered then, not lost, and
        # cannot kill it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        pid = os.fork()
        if pid == 0:  # worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                os.close(self._wake_r)
                os.close(self._wake_w)
                self.reserved.close()
                os.close(self.ready_r)
                self.node.worker = index
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                code = run_worker(self.config, host=self.host, port=self.port,
                                  reuse_port=True, announce=False, parent_pid=supervisor,
                                  ready_fd=os.dup(self.ready_w), node=self.node,
                                  path=self.path, generation=self.generation)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        self.children[pid] = index
        self.started[pid] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)

    def reload(self) -> None:
        """Check the file; if valid, adopt it and forward SIGHUP to every worker."""
        path = self.path
        if path is None:
            log.info("SIGHUP: started with the built-in default configuration: there is "
                     "no file to re-read; nothing reloaded")
            return
        try:
            config = check_config(path)
        except (ConfigError, PluginError) as exc:
            log.error("reload of %s rejected; the workers keep generation %d:\n%s", path,
                      self.generation, describe_problem(exc))
            return
        except Exception:  # e.g. a plugin's hapax_configure with a bug
            log.exception("reload of %s rejected; the workers keep generation %d", path,
                          self.generation)
            return
        stale = restart_keys(self.config, config)
        if stale:
            log.warning("reload of %s: %s changed; that takes a restart (the rest applies)",
                        path, ", ".join(stale))
        # The workers build Gateway(config) on the same node state in the same order:
        # doing it here keeps this copy of the allocation table (which a restarted worker
        # inherits) identical to theirs.
        try:
            Gateway(config, node=self.node.planner())
        except Exception:  # e.g. the node state is full: the workers would fail too
            log.exception("reload of %s failed; the workers keep generation %d", path,
                          self.generation)
            return
        self.config = config
        self.generation += 1
        log.info("reloading %s: generation %d, signalling %d worker(s)", path,
                 self.generation, len(self.children))
        self._forward(signal.SIGHUP)

    # -- the main loop --------------------------------------------------------------------

    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # wakes the loop (wakeup fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # see hapax serve
        try:
            return self._run()
        finally:
            signal.set_wakeup_fd(-1)
            for fd in (self._wake_r, self._wake_w, self.ready_r, self.ready_w):
                os.close(fd)
            self.reserved.close()

    def _run(self) -> int:
        workers = self.workers
        for i in range(workers):
            self.spawn(i)
        # Announce only once every worker listens: whoever reads the line may connect at
        # once.
        ready = 0
        deadline = time.monotonic() + 15  # a worker that crashes at start-up is restarted
        while ready < workers and time.monotonic() < deadline:
            if self.ready_r in select.select([self.ready_r, self._wake_r], [], [], 0.5)[0]:
                ready += len(os.read(self.ready_r, 64))
            self._drain_wakeups()
            if self.stopping:
                break
            self._reap()  # a worker that died at start-up
        host = self.host
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.config.server.tls is not None else "http"
        log.info("hapax listening on %s://%s:%d (%d workers, supervisor pid %d)", scheme,
                 shown, self.port, workers, os.getpid())
        while self.children:
            if self.stopping and not self._stop_sent:
                self._stop_sent = True
                self._forward(signal.SIGTERM)
            elif self.hups and not self.stopping:
                self.hups = 0
                self.reload()
            self._reap()
            if not self.children:
                break
            select.select([self._wake_r], [], [], 1.0)
            self._drain_wakeups()
        return self.exit_code

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        """Collect the workers that exited; restart them unless stopping."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                if code != 0:
                    self.exit_code = 1
                continue
            lived = time.monotonic() - self.started.pop(pid, 0.0)
            log.error("worker %d (pid %d) exited with %s; restarting", index, pid,
                      f"signal {-code}" if code < 0 else f"code {code}")
            self.failures = self.failures + 1 if lived < 1.0 else 0
            if self.failures:
                time.sleep(min(5.0, 0.1 * 2 ** self.failures))  # crash loop: back off
            if not self.stopping:
                self.spawn(index)
