"""The replay log of a shared stream (hapax._core.flight): one suite over both twins,
plus a model-based comparison of the twins."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from core_twins import needs_c, twins
from hypothesis import given
from hypothesis import strategies as st

impl = twins("flight")


def ev(i: int, size: int = 10) -> bytes:
    """A distinct event of exactly ``size`` bytes."""
    head = b"%d:" % i
    return head + b"x" * (size - len(head))


# -- basics ---------------------------------------------------------------------------


def test_empty_log(impl: ModuleType) -> None:
    log = impl.ReplayLog(100)
    assert (log.count, log.first, log.held, log.subscribers) == (0, 0, 0, 0)
    assert log.whole and not log.closed
    assert log.max_bytes == 100


def test_max_bytes_must_be_positive(impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        impl.ReplayLog(0)


def test_each_subscriber_reads_every_event_once(impl: ModuleType) -> None:
    log = impl.ReplayLog(1000)
    a = log.subscribe()
    log.append(ev(0))
    log.append(ev(1))
    b = log.subscribe()  # a late joiner starts at the beginning
    assert log.read(a) == [ev(0), ev(1)]
    assert log.read(a) == []
    log.append(ev(2))
    assert log.read(a) == [ev(2)]
    assert log.read(b) == [ev(0), ev(1), ev(2)]
    assert log.read(b) == []
    assert (log.count, log.held, log.subscribers) == (3, 30, 2)


def test_read_returns_a_new_list(impl: ModuleType) -> None:
    log = impl.ReplayLog(1000)
    a = log.subscribe()
    log.append(ev(0))
    got = log.read(a)
    got.append(b"mine")
    log.append(ev(1))
    assert log.read(a) == [ev(1)]


def test_unsubscribe_and_unknown_ids(impl: ModuleType) -> None:
    log = impl.ReplayLog(1000)
    a = log.subscribe()
    assert log.attached(a)
    log.unsubscribe(a)
    log.unsubscribe(a)  # idempotent
    assert not log.attached(a)
    with pytest.raises(KeyError):
        log.read(a)
    with pytest.raises(KeyError):
        log.read(12345)
    assert log.subscribe() != a  # ids are never reused


def test_close(impl: ModuleType) -> None:
    log = impl.ReplayLog(1000)
    a = log.subscribe()
    log.append(ev(0))
    log.close()
    assert log.closed
    assert log.read(a) == [ev(0)]  # what is left is still read after the end
    with pytest.raises(ValueError):
        log.append(ev(1))


def test_append_rejects_non_bytes(impl: ModuleType) -> None:
    log = impl.ReplayLog(1000)
    with pytest.raises(TypeError):
        log.append("data: x\n\n")
    with pytest.raises(TypeError):
        log.append(None)


# -- the bound ------------------------------------------------------------------------


def test_without_subscribers_the_oldest_events_go(impl: ModuleType) -> None:
    log = impl.ReplayLog(35)
    for i in range(3):
        assert log.append(ev(i)) == 0
    assert log.whole and log.held == 30
    assert log.append(ev(3)) == 0
    assert (log.first, log.held, log.count) == (1, 30, 4)  # as few as needed went
    assert not log.whole
    late = log.subscribe()
    assert log.read(late) == [ev(1), ev(2), ev(3)]


def test_read_events_are_dropped_unread_ones_kept(impl: ModuleType) -> None:
    log = impl.ReplayLog(40)
    fast, slow = log.subscribe(), log.subscribe()
    log.append(ev(0))
    assert log.read(slow) == [ev(0)]
    for i in range(1, 3):
        log.append(ev(i))
    assert log.read(fast) == [ev(0), ev(1), ev(2)]
    for i in range(3, 5):  # 50 bytes would be held: ev(0) is read by both, it goes
        assert log.append(ev(i)) == 0
    assert (log.first, log.held) == (1, 40)
    assert log.read(slow) == [ev(1), ev(2), ev(3), ev(4)]
    assert log.read(fast) == [ev(3), ev(4)]


def test_a_subscriber_too_far_behind_is_detached(impl: ModuleType) -> None:
    log = impl.ReplayLog(40)
    fast, slow = log.subscribe(), log.subscribe()
    for i in range(4):
        assert log.append(ev(i)) == 0
        assert log.read(fast) == [ev(i)]
    # slow has 40 unread bytes; one more event puts its backlog over the bound.
    assert log.append(ev(4)) == 1
    assert not log.attached(slow) and log.attached(fast)
    assert log.subscribers == 1
    with pytest.raises(KeyError):
        log.read(slow)
    assert log.held <= 40
    assert log.read(fast) == [ev(4)]


def test_after_detaching_as_much_history_as_fits_stays(impl: ModuleType) -> None:
    log = impl.ReplayLog(40)
    slow = log.subscribe()
    fast = log.subscribe()
    for i in range(4):
        log.append(ev(i))
        log.read(fast)
    log.append(ev(4))
    assert not log.attached(slow)
    # Only as many old events went as the bound needs: later joiners get the rest.
    assert (log.first, log.held) == (1, 40)
    assert log.read(log.subscribe()) == [ev(1), ev(2), ev(3), ev(4)]


def test_every_subscriber_within_the_bound_stays(impl: ModuleType) -> None:
    log = impl.ReplayLog(40)
    a, b, c = log.subscribe(), log.subscribe(), log.subscribe()
    for i in range(4):
        log.append(ev(i))
    log.read(a)
    log.read(b)
    assert log.append(ev(4)) == 1  # only c (50 unread bytes) goes
    assert log.attached(a) and log.attached(b) and not log.attached(c)


def test_an_event_larger_than_the_bound_detaches_those_who_have_not_read_it(
        impl: ModuleType) -> None:
    log = impl.ReplayLog(40)
    a = log.subscribe()
    assert log.append(ev(0, 100)) == 1
    assert not log.attached(a)
    # The bound is strict: an event nobody can hold is not kept for newcomers either.
    assert (log.held, log.first, log.count, log.whole) == (0, 1, 1, False)
    assert log.read(log.subscribe()) == []


def test_long_streams_stay_bounded_and_compact(impl: ModuleType) -> None:
    log = impl.ReplayLog(1000)
    a = log.subscribe()
    got = []
    for i in range(10_000):
        log.append(ev(i, 1 + i % 50))
        if i % 7 == 0:
            got += log.read(a)
        assert log.held <= 1000
    got += log.read(a)
    assert got == [ev(i, 1 + i % 50) for i in range(10_000)]
    assert log.count == 10_000 and log.attached(a)
    assert not log.whole


def test_repr(impl: ModuleType) -> None:
    log = impl.ReplayLog(100)
    log.subscribe()
    log.append(ev(0))
    log.close()
    assert repr(log) == "<ReplayLog events=0..1 held=10/100 subscribers=1 closed>"


# -- properties -----------------------------------------------------------------------

# Operations on a log: append an event of some size, subscribe, read or unsubscribe the
# n-th subscriber (modulo how many were created).
ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 60)),
    st.tuples(st.just("subscribe"), st.just(0)),
    st.tuples(st.just("read"), st.integers(0, 7)),
    st.tuples(st.just("unsubscribe"), st.integers(0, 7)),
), max_size=80)


def run(log: Any, program: list[tuple[str, int]]) -> list[Any]:
    """Run ``program``; return everything observable after each step."""
    out: list[Any] = []
    sids: list[int] = []
    n = 0
    for op, arg in program:
        if op == "append":
            out.append(log.append(ev(n, max(arg, len(b"%d:" % n)))))
            n += 1
        elif op == "subscribe":
            sids.append(log.subscribe())
        elif sids:
            sid = sids[arg % len(sids)]
            if op == "unsubscribe":
                log.unsubscribe(sid)
            elif log.attached(sid):
                out.append(log.read(sid))
            else:
                out.append("detached")
        out.append((log.count, log.first, log.held, log.whole, log.subscribers))
    return out


@given(program=ops, max_bytes=st.integers(1, 200))
def test_invariants(impl: ModuleType, program: list[tuple[str, int]], max_bytes: int) -> None:
    log = impl.ReplayLog(max_bytes)
    sent: list[bytes] = []
    seen: dict[int, list[bytes]] = {}
    sids: list[int] = []
    for op, arg in program:
        if op == "append":
            event = ev(len(sent), max(arg, len(b"%d:" % len(sent))))
            sent.append(event)
            log.append(event)
            assert log.held <= max_bytes
        elif op == "subscribe":
            sid = log.subscribe()
            sids.append(sid)
            seen[sid] = sent[log.first:]  # what it will get: what is still held
            assert log.read(sid) == seen[sid]
        elif sids:
            sid = sids[arg % len(sids)]
            if op == "unsubscribe":
                log.unsubscribe(sid)
                seen.pop(sid, None)
            elif log.attached(sid):
                seen[sid] += log.read(sid)
                # An attached reader has missed nothing since it joined.
                assert seen[sid] == sent[len(sent) - len(seen[sid]):]
    assert log.count == len(sent)
    assert log.held == sum(len(e) for e in sent[log.first:])


@needs_c
@given(program=ops, max_bytes=st.integers(1, 200))
def test_twins_agree(program: list[tuple[str, int]], max_bytes: int) -> None:
    from hapax._core import _flight_c, _flight_py

    assert run(_flight_c.ReplayLog(max_bytes), program) == \
        run(_flight_py.ReplayLog(max_bytes), program)
