# cython: language_level=3, embedsignature=True
"""A response-cache store in memory shared by every worker process of a node (compiled
twin of ``_shmcache_py``, which documents the memory layout; both lay it out the same).

Mutual exclusion is a spinlock word (the LOCK header slot) taken with a compare-and-swap:
it holds the pid of the process inside, 0 when free.  A waiter spins a little, then
yields the CPU (``sched_yield``); every so often it checks that the holder is alive.  A
holder that died inside an operation (``kill(pid, 0)`` fails with ESRCH) may have left
the table half-updated: the waiter takes the lock over, clears the store (every entry is
dropped; the hit/miss/eviction counters stay) and counts a recovery.  A dead holder's
pid reused by a live process before anyone notices delays that recovery (the lock then
waits for the new process to exit); a cache can afford that rarity.
"""

import mmap
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport ESRCH, errno
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy

from hapax._core._shmcache_py import layout

cdef extern from *:
    """
    #include <sched.h>
    #include <signal.h>
    #include <unistd.h>
    static inline int64_t hapax_sc_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void hapax_sc_release(int64_t *p) { __atomic_store_n(p, 0, __ATOMIC_RELEASE); }
    static inline int hapax_sc_cas(int64_t *p, int64_t e, int64_t n) {
        return __atomic_compare_exchange_n(p, &e, n, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    }
    static inline void hapax_sc_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }
    """
    int64_t hapax_sc_load(int64_t *p) nogil
    void hapax_sc_release(int64_t *p) nogil
    int hapax_sc_cas(int64_t *p, int64_t e, int64_t n) nogil
    void hapax_sc_pause() nogil
    int sched_yield() nogil
    int kill(int pid, int sig) nogil
    int getpid() nogil

# header slots, entry fields and sizes (see _shmcache_py)
cdef enum:
    LOCK = 0
    HITS = 1
    MISSES = 2
    EVICTIONS = 3
    BYTES = 4
    ENTRIES = 5
    HEAD = 6
    TAIL = 7
    FREE_BLOCK = 8
    FREE_BLOCKS = 9
    FREE_ENTRY = 10
    RECOVERIES = 11
    LEN = 0
    EXP = 1
    BLOCK = 2
    PREV = 3
    NEXT = 4
    CHAIN = 5
    USED = 6
    NBLK = 7
    RECORD_SLOTS = 10
    KEY_SLOTS = 2
    KEY_SIZE = 16
    SPINS = 64          # busy-wait rounds before yielding the CPU
    CHECK_EVERY = 256   # yields between checks that the holder is alive


# This process's pid, for the lock word: getpid() is a system call on every operation
# otherwise (~10% of a hit; benchmarks/test_bench_core_shmcache.py).  A fork through
# os.fork (the supervisor's, multiprocessing's) refreshes it in the child.
cdef int64_t _me = getpid()


def _refresh_pid():
    global _me
    _me = getpid()


os.register_at_fork(after_in_child=_refresh_pid)


cdef class SharedLRU:
    cdef readonly object _map
    cdef const unsigned char[::1] _keep
    cdef int64_t *_h        # header
    cdef int64_t *_ent      # entry records
    cdef int64_t *_bkt      # bucket heads
    cdef int64_t *_lnk      # block links
    cdef char *_arena
    cdef readonly Py_ssize_t block_size, nblocks, max_entries, nbuckets

    def __init__(self, Py_ssize_t max_bytes, max_entries=None, Py_ssize_t block_size=1024,
                 buckets=None):
        (self.nblocks, self.max_entries, self.nbuckets, entries_off, buckets_off,
         links_off, arena_off, size) = layout(max_bytes, max_entries, block_size, buckets)
        self.block_size = block_size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        cdef unsigned char[::1] view = self._map
        self._keep = view
        cdef char *base = <char *> &view[0]
        # mmap memory is page-aligned and every region starts at a multiple of 8 bytes:
        # the slots are naturally aligned (atomics need that).
        self._h = <int64_t *> base
        self._ent = <int64_t *> (base + <Py_ssize_t> entries_off)
        self._bkt = <int64_t *> (base + <Py_ssize_t> buckets_off)
        self._lnk = <int64_t *> (base + <Py_ssize_t> links_off)
        self._arena = base + <Py_ssize_t> arena_off
        self._reset()

    # --- the lock --------------------------------------------------------------------

    cdef void _acquire(self) noexcept:
        cdef int64_t *word = &self._h[LOCK]
        cdef int64_t me = _me, holder
        cdef int spins = 0, yields = 0
        while True:
            if hapax_sc_load(word) == 0 and hapax_sc_cas(word, 0, me):
                return
            if spins < SPINS:
                spins += 1
                hapax_sc_pause()
                continue
            sched_yield()
            yields += 1
            if yields % CHECK_EVERY == 0:
                holder = hapax_sc_load(word)
                if holder != 0 and kill(<int> holder, 0) == -1 and errno == ESRCH:
                    if hapax_sc_cas(word, holder, me):
                        # The dead holder may have stopped half-way: start afresh.
                        self._reset()
                        self._h[RECOVERIES] += 1
                        return

    cdef inline void _release(self) noexcept:
        hapax_sc_release(&self._h[LOCK])

    # --- counters --------------------------------------------------------------------

    cdef int64_t _slot(self, int i) noexcept:
        self._acquire()
        cdef int64_t v = self._h[i]
        self._release()
        return v

    @property
    def max_bytes(self):
        return self.nblocks * self.block_size

    @property
    def bytes(self):
        return self._slot(BYTES)

    @property
    def hits(self):
        return self._slot(HITS)

    @property
    def misses(self):
        return self._slot(MISSES)

    @property
    def evictions(self):
        return self._slot(EVICTIONS)

    @property
    def recoveries(self):
        """How often a lock held by a dead process was taken over (and the store cleared)."""
        return self._slot(RECOVERIES)

    def __len__(self):
        return self._slot(ENTRIES)

    # --- operations ------------------------------------------------------------------

    def __contains__(self, bytes key not None):
        """Whether ``key`` is held (expired or not; no counter changes, no reordering)."""
        _check_key(key)
        self._acquire()
        cdef int64_t e = self._find(PyBytes_AS_STRING(key))
        self._release()
        return e >= 0

    def get(self, bytes key not None, int64_t now):
        """A copy of the value of ``key`` if held and ``now < expires`` (it becomes the
        most recently used), else ``None`` (an expired entry is removed)."""
        _check_key(key)
        cdef int64_t *h = self._h
        cdef int64_t *f
        cdef int64_t n, block, take
        cdef char *out
        self._acquire()
        cdef int64_t e = self._find(PyBytes_AS_STRING(key))
        if e < 0:
            h[MISSES] += 1
            self._release()
            return None
        f = self._ent + e * RECORD_SLOTS + KEY_SLOTS
        if now >= f[EXP]:
            self._remove(e)
            h[MISSES] += 1
            self._release()
            return None
        self._unlink(e)
        self._push_front(e)
        h[HITS] += 1
        n = f[LEN]
        # Allocating under the lock: a failure must still release it.
        try:
            value = PyBytes_FromStringAndSize(NULL, n)
        except BaseException:
            self._release()
            raise
        out = PyBytes_AS_STRING(value)
        block = f[BLOCK]
        while n > 0:
            take = n if n < self.block_size else self.block_size
            memcpy(out, self._arena + block * self.block_size, take)
            out += take
            n -= take
            block = self._lnk[block]
        self._release()
        return value

    def put(self, bytes key not None, bytes value not None, int64_t expires):
        """Hold a copy of ``value`` under ``key`` until ``expires`` (replacing any older
        value) as the most recently used entry, evicting the least recently used until it
        fits.  A value bigger than ``max_bytes`` is refused: ``False`` (and an older value
        of ``key`` is gone)."""
        _check_key(key)
        cdef int64_t *h = self._h
        cdef int64_t *f
        cdef int64_t *b
        cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
        cdef Py_ssize_t bs = self.block_size
        cdef int64_t need = (n + bs - 1) // bs, e, first, block, take
        cdef const char *src = PyBytes_AS_STRING(value)
        cdef const char *k = PyBytes_AS_STRING(key)
        self._acquire()
        e = self._find(k)
        if e >= 0:
            self._remove(e)
        if need > self.nblocks:
            self._release()
            return False
        while h[FREE_BLOCKS] < need or h[FREE_ENTRY] < 0:
            self._remove(h[TAIL])
            h[EVICTIONS] += 1
        e = h[FREE_ENTRY]
        f = self._ent + e * RECORD_SLOTS + KEY_SLOTS
        h[FREE_ENTRY] = f[CHAIN]
        first = self._take_blocks(need)
        block = first
        while n > 0:
            take = n if n < bs else bs
            memcpy(self._arena + block * bs, src, take)
            src += take
            n -= take
            block = self._lnk[block]
        memcpy(self._ent + e * RECORD_SLOTS, k, KEY_SIZE)
        f[LEN] = PyBytes_GET_SIZE(value)
        f[EXP] = expires
        f[BLOCK] = first
        f[NBLK] = need
        f[USED] = 1
        b = self._bkt + self._bucket(k)
        f[CHAIN] = b[0]
        b[0] = e
        self._push_front(e)
        h[BYTES] += f[LEN]
        h[ENTRIES] += 1
        self._release()
        return True

    def delete(self, bytes key not None):
        """Forget ``key``; whether it was held."""
        _check_key(key)
        self._acquire()
        cdef int64_t e = self._find(PyBytes_AS_STRING(key))
        if e >= 0:
            self._remove(e)
        self._release()
        return e >= 0

    def clear(self):
        """Forget every entry (the counters stay)."""
        self._acquire()
        self._reset()
        self._release()

    # --- internals (called with the lock held) ---------------------------------------

    cdef void _reset(self) noexcept:
        cdef int64_t *h = self._h
        cdef int64_t *f
        cdef Py_ssize_t i
        h[BYTES] = 0
        h[ENTRIES] = 0
        h[HEAD] = -1
        h[TAIL] = -1
        for i in range(self.max_entries):
            f = self._ent + i * RECORD_SLOTS + KEY_SLOTS
            f[USED] = 0
            f[CHAIN] = i + 1 if i + 1 < self.max_entries else -1
        h[FREE_ENTRY] = 0
        for i in range(self.nbuckets):
            self._bkt[i] = -1
        for i in range(self.nblocks):
            self._lnk[i] = i + 1 if i + 1 < self.nblocks else -1
        h[FREE_BLOCK] = 0 if self.nblocks else -1
        h[FREE_BLOCKS] = self.nblocks

    cdef inline Py_ssize_t _bucket(self, const char *key) noexcept:
        # Keys are fingerprints (uniform bits): their first 8 bytes are a good hash
        # (little-endian, as the pure twin reads them; this build targets x86-64/arm64).
        cdef uint64_t x
        memcpy(&x, key, 8)
        return <Py_ssize_t> (x % <uint64_t> self.nbuckets)

    cdef int64_t _find(self, const char *key) noexcept:
        cdef int64_t e = self._bkt[self._bucket(key)]
        while e >= 0:
            if memcmp(self._ent + e * RECORD_SLOTS, key, KEY_SIZE) == 0:
                return e
            e = self._ent[e * RECORD_SLOTS + KEY_SLOTS + CHAIN]
        return -1

    cdef void _unlink(self, int64_t e) noexcept:
        cdef int64_t *f = self._ent + e * RECORD_SLOTS + KEY_SLOTS
        cdef int64_t prev = f[PREV], nxt = f[NEXT]
        if prev >= 0:
            self._ent[prev * RECORD_SLOTS + KEY_SLOTS + NEXT] = nxt
        else:
            self._h[HEAD] = nxt
        if nxt >= 0:
            self._ent[nxt * RECORD_SLOTS + KEY_SLOTS + PREV] = prev
        else:
            self._h[TAIL] = prev

    cdef void _push_front(self, int64_t e) noexcept:
        cdef int64_t *f = self._ent + e * RECORD_SLOTS + KEY_SLOTS
        cdef int64_t head = self._h[HEAD]
        f[PREV] = -1
        f[NEXT] = head
        if head >= 0:
            self._ent[head * RECORD_SLOTS + KEY_SLOTS + PREV] = e
        else:
            self._h[TAIL] = e
        self._h[HEAD] = e

    cdef void _remove(self, int64_t e) noexcept:
        cdef int64_t *h = self._h
        cdef int64_t *f = self._ent + e * RECORD_SLOTS + KEY_SLOTS
        cdef int64_t *slot = self._bkt + self._bucket(<const char *> (self._ent + e * RECORD_SLOTS))
        while slot[0] != e:
            slot = self._ent + slot[0] * RECORD_SLOTS + KEY_SLOTS + CHAIN
        slot[0] = f[CHAIN]
        self._unlink(e)
        self._free_blocks(f[BLOCK], f[NBLK])
        h[BYTES] -= f[LEN]
        h[ENTRIES] -= 1
        f[USED] = 0
        f[CHAIN] = h[FREE_ENTRY]
        h[FREE_ENTRY] = e

    cdef int64_t _take_blocks(self, int64_t need) noexcept:
        if need == 0:
            return -1
        cdef int64_t first = self._h[FREE_BLOCK], last = first, i
        for i in range(need - 1):
            last = self._lnk[last]
        self._h[FREE_BLOCK] = self._lnk[last]
        self._lnk[last] = -1
        self._h[FREE_BLOCKS] -= need
        return first

    cdef void _free_blocks(self, int64_t first, int64_t count) noexcept:
        if count == 0:
            return
        cdef int64_t last = first, i
        for i in range(count - 1):
            last = self._lnk[last]
        self._lnk[last] = self._h[FREE_BLOCK]
        self._h[FREE_BLOCK] = first
        self._h[FREE_BLOCKS] += count


cdef inline int _check_key(bytes key) except -1:
    if PyBytes_GET_SIZE(key) != KEY_SIZE:
        raise ValueError(f"keys are {KEY_SIZE} bytes (a request fingerprint)")
    return 0
