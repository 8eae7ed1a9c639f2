"""`--workers N`: N worker processes on one port (SO_REUSEPORT), kept alive.

The supervisor holds a bound (not listening) socket to reserve the port — port 0 is
resolved once, so every worker joins the same port — forks the workers, restarts one
that dies (with a back-off if they keep dying at start-up), forwards SIGTERM/SIGINT
(graceful drain) and exits 0 once every worker has exited cleanly.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time

from hapax.config import Config
from hapax.node import NodeState
from hapax.node_metrics import make_dir, remove_dir
from hapax.server.worker import run_worker

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
                   port: int | None = None) -> int:
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
    try:
        return _supervise(config, workers, host, port, reserved, ready_r, ready_w, node)
    finally:
        remove_dir(node.metrics_dir)


def _supervise(config: Config, workers: int, host: str, port: int,
               reserved: socket.socket, ready_r: int, ready_w: int, node: NodeState) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    started: dict[int, float] = {}
    stopping = False
    failures = 0

    def spawn(index: int) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # worker
            code = 1
            try:
                reserved.close()
                os.close(ready_r)
                node.worker = index
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                code = run_worker(config, host=host, port=port, reuse_port=True,
                                  announce=False, parent_pid=supervisor,
                                  ready_fd=os.dup(ready_w), node=node)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                os._exit(code)
        children[pid] = index
        started[pid] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def on_hup(_signum: int, _frame: object) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    for i in range(workers):
        spawn(i)
    # Announce only once every worker listens: whoever reads the line may connect at once.
    ready = 0
    deadline = time.monotonic() + 15  # a worker that crashes at start-up is restarted below
    while ready < workers and time.monotonic() < deadline:
        if select.select([ready_r], [], [], 0.5)[0]:
            ready += len(os.read(ready_r, 64))
        if stopping or len(children) < workers:
            break
    shown = f"[{host}]" if ":" in host else host
    log.info("hapax listening on http://%s:%d (%d workers, supervisor pid %d)", shown, port,
             workers, os.getpid())
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            if code != 0:
                exit_code = 1
            continue
        lived = time.monotonic() - started.pop(pid, 0.0)
        log.error("worker %d (pid %d) exited with %s; restarting", index, pid,
                  f"signal {-code}" if code < 0 else f"code {code}")
        failures = failures + 1 if lived < 1.0 else 0
        if failures:
            time.sleep(min(5.0, 0.1 * 2 ** failures))  # crash loop: back off
        if not stopping:
            spawn(index)
    reserved.close()
    os.close(ready_r)
    os.close(ready_w)
    return exit_code
