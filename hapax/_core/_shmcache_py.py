"""A response-cache store in memory shared by every worker process of a node (pure-Python
twin of ``_shmcache_c``; this module is the readable spec of the layout).

A per-worker store would keep one copy of the cache per worker, so a
node of N workers holds N partial caches.  :class:`SharedLRU` is one byte-bounded LRU with
per-entry expiry in an anonymous ``MAP_SHARED`` mapping, created before the workers fork
(like :mod:`hapax._core.shm`), so a response stored by one worker is a hit in all of them.

Keys are 16-byte request fingerprints; values are ``bytes`` (copied in on :meth:`put`,
copied out on :meth:`get`); clocks are integer nanoseconds (``time.monotonic_ns()`` is the
same clock in every process of a node).  Every operation is O(1) apart from copying the
value and walking its hash chain.

Layout (all integers are native signed 64-bit; offsets in bytes)::

    header   16 slots: LOCK, HITS, MISSES, EVICTIONS, BYTES, ENTRIES, HEAD (most recent),
             TAIL (least recent), FREE_BLOCK, FREE_BLOCKS, FREE_ENTRY, RECOVERIES, unused
    entries  max_entries records of 80 bytes: 16-byte key, then LEN (value length),
             EXP (expiry), BLOCK (first block), PREV/NEXT (LRU list), CHAIN (hash chain
             next; the free-entry list when unused), USED, NBLK (blocks held)
    buckets  nbuckets slots: first entry of the hash chain (-1: none)
    links    nblocks slots: next block of a value's chain or of the free-block list
    arena    nblocks blocks of block_size bytes (starts 64-byte aligned)

A value of n bytes holds ceil(n / block_size) blocks; ``max_bytes`` is the arena's size,
``bytes`` the sum of the value lengths held.  :meth:`put` evicts least recently used
entries until the blocks and an entry record are free; a value bigger than the arena is
refused (``False``).

Mutual exclusion: this twin takes a ``multiprocessing.Lock`` (a POSIX semaphore created
in ``__init__``, before the fork).  A process killed while holding it leaves it held;
the compiled twin's spinlock recovers from that (see ``_shmcache_c``).  The LOCK and
RECOVERIES slots are the compiled twin's and stay 0 here.
"""

from __future__ import annotations

import mmap
import multiprocessing

__all__ = ["SharedLRU", "KEY_SIZE"]

KEY_SIZE = 16
_Bytes = bytes  # the class has a ``bytes`` counter, which shadows the type there
# header slots
LOCK, HITS, MISSES, EVICTIONS, BYTES, ENTRIES, HEAD, TAIL = range(8)
FREE_BLOCK, FREE_BLOCKS, FREE_ENTRY, RECOVERIES = range(8, 12)
HEADER_SLOTS = 16
# entry record: the key, then these int64 fields
LEN, EXP, BLOCK, PREV, NEXT, CHAIN, USED, NBLK = range(8)
RECORD = KEY_SIZE + 8 * 8
RECORD_SLOTS = RECORD // 8
KEY_SLOTS = KEY_SIZE // 8


def layout(max_bytes: int, max_entries: int | None, block_size: int,
           buckets: int | None) -> tuple[int, int, int, int, int, int, int, int]:
    """(nblocks, max_entries, nbuckets, entries_off, buckets_off, links_off, arena_off,
    size): shared by both twins, so they lay memory out identically."""
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    if block_size <= 0 or block_size % 8:
        raise ValueError("block_size must be a positive multiple of 8")
    nblocks = max_bytes // block_size
    if max_entries is None:
        max_entries = max(nblocks, 1)
    if max_entries <= 0:
        raise ValueError("max_entries must be positive")
    if buckets is None:
        buckets = 1
        while buckets < max_entries:
            buckets *= 2
    if buckets <= 0:
        raise ValueError("buckets must be positive")
    entries_off = HEADER_SLOTS * 8
    buckets_off = entries_off + max_entries * RECORD
    links_off = buckets_off + buckets * 8
    arena_off = (links_off + nblocks * 8 + 63) // 64 * 64
    size = arena_off + nblocks * block_size
    return (nblocks, max_entries, buckets, entries_off, buckets_off, links_off, arena_off,
            size)


class SharedLRU:
    """A byte-bounded least-recently-used map of 16-byte keys to ``bytes`` values, with
    per-entry expiry, shared by the processes forked after it was made."""

    __slots__ = ("_map", "_q", "_lock", "block_size", "nblocks", "max_entries", "nbuckets",
                 "_entries", "_buckets", "_links", "_arena")

    def __init__(self, max_bytes: int, max_entries: int | None = None,
                 block_size: int = 1024, buckets: int | None = None) -> None:
        (self.nblocks, self.max_entries, self.nbuckets, entries_off, buckets_off, links_off,
         self._arena, size) = layout(max_bytes, max_entries, block_size, buckets)
        self.block_size = block_size
        self._entries = entries_off // 8
        self._buckets = buckets_off // 8
        self._links = links_off // 8
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        self._q = memoryview(self._map).cast("q")
        self._lock = multiprocessing.Lock()
        self._reset()

    # --- counters ------------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        return self.nblocks * self.block_size

    def _slot(self, i: int) -> int:
        with self._lock:
            return int(self._q[i])

    @property
    def bytes(self) -> int:
        return self._slot(BYTES)

    @property
    def hits(self) -> int:
        return self._slot(HITS)

    @property
    def misses(self) -> int:
        return self._slot(MISSES)

    @property
    def evictions(self) -> int:
        return self._slot(EVICTIONS)

    @property
    def recoveries(self) -> int:
        """How often a lock held by a dead process was taken over (compiled twin only)."""
        return self._slot(RECOVERIES)

    def __len__(self) -> int:
        return self._slot(ENTRIES)

    # --- operations ----------------------------------------------------------------

    def __contains__(self, key: _Bytes) -> bool:
        """Whether ``key`` is held (expired or not; no counter changes, no reordering)."""
        _check_key(key)
        with self._lock:
            return self._find(key) >= 0

    def get(self, key: _Bytes, now: int) -> _Bytes | None:
        """A copy of the value of ``key`` if held and ``now < expires`` (it becomes the
        most recently used), else ``None`` (an expired entry is removed)."""
        _check_key(key)
        q = self._q
        with self._lock:
            e = self._find(key)
            if e < 0:
                q[MISSES] += 1
                return None
            f = self._entries + e * RECORD_SLOTS + KEY_SLOTS
            if now >= q[f + EXP]:
                self._remove(e)
                q[MISSES] += 1
                return None
            self._unlink(e)
            self._push_front(e)
            q[HITS] += 1
            return self._read(q[f + BLOCK], q[f + LEN])

    def put(self, key: _Bytes, value: _Bytes, expires: int) -> bool:
        """Hold a copy of ``value`` under ``key`` until ``expires`` (replacing any older
        value) as the most recently used entry, evicting the least recently used until it
        fits.  A value bigger than ``max_bytes`` is refused: ``False`` (and an older value
        of ``key`` is gone)."""
        _check_key(key)
        n = len(value)
        bs = self.block_size
        need = (n + bs - 1) // bs
        q = self._q
        with self._lock:
            old = self._find(key)
            if old >= 0:
                self._remove(old)
            if need > self.nblocks:
                return False
            while q[FREE_BLOCKS] < need or q[FREE_ENTRY] < 0:
                self._remove(q[TAIL])
                q[EVICTIONS] += 1
            e = q[FREE_ENTRY]
            base = self._entries + e * RECORD_SLOTS
            f = base + KEY_SLOTS
            q[FREE_ENTRY] = q[f + CHAIN]
            first = self._take_blocks(need)
            self._write(first, value)
            off = base * 8
            self._map[off:off + KEY_SIZE] = key
            q[f + LEN] = n
            q[f + EXP] = expires
            q[f + BLOCK] = first
            q[f + NBLK] = need
            q[f + USED] = 1
            b = self._buckets + self._bucket(key)
            q[f + CHAIN] = q[b]
            q[b] = e
            self._push_front(e)
            q[BYTES] += n
            q[ENTRIES] += 1
            return True

    def delete(self, key: _Bytes) -> bool:
        """Forget ``key``; whether it was held."""
        _check_key(key)
        with self._lock:
            e = self._find(key)
            if e < 0:
                return False
            self._remove(e)
            return True

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        with self._lock:
            self._reset()

    # --- internals (called with the lock held) ---------------------------------------

    def _reset(self) -> None:
        q = self._q
        q[BYTES] = q[ENTRIES] = 0
        q[HEAD] = q[TAIL] = -1
        for e in range(self.max_entries):
            f = self._entries + e * RECORD_SLOTS + KEY_SLOTS
            q[f + USED] = 0
            q[f + CHAIN] = e + 1 if e + 1 < self.max_entries else -1
        q[FREE_ENTRY] = 0
        for b in range(self.nbuckets):
            q[self._buckets + b] = -1
        for i in range(self.nblocks):
            q[self._links + i] = i + 1 if i + 1 < self.nblocks else -1
        q[FREE_BLOCK] = 0 if self.nblocks else -1
        q[FREE_BLOCKS] = self.nblocks

    def _bucket(self, key: _Bytes) -> int:
        # Keys are fingerprints (uniform bits): their first 8 bytes are a good hash.
        return int.from_bytes(key[:8], "little") % self.nbuckets

    def _find(self, key: _Bytes) -> int:
        q, m = self._q, self._map
        e = q[self._buckets + self._bucket(key)]
        while e >= 0:
            base = self._entries + e * RECORD_SLOTS
            if m[base * 8:base * 8 + KEY_SIZE] == key:
                return int(e)
            e = q[base + KEY_SLOTS + CHAIN]
        return -1

    def _unlink(self, e: int) -> None:
        """Take entry ``e`` out of the LRU list."""
        q = self._q
        f = self._entries + e * RECORD_SLOTS + KEY_SLOTS
        prev, nxt = q[f + PREV], q[f + NEXT]
        if prev >= 0:
            q[self._entries + prev * RECORD_SLOTS + KEY_SLOTS + NEXT] = nxt
        else:
            q[HEAD] = nxt
        if nxt >= 0:
            q[self._entries + nxt * RECORD_SLOTS + KEY_SLOTS + PREV] = prev
        else:
            q[TAIL] = prev

    def _push_front(self, e: int) -> None:
        q = self._q
        f = self._entries + e * RECORD_SLOTS + KEY_SLOTS
        head = q[HEAD]
        q[f + PREV] = -1
        q[f + NEXT] = head
        if head >= 0:
            q[self._entries + head * RECORD_SLOTS + KEY_SLOTS + PREV] = e
        else:
            q[TAIL] = e
        q[HEAD] = e

    def _remove(self, e: int) -> None:
        """Drop entry ``e``: out of its hash chain and the LRU list, blocks and record
        back to the free lists."""
        q = self._q
        base = self._entries + e * RECORD_SLOTS
        f = base + KEY_SLOTS
        key = self._map[base * 8:base * 8 + KEY_SIZE]
        slot = self._buckets + self._bucket(key)  # the slot that points at e
        while q[slot] != e:
            slot = self._entries + q[slot] * RECORD_SLOTS + KEY_SLOTS + CHAIN
        q[slot] = q[f + CHAIN]
        self._unlink(e)
        self._free_blocks(q[f + BLOCK], q[f + NBLK])
        q[BYTES] -= q[f + LEN]
        q[ENTRIES] -= 1
        q[f + USED] = 0
        q[f + CHAIN] = q[FREE_ENTRY]
        q[FREE_ENTRY] = e

    def _take_blocks(self, need: int) -> int:
        """Cut the first ``need`` blocks off the free list; the first of them (-1: none)."""
        if need == 0:
            return -1
        q, links = self._q, self._links
        first = last = q[FREE_BLOCK]
        for _ in range(need - 1):
            last = q[links + last]
        q[FREE_BLOCK] = q[links + last]
        q[links + last] = -1
        q[FREE_BLOCKS] -= need
        return int(first)

    def _free_blocks(self, first: int, count: int) -> None:
        if count == 0:
            return
        q, links = self._q, self._links
        last = first
        for _ in range(count - 1):
            last = q[links + last]
        q[links + last] = q[FREE_BLOCK]
        q[FREE_BLOCK] = first
        q[FREE_BLOCKS] += count

    def _write(self, block: int, value: _Bytes) -> None:
        m, bs, view = self._map, self.block_size, memoryview(value)
        for start in range(0, len(view), bs):
            off = self._arena + block * bs
            chunk = view[start:start + bs]
            m[off:off + len(chunk)] = chunk
            block = self._q[self._links + block]

    def _read(self, block: int, n: int) -> _Bytes:
        m, bs = self._map, self.block_size
        parts = []
        while n > 0:
            off = self._arena + block * bs
            take = min(n, bs)
            parts.append(m[off:off + take])
            n -= take
            block = self._q[self._links + block]
        return b"".join(parts)


def _check_key(key: _Bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"keys are {KEY_SIZE} bytes (a request fingerprint)")
