"""State shared by the worker processes of one node.

Created once, before the workers fork (by the supervisor, or by the single worker), so
every worker maps the same memory.  Limits, queue slots and other counts that must be
exact per node live here, not in a worker's own memory — with N workers they would
otherwise silently become N times looser.

Slots are handed out by :meth:`NodeState.allocate` in a deterministic order: every
worker builds its gateway from the same config, in the same order, so the same name
gets the same slots in every process without any coordination at run time.  A
configuration reload allocates the names it adds after those already known, in every
worker alike; the supervisor replays each configuration's allocations on a
:meth:`NodeState.planner`, so that a worker it forks later inherits the same table.
A cluster (several nodes) will keep this state in Redis behind the same interface.
"""

from __future__ import annotations

from typing import Any

from hapax._core.shm import SharedCounters
from hapax._core.shmcache import SharedLRU

__all__ = ["NodeState", "DEFAULT_SLOTS"]

DEFAULT_SLOTS = 1 << 16  # 512 KiB of int64 slots


class NodeState:
    def __init__(self, slots: int = DEFAULT_SLOTS, *, workers: int = 1,
                 metrics_dir: str | None = None, cache_bytes: int = 0) -> None:
        self.counters = SharedCounters(slots)
        #: The response cache's store, shared by the workers (made here, before the
        #: fork, when the config caches some alias; else made by the cache plugin).
        self.cache_store: Any = SharedLRU(cache_bytes) if cache_bytes else None
        self.workers = workers
        #: Where the workers share metrics snapshots (hapax.node_metrics); made by the
        #: supervisor, ``None`` with a single worker (no sharing, no cost).
        self.metrics_dir = metrics_dir
        #: This process's worker index (0..workers-1), set in the worker after the fork;
        #: a restarted worker gets the index of the one it replaces.
        self.worker = 0
        self._table = _Table()

    def allocate(self, name: str, count: int = 1) -> int:
        """The first of ``count`` slots reserved for ``name`` (the same slots again if
        ``name`` was allocated before with the same count, e.g. on reload)."""
        table = self._table
        known = table.names.get(name)
        if known is not None:
            if known[1] != count:
                raise ValueError(f"{name!r} was allocated {known[1]} slots, not {count}")
            return known[0]
        base = table.next
        if base + count > self.counters.size:
            raise MemoryError(f"node state is full ({self.counters.size} slots): cannot "
                              f"allocate {count} for {name!r}")
        table.next = base + count
        table.names[name] = (base, count)
        return base

    @property
    def allocated(self) -> int:
        return self._table.next

    def planner(self) -> NodeState:
        """A node state that allocates in this one's table but writes to counters of its
        own: building a gateway on it records a configuration's allocations (the
        supervisor does, for the workers it forks later) without touching the live
        slots — a provider queue, for one, claims a row of them for its process."""
        twin = NodeState(self.counters.size, workers=self.workers)
        twin._table = self._table
        twin.cache_store = self.cache_store  # read by the cache plugin, never written
        return twin


class _Table:
    """Which slots each name holds, and the first free one."""

    __slots__ = ("names", "next")

    def __init__(self) -> None:
        self.names: dict[str, tuple[int, int]] = {}
        self.next = 0
