# cython: language_level=3, embedsignature=True
"""A byte-bounded LRU with per-entry expiry (compiled twin of ``_lru_py``).

A dict maps each key to a node of a circular doubly linked list kept in recency order
(the sentinel's ``next`` is the least recently used).  Nodes are extension objects with
C fields, so a hit is one dict lookup plus four pointer moves, with no Python-level
attribute access.  Same API and semantics as ``_lru_py`` (the readable spec).
"""

cimport cython

__all__ = ["LRU"]


@cython.final
@cython.freelist(64)
cdef class _Node:
    cdef object key
    cdef object value
    cdef Py_ssize_t size
    cdef double expires_at
    cdef _Node prev
    cdef _Node next


@cython.final
cdef class LRU:
    """A byte-bounded least-recently-used map with per-entry expiry."""

    cdef dict _map
    cdef _Node _root  # sentinel: _root.next is the least, _root.prev the most recent
    cdef Py_ssize_t _max_bytes
    cdef Py_ssize_t _bytes
    cdef Py_ssize_t _hits
    cdef Py_ssize_t _misses
    cdef Py_ssize_t _evictions

    def __init__(self, Py_ssize_t max_bytes):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._max_bytes = max_bytes
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._map = {}
        root = _Node()
        root.prev = root
        root.next = root
        self._root = root

    @property
    def max_bytes(self):
        return self._max_bytes

    @property
    def bytes(self):
        return self._bytes

    @property
    def hits(self):
        return self._hits

    @property
    def misses(self):
        return self._misses

    @property
    def evictions(self):
        return self._evictions

    def __len__(self):
        return len(self._map)

    def __contains__(self, key):
        """Whether ``key`` is held (expired or not; no counter changes, no reordering)."""
        return key in self._map

    cdef inline void _unlink(self, _Node node):
        node.prev.next = node.next
        node.next.prev = node.prev

    cdef inline void _append(self, _Node node):
        cdef _Node root = self._root
        cdef _Node last = root.prev
        last.next = node
        node.prev = last
        node.next = root
        root.prev = node

    cdef inline void _drop(self, _Node node):
        self._unlink(node)
        node.prev = node.next = None  # no cycles left for the GC to find
        self._bytes -= node.size

    def get(self, key, double now):
        """The value of ``key`` if held and ``now < expires_at`` (it becomes the most
        recently used), else ``None`` (an expired entry is removed)."""
        cdef object found = self._map.get(key)
        cdef _Node node
        if found is None:
            self._misses += 1
            return None
        node = <_Node>found
        if now >= node.expires_at:
            del self._map[key]
            self._drop(node)
            self._misses += 1
            return None
        self._unlink(node)
        self._append(node)
        self._hits += 1
        return node.value

    def put(self, key, value, Py_ssize_t size, double expires_at):
        """Hold ``value`` under ``key`` (replacing any older value) as the most recently
        used entry, evicting the least recently used until it fits.  An entry bigger
        than ``max_bytes`` is refused: ``False`` (and an older value of ``key`` is gone)."""
        cdef _Node node, victim
        if size < 0:
            raise ValueError("size must be >= 0")
        cdef object old = self._map.pop(key, None)
        if old is not None:
            self._drop(<_Node>old)
        if size > self._max_bytes:
            return False
        while self._bytes + size > self._max_bytes:
            victim = self._root.next
            del self._map[victim.key]
            self._drop(victim)
            self._evictions += 1
        node = _Node()
        node.key = key
        node.value = value
        node.size = size
        node.expires_at = expires_at
        self._map[key] = node
        self._append(node)
        self._bytes += size
        return True

    def delete(self, key):
        """Forget ``key``; whether it was held."""
        cdef object old = self._map.pop(key, None)
        if old is None:
            return False
        self._drop(<_Node>old)
        return True

    def clear(self):
        """Forget every entry (the counters stay)."""
        cdef _Node node = self._root.next
        cdef _Node nxt
        while node is not self._root:
            nxt = node.next
            node.prev = node.next = None
            node = nxt
        self._root.prev = self._root.next = self._root
        self._map.clear()
        self._bytes = 0
