"""GCRA (hapax._core.gcra): one suite over both twins, an injected clock, and properties."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapax._core import NO_EXTENSIONS
from hapax._core._shm_py import SharedCounters

needs_c = pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")
TWINS = ["py"] if NO_EXTENSIONS else ["c", "py"]
S = 1_000_000_000
MINUTE = 60 * S
T0 = 10**15  # a monotonic clock some days after boot


@pytest.fixture(scope="module", params=[pytest.param("c", marks=needs_c), "py"],
                ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(f"hapax._core._gcra_{request.param}")


def limiter(impl: ModuleType, limit: int, period: int = MINUTE, slot: int = 0) -> object:
    return impl.GCRA(SharedCounters(4), slot, limit, period)


# -- the boundary -------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 7, 1000])
def test_limit_at_one_instant(impl: ModuleType, limit: int) -> None:
    g = limiter(impl, limit)
    results = [g.acquire(T0) for _ in range(limit)]
    assert all(r[0] for r in results)
    assert [r[1] for r in results] == list(range(limit - 1, -1, -1))  # remaining
    allowed, remaining, reset, retry_after = g.acquire(T0)
    assert (allowed, remaining) == (False, 0)
    assert retry_after == MINUTE // limit
    assert reset == limit * (MINUTE // limit)  # until full again


def test_fresh_limit_is_full(impl: ModuleType) -> None:
    g = limiter(impl, 10)
    assert g.peek(T0) == (10, 0)
    assert g.acquire(T0, 10)[:2] == (True, 0)
    assert g.peek(T0) == (0, MINUTE)


def test_refill_is_continuous(impl: ModuleType) -> None:
    g = limiter(impl, 3)  # one request per 20 s
    for _ in range(3):
        assert g.acquire(T0)[0]
    assert g.acquire(T0 + 20 * S - 1)[0] is False
    allowed, remaining, reset, _ = g.acquire(T0 + 20 * S)
    assert allowed and remaining == 0 and reset == MINUTE
    assert g.peek(T0 + 50 * S) == (1, 30 * S)
    assert g.peek(T0 + 10 * MINUTE) == (3, 0)  # never more than the limit


def test_retry_after_is_when_it_would_pass(impl: ModuleType) -> None:
    g = limiter(impl, 100)  # tokens per minute: 0.6 s each
    assert g.acquire(T0, 90)[0]
    allowed, remaining, _, retry_after = g.acquire(T0, 30)
    assert not allowed and remaining == 10
    assert retry_after == 20 * MINUTE // 100
    assert g.acquire(T0 + retry_after - 1, 30)[0] is False
    assert g.acquire(T0 + retry_after, 30)[0] is True


def test_cost_beyond_the_limit_never_passes(impl: ModuleType) -> None:
    g = limiter(impl, 5)
    assert g.acquire(T0, 6) == (False, 5, 0, -1)
    assert g.peek(T0) == (5, 0)  # and took nothing


def test_refused_takes_nothing(impl: ModuleType) -> None:
    g = limiter(impl, 4)
    g.acquire(T0, 3)
    assert g.acquire(T0, 2)[0] is False
    assert g.acquire(T0, 1)[:2] == (True, 0)


def test_zero_cost_is_a_check(impl: ModuleType) -> None:
    g = limiter(impl, 2)
    assert g.acquire(T0, 0)[:2] == (True, 2)
    assert g.peek(T0) == (2, 0)


# -- adjust ---------------------------------------------------------------------------------


def test_adjust_refunds(impl: ModuleType) -> None:
    g = limiter(impl, 1000)
    g.acquire(T0, 800)  # an estimate
    g.adjust(T0, -700)  # the call used 100
    assert g.peek(T0)[0] == 900
    g.adjust(T0, -5000)  # a refund never makes it more than full
    assert g.peek(T0) == (1000, 0)
    assert g.acquire(T0, 1000)[0] and not g.acquire(T0, 1)[0]


def test_adjust_charges_into_debt(impl: ModuleType) -> None:
    g = limiter(impl, 100)
    g.acquire(T0, 100)
    g.adjust(T0, 50)  # the call used 50 more than estimated
    assert g.peek(T0) == (0, 150 * MINUTE // 100)
    allowed, remaining, _, retry_after = g.acquire(T0, 1)
    assert not allowed and remaining == 0
    assert retry_after == 51 * MINUTE // 100


def test_adjust_on_an_idle_limit_counts_from_now(impl: ModuleType) -> None:
    g = limiter(impl, 10)
    g.adjust(T0, 4)
    assert g.peek(T0) == (6, 4 * MINUTE // 10)


def test_arguments_are_checked(impl: ModuleType) -> None:
    c = SharedCounters(2)
    with pytest.raises(ValueError):
        impl.GCRA(c, 0, 0, MINUTE)
    with pytest.raises(ValueError):
        impl.GCRA(c, 0, 10, 5)
    with pytest.raises(IndexError):
        impl.GCRA(c, 2, 10, MINUTE)
    g = impl.GCRA(c, 1, 10, MINUTE)
    with pytest.raises(ValueError):
        g.acquire(T0, -1)
    with pytest.raises(OverflowError):
        g.adjust(T0, 1 << 62)


def test_works_on_either_counters_twin(impl: ModuleType) -> None:
    for twin in TWINS:
        counters = importlib.import_module(f"hapax._core._shm_{twin}").SharedCounters(3)
        g = impl.GCRA(counters, 2, 2, MINUTE)
        assert [g.acquire(T0)[0] for _ in range(3)] == [True, True, False]
        assert counters.load(2) == T0 + MINUTE and counters.load(1) == 0


def test_exact_across_processes(impl: ModuleType) -> None:
    counters = importlib.import_module(f"hapax._core._shm_{'py' if NO_EXTENSIONS else 'c'}"
                                       ).SharedCounters(2)
    g = impl.GCRA(counters, 0, 500, MINUTE)
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                wins = sum(g.acquire(T0)[0] for _ in range(300))
                counters.add(1, wins)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    assert counters.load(1) == 500  # 1200 tries at one instant: exactly the limit passed
    assert counters.load(0) == T0 + MINUTE


# -- properties -------------------------------------------------------------------------------

OPS = st.lists(st.tuples(
    st.sampled_from(["acquire", "peek", "adjust"]),
    st.integers(0, 5 * S),  # time step
    st.integers(-40, 40),  # cost / delta
), max_size=60)


@given(limit=st.integers(1, 50), period=st.integers(50, 10 * S), ops=OPS)
def test_never_more_than_limit_plus_refill(limit: int, period: int,
                                           ops: list[tuple[str, int, int]]) -> None:
    for twin in TWINS:
        g = importlib.import_module(f"hapax._core._gcra_{twin}").GCRA(
            SharedCounters(1), 0, limit, period)
        now, taken = T0, 0
        for _, step, cost in ops:  # all acquisitions (refunds would add quota)
            now += step
            if g.acquire(now, abs(cost))[0]:
                taken += abs(cost)
            interval = period // limit
            # Over any span: the initial quota plus one unit per interval elapsed.
            assert taken <= limit + (now - T0) // interval


@needs_c
@given(limit=st.integers(1, 50), period=st.integers(50, 10 * S), ops=OPS)
def test_twins_agree(limit: int, period: int, ops: list[tuple[str, int, int]]) -> None:
    from hapax._core import _gcra_c, _gcra_py

    c = _gcra_c.GCRA(SharedCounters(1), 0, limit, period)
    p = _gcra_py.GCRA(SharedCounters(1), 0, limit, period)
    now = T0
    for op, step, cost in ops:
        now += step
        if op == "acquire":
            assert c.acquire(now, abs(cost)) == p.acquire(now, abs(cost))
        elif op == "peek":
            assert c.peek(now) == p.peek(now)
        else:
            c.adjust(now, cost)
            p.adjust(now, cost)
        assert c.counters.load(0) == p.counters.load(0)
