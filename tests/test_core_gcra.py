"""GCRA (hapax._core.gcra): one suite over both twins, an injected clock, and properties."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

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


# -- duration: the reset headers' format ------------------------------------------------------


@pytest.mark.parametrize(("ns", "text"), [
    (-5, b"0s"), (0, b"0s"), (1, b"1ms"), (20_000_000, b"20ms"), (999_000_001, b"1s"),
    (10**9, b"1s"), (1_500_000_000, b"1.5s"), (1_001_000_000, b"1.001s"),
    (7_660_000_000, b"7.66s"), (59_999_000_001, b"1m0s"), (360 * S, b"6m0s"),
    (61_250_000_000, b"1m1.25s"), (3723 * S, b"1h2m3s"), (90_061_500_000_000, b"25h1m1.5s"),
])
def test_duration(impl: ModuleType, ns: int, text: bytes) -> None:
    assert impl.duration(ns) == text


@needs_c
@given(ns=st.one_of(st.integers(-S, 10**14), st.integers(0, (1 << 63) - 1)))
def test_duration_twins_agree(ns: int) -> None:
    from hapax._core import _gcra_c, _gcra_py

    assert _gcra_c.duration(ns) == _gcra_py.duration(ns)


# -- GCRAGroup: one request against several limits ------------------------------------------


def group(impl: ModuleType, limits: list[tuple[str, int]], now: list[int] | None = None
          ) -> Any:
    counters = SharedCounters(max(1, len(limits)))
    clock = (lambda: now[0]) if now is not None else (lambda: T0)
    return impl.GCRAGroup([impl.GCRA(counters, i, lim, MINUTE) for i, (_, lim) in
                           enumerate(limits)], [kind for kind, _ in limits], clock)


def test_group_allowed_appends_the_headers(impl: ModuleType) -> None:
    g = group(impl, [("requests", 3), ("tokens", 1000)])
    out: list[tuple[bytes, bytes]] = [(b"x-other", b"1")]
    assert g.charge(150, out) is None
    assert out == [(b"x-other", b"1"),
                   (b"x-ratelimit-limit-requests", b"3"),
                   (b"x-ratelimit-remaining-requests", b"2"),
                   (b"x-ratelimit-reset-requests", b"20s"),
                   (b"x-ratelimit-limit-tokens", b"1000"),
                   (b"x-ratelimit-remaining-tokens", b"850"),
                   (b"x-ratelimit-reset-tokens", b"9s")]
    assert [c.peek(T0)[0] for c in g.cells] == [2, 850]


def test_group_headers_show_the_tightest_per_kind(impl: ModuleType) -> None:
    g = group(impl, [("requests", 10), ("tokens", 100), ("requests", 4), ("tokens", 100)])
    out: list[tuple[bytes, bytes]] = []
    assert g.charge(5, out) is None
    # requests: 9 vs 3 left -> the second; tokens: a tie (95, 95) -> the first.
    assert [v for _, v in out] == [b"4", b"3", b"15s", b"100", b"95", b"3s"]


def test_group_refusal_gives_back_what_others_took(impl: ModuleType) -> None:
    g = group(impl, [("requests", 5), ("tokens", 100), ("requests", 1)])
    assert g.charge(10, []) is None
    out: list[tuple[bytes, bytes]] = []
    assert g.charge(10, out) == (2, MINUTE)  # the third (rpm 1) refuses for a minute
    assert [c.peek(T0)[0] for c in g.cells] == [4, 90, 0]  # the first two refunded
    # requests: the refused limit's headers; tokens: as they are after the refund.
    assert out == [(b"x-ratelimit-limit-requests", b"1"),
                   (b"x-ratelimit-remaining-requests", b"0"),
                   (b"x-ratelimit-reset-requests", b"1m0s"),
                   (b"x-ratelimit-limit-tokens", b"100"),
                   (b"x-ratelimit-remaining-tokens", b"90"),
                   (b"x-ratelimit-reset-tokens", b"6s")]


def test_group_cost_beyond_a_limit_never_passes(impl: ModuleType) -> None:
    g = group(impl, [("requests", 5), ("tokens", 100)])
    assert g.charge(101, []) == (1, -1)
    assert g.charge(100, []) is None
    assert g.charge(1, []) == (1, MINUTE // 100)


def test_group_adjust_corrects_only_token_limits(impl: ModuleType) -> None:
    now = [T0]
    g = group(impl, [("requests", 10), ("tokens", 1000), ("tokens", 500)], now)
    assert g.charge(300, []) is None
    g.adjust(-250)  # the call used 50
    assert [c.peek(T0)[0] for c in g.cells] == [9, 950, 450]
    g.adjust(0)
    g.adjust(100)
    assert [c.peek(T0)[0] for c in g.cells] == [9, 850, 350]
    now[0] += MINUTE  # adjust reads the group's clock
    g.adjust(-10_000)
    assert [c.peek(now[0])[0] for c in g.cells] == [10, 1000, 500]


def test_group_of_many_cells(impl: ModuleType) -> None:
    # More limits than a request usually meets (the compiled twin's scratch moves off
    # the stack beyond 8).
    g = group(impl, [("requests", 30 - i) for i in range(11)] + [("tokens", 50)])
    out: list[tuple[bytes, bytes]] = []
    assert g.charge(20, out) is None
    assert [v for _, v in out] == [b"20", b"19", b"3s", b"50", b"30", b"24s"]
    assert g.charge(20, []) is None
    out.clear()
    assert g.charge(20, out) == (11, 10 * MINUTE // 50)
    assert [c.peek(T0)[0] for c in g.cells] == [28 - i for i in range(11)] + [10]
    assert [v for _, v in out] == [b"20", b"18", b"6s", b"50", b"10", b"48s"]


def test_group_arguments_are_checked(impl: ModuleType) -> None:
    cell = limiter(impl, 5)
    with pytest.raises(ValueError):
        impl.GCRAGroup([cell], ["requests", "tokens"], lambda: T0)
    g = impl.GCRAGroup([cell], ["tokens"], lambda: T0)
    with pytest.raises(ValueError):
        g.charge(-1, [])
    with pytest.raises(OverflowError):
        g.adjust(1 << 62)
    empty = impl.GCRAGroup([], [], lambda: T0)
    out: list[tuple[bytes, bytes]] = []
    assert empty.charge(5, out) is None and out == []


@needs_c
def test_compiled_group_takes_compiled_cells() -> None:
    from hapax._core import _gcra_c, _gcra_py

    with pytest.raises(TypeError):
        _gcra_c.GCRAGroup([_gcra_py.GCRA(SharedCounters(1), 0, 5, MINUTE)], ["requests"],
                          lambda: T0)


GROUP_OPS = st.lists(st.tuples(
    st.integers(0, 5 * S),  # time step
    st.integers(0, 60),  # tokens of a request
    st.integers(-40, 40),  # correction after it
), max_size=40)


@needs_c
@given(limits=st.lists(st.tuples(st.sampled_from(["requests", "tokens", "images"]),
                                 st.integers(1, 50)), max_size=5),
       ops=GROUP_OPS)
def test_group_twins_agree(limits: list[tuple[str, int]], ops: list[tuple[int, int, int]]
                           ) -> None:
    from hapax._core import _gcra_c, _gcra_py

    now = [T0]
    c, p = group(_gcra_c, limits, now), group(_gcra_py, limits, now)
    for step, tokens, delta in ops:
        now[0] += step
        out_c: list[tuple[bytes, bytes]] = []
        out_p: list[tuple[bytes, bytes]] = []
        assert c.charge(tokens, out_c) == p.charge(tokens, out_p)
        assert out_c == out_p
        c.adjust(delta)
        p.adjust(delta)
        assert [x.peek(now[0]) for x in c.cells] == [x.peek(now[0]) for x in p.cells]
