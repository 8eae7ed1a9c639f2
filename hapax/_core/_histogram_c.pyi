"""Stub for the compiled histogram unit (same API as ``_histogram_py``)."""

from collections.abc import Sequence

from typing_extensions import disjoint_base

__all__ = ["LogHistogram", "bucket_index", "upper_bound", "nearest_bound",
           "BUCKETS", "SUB_BUCKETS", "UNITS_PER_SECOND"]

BUCKETS: int
SUB_BUCKETS: int
UNITS_PER_SECOND: int
OVERFLOW: int

def bucket_index(seconds: float) -> int:
    """The bucket that holds ``seconds``."""
def upper_bound(index: int) -> float:
    """The upper bound (seconds, inclusive) of bucket ``index``; ``inf`` for the last."""
def nearest_bound(seconds: float) -> float:
    """The bucket boundary nearest to ``seconds`` (a valid bound for ``cumulative``)."""

@disjoint_base  # an extension type with C-level state: it cannot share a layout
class LogHistogram:
    def __init__(self) -> None: ...
    def record(self, seconds: float) -> None:
        """Count one value (O(1))."""
    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> float: ...
    def counts(self) -> list[int]:
        """A copy of the ``BUCKETS`` counts (the export format of ``add_counts``)."""
    def add_counts(self, counts: Sequence[int], total: float) -> None:
        """Add another histogram's exported ``counts`` and ``total`` (its sum)."""
    def merge(self, other: LogHistogram) -> None:
        """Add every value of ``other`` (exact: counts add)."""
    def cumulative(self, bounds: Sequence[float]) -> list[int]:
        """How many values are ``<= b``, for each ``b`` in ``bounds``."""
