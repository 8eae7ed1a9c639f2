"""Node-wide /metrics under ``--workers N``: each worker shares snapshots of its metrics.

Every worker keeps its own metrics (recording stays a dict update, no cross-process
cost on the hot path).  Every :data:`INTERVAL` seconds, off the hot path (a timer on
the worker's loop), it writes :meth:`hapax.metrics.Metrics.export` — counters,
histogram bucket counts and sums, summable gauges — to ``worker-<index>.json`` in the
node's metrics directory, which the supervisor creates before forking (on
``/dev/shm`` when there is one: memory, no disk) and removes when it exits.  A scrape
of /metrics, on whichever worker accepts it, writes that worker's own snapshot, reads
the other workers' latest ones and reports the sum: the whole node.

Staleness: the answering worker's numbers are live; another worker's are at most
:data:`INTERVAL` seconds old (plus the time the file write takes, well under a
millisecond on tmpfs).

A restarted worker (same index) starts by absorbing its predecessor's last snapshot
into its own counters and histograms, so node-wide counters never go backwards: every
number a scrape has reported for a worker was in its file when reported (a worker
writes its snapshot before it answers a scrape), and its successor continues from
that file.  What a worker that crashed recorded after its last snapshot, and never
reported, is lost (at most :data:`INTERVAL` seconds of its requests).  Gauges are not
carried over.  With one worker (no supervisor) there is no directory and none of this
runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from typing import Any

import orjson

from hapax.metrics import Metrics

__all__ = ["NodeMetrics", "INTERVAL", "make_dir", "remove_dir"]

log = logging.getLogger("hapax.metrics")

#: Seconds between two snapshots of a worker's metrics.
INTERVAL = 1.0
_DIR_PREFIX = "hapax-metrics-"
_PREFIX = "worker-"
_SUFFIX = ".json"


def make_dir() -> str | None:
    """A fresh directory for the node's snapshots (memory-backed where possible), or
    ``None`` if none can be made (each worker then reports only itself)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
        else tempfile.gettempdir()
    _sweep(base)
    try:
        # The supervisor's pid in the name lets a later supervisor sweep it (_sweep).
        return tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-", dir=base)
    except OSError as exc:
        log.warning("cannot make a directory for node-wide metrics (%s): each worker's "
                    "/metrics reports only that worker", exc)
        return None


def remove_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _sweep(base: str) -> None:
    """Remove directories left by supervisors that are gone without cleaning up (killed
    with SIGKILL along with their workers): on /dev/shm they would hold memory."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_DIR_PREFIX):
            continue
        pid = name[len(_DIR_PREFIX):].partition("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            remove_dir(os.path.join(base, name))
        except OSError:  # e.g. another user's process: alive
            continue


class NodeMetrics:
    """One worker's side: writes its snapshots, reads the others' at scrape time."""

    def __init__(self, metrics: Metrics, directory: str, worker: int, *,
                 interval: float = INTERVAL) -> None:
        self.metrics = metrics
        self.directory = directory
        self.worker = worker
        self.interval = interval
        self.path = os.path.join(directory, f"{_PREFIX}{worker}{_SUFFIX}")
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False

    def start(self) -> None:
        """Carry a predecessor's totals forward, share the first snapshot, start the
        timer (call on the worker's running loop, once all families are added)."""
        previous = self._read(self.path)
        if previous is not None:
            self.metrics.absorb(previous["metrics"])
            log.info("worker %d: carried forward the metrics of its predecessor (pid %s)",
                     self.worker, previous.get("pid"))
        self.write()
        self.metrics.peers = self.peers
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def close(self, *, orphaned: bool = False) -> None:
        """Stop the timer; write a last snapshot (a successor continues from it).  An
        ``orphaned`` worker (its supervisor died without cleaning up) removes the
        directory instead: no successor will come."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.metrics.peers = None
        if orphaned:
            remove_dir(self.directory)
        else:
            self.write()

    def _tick(self) -> None:
        self.write()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def write(self) -> None:
        data = orjson.dumps({"pid": os.getpid(), "worker": self.worker,
                             "metrics": self.metrics.export()})
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)  # atomic: a reader sees the old or the new file
            self._failed = False
        except OSError as exc:
            if not self._failed:  # once per failure spell, not once a second
                log.warning("cannot share metrics in %s: %s", self.directory, exc)
            self._failed = True

    def peers(self) -> list[dict[str, Any]]:
        """The other workers' latest exports.  Writes this worker's own snapshot first,
        so whatever this scrape reports is in its file (see the module docstring)."""
        self.write()
        out: list[dict[str, Any]] = []
        try:
            names = os.listdir(self.directory)
        except OSError:
            return out
        mine = os.path.basename(self.path)
        for name in names:
            if name == mine or not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
                continue
            snap = self._read(os.path.join(self.directory, name))
            if snap is not None:
                out.append(snap["metrics"])
        return out

    @staticmethod
    def _read(path: str) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as f:
                snap = orjson.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring metrics snapshot %s: %s", path, exc)
            return None
        if not isinstance(snap, dict) or not isinstance(snap.get("metrics"), dict):
            return None
        return snap
