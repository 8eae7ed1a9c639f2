"""Log-linear histograms (hapax._core.histogram): one suite over both twins, plus
twin-vs-twin and twin-vs-reference properties."""

from __future__ import annotations

import bisect
import importlib
import math
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapax._core import NO_EXTENSIONS

needs_c = pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")
UNIT = 2.0 ** -20  # seconds per internal unit
TOP = 4096.0  # 2**32 units: the last regular boundary


@pytest.fixture(
    scope="module",  # module scope: hypothesis refuses function-scoped fixtures
    params=[pytest.param("c", marks=needs_c), "py"],
    ids=["c", "py"],
)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    # No importorskip: with extensions enabled, a missing compiled module is a failure.
    return importlib.import_module(f"hapax._core._histogram_{request.param}")


def boundaries(impl: ModuleType) -> list[float]:
    return [impl.upper_bound(i) for i in range(impl.BUCKETS)]


# -- layout -----------------------------------------------------------------------------


def test_layout(impl: ModuleType) -> None:
    assert (impl.BUCKETS, impl.SUB_BUCKETS, impl.UNITS_PER_SECOND) == (241, 8, 1 << 20)
    bounds = boundaries(impl)
    # one bucket per unit up to 8 units, then 8 linear sub-buckets per power of two
    assert bounds[:9] == [n * UNIT for n in range(1, 10)]
    assert bounds[7:17] == [n * UNIT for n in (8, 9, 10, 11, 12, 13, 14, 15, 16, 18)]
    assert bounds[-2] == TOP and bounds[-1] == math.inf
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    # whole seconds and halves are boundaries: the exported `le` values can be round
    for s in (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 3584.0):
        assert s in bounds, s
    with pytest.raises(IndexError):
        impl.upper_bound(impl.BUCKETS)
    with pytest.raises(IndexError):
        impl.upper_bound(-1)


def test_bucket_includes_its_upper_bound(impl: ModuleType) -> None:
    bounds = boundaries(impl)
    for i, hi in enumerate(bounds[:-1]):
        assert impl.bucket_index(hi) == i
        assert impl.bucket_index(math.nextafter(hi, math.inf)) == i + 1
        if i:
            assert impl.bucket_index(math.nextafter(bounds[i - 1], math.inf)) == i


def test_edges(impl: ModuleType) -> None:
    for v in (0.0, -1.0, math.nan, 1e-12, UNIT):
        assert impl.bucket_index(v) == 0
    assert impl.bucket_index(TOP) == impl.BUCKETS - 2
    for v in (math.nextafter(TOP, math.inf), 1e9, math.inf):
        assert impl.bucket_index(v) == impl.BUCKETS - 1


@given(st.floats(min_value=8 * UNIT, max_value=TOP, exclude_min=True))
def test_relative_error_is_under_one_eighth(impl: ModuleType, value: float) -> None:
    i = impl.bucket_index(value)
    hi, lo = impl.upper_bound(i), impl.upper_bound(i - 1)
    assert lo < value <= hi
    assert (hi - value) / value < 1 / 8
    assert (hi - lo) / lo <= 1 / 8


def test_nearest_bound(impl: ModuleType) -> None:
    assert impl.nearest_bound(1.0) == 1.0
    assert impl.nearest_bound(0.005) == 10 * 2.0 ** -11  # 0.0048828125
    assert impl.nearest_bound(0.1) == 13 * 2.0 ** -7  # 0.1015625
    assert impl.nearest_bound(300.0) == 288.0
    assert impl.nearest_bound(0.0) == UNIT
    assert impl.nearest_bound(1e6) == TOP
    assert impl.nearest_bound(math.inf) == math.inf


@given(st.floats(min_value=0, max_value=2 * TOP))
def test_nearest_bound_is_a_boundary(impl: ModuleType, value: float) -> None:
    b = impl.nearest_bound(value)
    h = impl.LogHistogram()
    h.cumulative([b])  # does not raise
    if 8 * UNIT <= value <= TOP:  # log-linear range: within half a sub-bucket
        assert abs(b - value) <= value / 16 + 1e-12
    elif UNIT <= value <= TOP:  # below 8 units the buckets are one unit wide
        assert abs(b - value) <= UNIT / 2 + 1e-12


# -- recording, cumulative counts, merging ---------------------------------------------


def test_record_count_sum(impl: ModuleType) -> None:
    h = impl.LogHistogram()
    assert (h.count, h.sum, h.cumulative([math.inf])) == (0, 0.0, [0])
    for v in (0.001, 0.5, 1.0, 1.5, 7200.0):
        h.record(v)
    assert h.count == 5
    assert h.sum == pytest.approx(7203.001)
    assert h.cumulative([0.0009765625, 0.5, 1.0, 2.0, TOP, math.inf]) == [0, 2, 3, 4, 4, 5]
    counts = h.counts()
    assert len(counts) == impl.BUCKETS and sum(counts) == 5
    assert counts[impl.bucket_index(1.0)] == 1
    counts[0] = 99  # a copy
    assert h.counts()[0] == 0


def test_cumulative_rejects_bounds_that_are_not_boundaries(impl: ModuleType) -> None:
    h = impl.LogHistogram()
    for bad in (0.1, 0.005, 300.0, -1.0, 0.0, 2 * TOP, math.nan):
        with pytest.raises(ValueError, match="not a bucket boundary"):
            h.cumulative([bad])


def test_merge_and_add_counts_are_exact(impl: ModuleType) -> None:
    a, b, both = impl.LogHistogram(), impl.LogHistogram(), impl.LogHistogram()
    for i in range(1000):
        v = (i * 7919 % 1000) / 997.0
        (a if i % 3 else b).record(v)
        both.record(v)
    merged = impl.LogHistogram()
    merged.merge(a)
    merged.merge(b)
    assert merged.counts() == both.counts()
    assert merged.count == both.count == 1000
    assert merged.sum == pytest.approx(both.sum)
    imported = impl.LogHistogram()
    imported.add_counts(a.counts(), a.sum)
    imported.add_counts(b.counts(), b.sum)
    assert imported.counts() == both.counts() and imported.count == 1000


def test_add_counts_validates_before_changing_anything(impl: ModuleType) -> None:
    h = impl.LogHistogram()
    h.record(1.0)
    with pytest.raises(ValueError, match="expected 241 counts"):
        h.add_counts([1, 2, 3], 1.0)
    bad = [1] * impl.BUCKETS
    bad[-1] = -1
    with pytest.raises(ValueError, match="negative"):
        h.add_counts(bad, 1.0)
    assert (h.count, h.sum, sum(h.counts())) == (1, 1.0, 1)


# -- properties ---------------------------------------------------------------------------

values = st.lists(st.one_of(
    st.floats(min_value=0, max_value=10),
    st.floats(min_value=0, max_value=1e-4),
    st.floats(min_value=-1, max_value=1e5),
    st.sampled_from([0.25, 0.5, 1.0, 2.5, TOP, UNIT, 8 * UNIT, math.inf]),
), max_size=200)


@given(values, st.lists(st.integers(min_value=0, max_value=240), max_size=20))
def test_cumulative_matches_a_sorted_list(impl: ModuleType, vals: list[float],
                                          picks: list[int]) -> None:
    h = impl.LogHistogram()
    for v in vals:
        h.record(v)
    bounds = sorted({impl.upper_bound(i) for i in picks})
    ordered = sorted(max(v, 0.0) for v in vals)
    expected = [bisect.bisect_right(ordered, b) for b in bounds]
    assert h.cumulative(bounds) == expected
    assert h.count == len(vals)


@needs_c
@given(values)
def test_twins_agree(vals: list[float]) -> None:
    c = importlib.import_module("hapax._core._histogram_c")
    py = importlib.import_module("hapax._core._histogram_py")
    hc, hp = c.LogHistogram(), py.LogHistogram()
    for v in vals:
        assert c.bucket_index(v) == py.bucket_index(v)
        assert c.nearest_bound(v) == py.nearest_bound(v)
        hc.record(v)
        hp.record(v)
    assert hc.counts() == hp.counts()
    assert hc.count == hp.count
    assert hc.sum == hp.sum or (math.isnan(hc.sum) and math.isnan(hp.sum))
    assert [c.upper_bound(i) for i in range(c.BUCKETS)] == \
        [py.upper_bound(i) for i in range(py.BUCKETS)]
    # the export formats are interchangeable: a pure snapshot merges into a compiled one
    hc.add_counts(hp.counts(), 0.0)
    assert sum(hc.counts()) == 2 * len(vals)
