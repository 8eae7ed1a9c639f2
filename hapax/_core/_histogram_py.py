"""Log-linear latency histogram (pure-Python twin of ``_histogram_c``).

Values are seconds, recorded in integer *units* of 2**-20 s (about 0.95 µs; a power of
two, so ``seconds * UNITS_PER_SECOND`` is exact and whole seconds are bucket
boundaries).  Buckets are HDR-style: each power-of-two range ``[2**e, 2**(e+1))`` of
units is split into ``SUB_BUCKETS`` (8) linear sub-buckets, and the values below 8 units
get one bucket each.  The bucket of a value is found with a few bit operations (O(1),
no search).  Range: up to 2**32 units (4096 s, about 68 minutes); longer values land in
one overflow bucket.  ``BUCKETS`` counts, plus the number and the sum of the values.

Buckets include their upper bound, as Prometheus ``le`` buckets do: bucket ``i`` holds
the values ``v`` with ``lower(i) < v <= upper(i)`` (bucket 0 also holds 0 and negative
values).  So the cumulative count at a boundary is exact, and :meth:`cumulative` takes
only boundaries (see :func:`nearest_bound` to pick one).

Relative error: a bucket above the linear range spans ``(m, m + 1] * 2**s`` units with
``m >= 8``, so its width is at most 1/8 of its lower bound: reporting a value as its
bucket's upper bound overstates it by less than 12.5% (by less than one unit, about
0.95 µs, in the linear range below 8 units).

Histograms are mergeable exactly: counts add (:meth:`merge`, :meth:`add_counts`), so
the histograms of several workers add up to the histogram of all their values.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil, inf

__all__ = ["LogHistogram", "bucket_index", "upper_bound", "nearest_bound",
           "BUCKETS", "SUB_BUCKETS", "UNITS_PER_SECOND"]

SUB_BITS = 3
SUB_BUCKETS = 1 << SUB_BITS
UNITS_PER_SECOND = 1 << 20
_MAX_BITS = 32  # values up to 2**32 units get a regular bucket
_TOP = float(1 << _MAX_BITS)
# The last regular bucket is that of 2**32 - 1 units (shift 28): index (29 << 3) + 7.
OVERFLOW = (_MAX_BITS - SUB_BITS + 1) << SUB_BITS  # 240
BUCKETS = OVERFLOW + 1


def _index_units(m: int) -> int:
    """The bucket of ``m`` (an integer of units, ``0 <= m < 2**32``), by bit operations."""
    if m < SUB_BUCKETS:
        return m
    shift = m.bit_length() - 1 - SUB_BITS
    return ((shift + 1) << SUB_BITS) + ((m >> shift) & (SUB_BUCKETS - 1))


def bucket_index(seconds: float) -> int:
    """The bucket that holds ``seconds``."""
    t = seconds * UNITS_PER_SECOND
    if not t > 1.0:  # also NaN
        return 0
    if t > _TOP:
        return OVERFLOW
    # ceil(t) - 1: bucket i holds the units (lower, upper], i.e. m in [lower, upper).
    return _index_units(ceil(t) - 1)


def _upper_units(index: int) -> int:
    if index < SUB_BUCKETS:
        return index + 1
    shift = (index >> SUB_BITS) - 1
    return (SUB_BUCKETS + (index & (SUB_BUCKETS - 1)) + 1) << shift


def upper_bound(index: int) -> float:
    """The upper bound (seconds, inclusive) of bucket ``index``; ``inf`` for the last."""
    if not 0 <= index < BUCKETS:
        raise IndexError(f"bucket {index} out of range (0..{BUCKETS - 1})")
    if index == OVERFLOW:
        return inf
    return _upper_units(index) / UNITS_PER_SECOND


def nearest_bound(seconds: float) -> float:
    """The bucket boundary nearest to ``seconds`` (a valid bound for :meth:`cumulative`)."""
    if seconds == inf:
        return inf
    i = bucket_index(seconds)
    if i == OVERFLOW:
        return _TOP / UNITS_PER_SECOND
    hi = upper_bound(i)
    lo = upper_bound(i - 1) if i > 0 else 0.0
    if i == 0 or hi - seconds <= seconds - lo:
        return hi
    return lo


class LogHistogram:
    """Counts per bucket, number and sum of the recorded values."""

    __slots__ = ("_counts", "_count", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * BUCKETS
        self._count = 0
        self._sum = 0.0

    def record(self, seconds: float) -> None:
        """Count one value (O(1))."""
        self._counts[bucket_index(seconds)] += 1
        self._count += 1
        self._sum += seconds

    @property
    def count(self) -> int:
        return self._count

    @property
    def sum(self) -> float:
        return self._sum

    def counts(self) -> list[int]:
        """A copy of the ``BUCKETS`` counts (the export format of :meth:`add_counts`)."""
        return list(self._counts)

    def add_counts(self, counts: Sequence[int], total: float) -> None:
        """Add another histogram's exported ``counts`` and ``total`` (its sum)."""
        if len(counts) != BUCKETS:
            raise ValueError(f"expected {BUCKETS} counts, got {len(counts)}")
        add = [int(n) for n in counts]  # validate everything before changing anything
        if any(n < 0 for n in add):
            raise ValueError("counts must not be negative")
        mine = self._counts
        for i, n in enumerate(add):
            mine[i] += n
        self._count += sum(add)
        self._sum += total

    def merge(self, other: LogHistogram) -> None:
        """Add every value of ``other`` (exact: counts add)."""
        self.add_counts(other.counts(), other.sum)

    def cumulative(self, bounds: Sequence[float]) -> list[int]:
        """How many values are ``<= b``, for each ``b`` in ``bounds``.  Each bound must be
        a bucket boundary (or ``inf``): a count between boundaries could not be exact."""
        prefix: list[int] = []
        running = 0
        for n in self._counts:
            running += n
            prefix.append(running)
        out = []
        for b in bounds:
            out.append(prefix[_bound_index(b)])
        return out


def _bound_index(b: float) -> int:
    """The bucket whose upper bound is ``b`` (ValueError if ``b`` is not a boundary)."""
    if b == inf:
        return OVERFLOW
    t = b * UNITS_PER_SECOND
    if t >= 1.0 and t <= _TOP and t == int(t):
        i = _index_units(int(t) - 1)
        if _upper_units(i) == int(t):
            return i
    raise ValueError(f"{b!r} is not a bucket boundary (nearest: {nearest_bound(b)!r})")
