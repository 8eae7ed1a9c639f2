"""Shared counters (hapax._core.shm): one suite over both twins, atomic across processes."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapax._core import NO_EXTENSIONS

needs_c = pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")
INT64 = st.integers(-(1 << 62), 1 << 62)


@pytest.fixture(scope="module", params=[pytest.param("c", marks=needs_c), "py"],
                ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(f"hapax._core._shm_{request.param}")


def test_fresh_slots_are_zero(impl: ModuleType) -> None:
    c = impl.SharedCounters(4)
    assert c.size == 4
    assert [c.load(i) for i in range(4)] == [0, 0, 0, 0]


def test_store_load_add(impl: ModuleType) -> None:
    c = impl.SharedCounters(3)
    c.store(1, 41)
    assert c.add(1, 1) == 42
    assert c.add(1, -50) == -8
    assert c.load(1) == -8
    assert c.load(0) == 0 and c.load(2) == 0  # neighbours untouched
    c.store(2, (1 << 63) - 1)
    assert c.load(2) == (1 << 63) - 1


def test_cas(impl: ModuleType) -> None:
    c = impl.SharedCounters(1)
    assert c.cas(0, 0, 5) is True
    assert c.cas(0, 0, 7) is False
    assert c.load(0) == 5
    assert c.cas(0, 5, -1) is True
    assert c.load(0) == -1


def test_try_acquire_stops_at_the_limit(impl: ModuleType) -> None:
    c = impl.SharedCounters(1)
    assert [c.try_acquire(0, 3) for _ in range(5)] == [True, True, True, False, False]
    assert c.load(0) == 3
    c.add(0, -1)  # a release
    assert c.try_acquire(0, 3) is True
    assert c.try_acquire(0, 0) is False


@pytest.mark.parametrize("slots", [0, -1])
def test_size_must_be_positive(impl: ModuleType, slots: int) -> None:
    with pytest.raises(ValueError):
        impl.SharedCounters(slots)


@pytest.mark.parametrize("op", [
    lambda c, i: c.load(i), lambda c, i: c.store(i, 1), lambda c, i: c.add(i, 1),
    lambda c, i: c.cas(i, 0, 1), lambda c, i: c.try_acquire(i, 1),
], ids=["load", "store", "add", "cas", "try_acquire"])
@pytest.mark.parametrize("index", [2, 100, -1])
def test_out_of_range_slots_raise(impl: ModuleType, op: Callable[..., object],
                                  index: int) -> None:
    c = impl.SharedCounters(2)
    with pytest.raises(IndexError):
        op(c, index)
    assert [c.load(0), c.load(1)] == [0, 0]


@given(st.lists(st.tuples(st.sampled_from(["store", "add", "cas", "try"]), INT64, INT64),
                max_size=30))
def test_twins_agree(ops: list[tuple[str, int, int]]) -> None:
    twins = [importlib.import_module(f"hapax._core._shm_{n}").SharedCounters(1)
             for n in (["py"] if NO_EXTENSIONS else ["c", "py"])]
    for op, a, b in ops:
        results = []
        for c in twins:
            if op == "store":
                results.append(c.store(0, a))
            elif op == "add":
                results.append(c.add(0, a >> 8))
            elif op == "cas":
                results.append(c.cas(0, c.load(0) if a % 2 else b, a))
            else:
                results.append(c.try_acquire(0, a))
            results[-1] = (results[-1], c.load(0))
        assert len(set(results)) == 1, (op, results)


# -- atomicity across processes ---------------------------------------------------------

CHILDREN = 4
ROUNDS = 2000


def in_children(work: Callable[[int], int]) -> list[int]:
    """Run ``work(child_index)`` in CHILDREN forked processes at once; their exit codes
    carry a small result back."""
    pids = []
    for n in range(CHILDREN):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 255
            try:
                code = work(n)
            finally:
                os._exit(code)
        pids.append(pid)
    codes = []
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), status
        codes.append(os.WEXITSTATUS(status))
    return codes


def test_add_is_atomic_across_processes(impl: ModuleType) -> None:
    c = impl.SharedCounters(2)

    def work(n: int) -> int:
        for _ in range(ROUNDS):
            c.add(0, 1)
            c.add(1, n + 1)
        return 0

    assert in_children(work) == [0] * CHILDREN
    assert c.load(0) == CHILDREN * ROUNDS
    assert c.load(1) == ROUNDS * sum(range(1, CHILDREN + 1))


def test_cas_increments_are_atomic_across_processes(impl: ModuleType) -> None:
    c = impl.SharedCounters(1)

    def work(n: int) -> int:
        for _ in range(ROUNDS):
            while True:
                cur = c.load(0)
                if c.cas(0, cur, cur + 1):
                    break
        return 0

    assert in_children(work) == [0] * CHILDREN
    assert c.load(0) == CHILDREN * ROUNDS


def test_try_acquire_never_exceeds_the_limit_across_processes(impl: ModuleType) -> None:
    c = impl.SharedCounters(2)
    limit = 1500  # fewer than the CHILDREN * ROUNDS attempts: most of them must fail

    def work(n: int) -> int:
        wins = sum(c.try_acquire(0, limit) for _ in range(ROUNDS))
        c.add(1, wins)  # what each child believes it got
        return 0

    assert in_children(work) == [0] * CHILDREN
    assert c.load(0) == limit
    assert c.load(1) == limit  # no two children were granted the same unit
