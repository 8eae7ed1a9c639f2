"""Log-linear latency histograms: compiled unless HAPAX_NO_EXTENSIONS is set (see
hapax._core; the layout is documented in ``_histogram_py``)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._histogram_c import (
        BUCKETS,
        SUB_BUCKETS,
        UNITS_PER_SECOND,
        LogHistogram,
        bucket_index,
        nearest_bound,
        upper_bound,
    )
else:  # the twins share one API; mypy sees two classes
    from hapax._core._histogram_py import (  # type: ignore[assignment]
        BUCKETS,
        SUB_BUCKETS,
        UNITS_PER_SECOND,
        LogHistogram,
        bucket_index,
        nearest_bound,
        upper_bound,
    )

__all__ = ["LogHistogram", "bucket_index", "upper_bound", "nearest_bound",
           "BUCKETS", "SUB_BUCKETS", "UNITS_PER_SECOND"]
