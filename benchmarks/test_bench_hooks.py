"""Hook dispatch cost against the number of plugins.

Hapax resolves each hook once into a :class:`hapax.pipeline.hooks.Stage` that awaits
async implementations and honours first-result semantics; the pipeline skips a stage
with no implementation without calling it.  Here:

* ``Stage`` over 0, 1, 5 and 20 plugins implementing ``hapax_transform_request`` (every
  implementation runs) and ``hapax_authenticate`` returning ``None`` (first-result hook
  where nobody answers, so every implementation runs too), sync and async;
* ``Stage.run`` — what the pipeline calls when every implementation of a stage is sync
  (no coroutine, no ``await``), over the same sync plugins;
* the pipeline's guard for an empty stage (``if stage.impls: ...``);
* pluggy's own ``pm.hook.<name>(...)`` for the same sync plugins, for comparison (pluggy
  cannot await, so it has no async row).

Baseline of each group: pluggy with one plugin.  Rounds of ``BATCH`` calls inside one
``loop.run_until_complete``; the run's summary gives µs per call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hapax.pipeline.exchange import Exchange
from hapax.pipeline.hooks import PluginManager, Stage

BATCH = 2000
COUNTS = (0, 1, 5, 20)
HOOKS = ("hapax_transform_request", "hapax_authenticate")


def make_plugin(hook: str, is_async: bool) -> Any:
    """A plugin object implementing ``hook`` with a body that does (nearly) nothing."""
    async def async_impl(self: Any, exchange: Any) -> None:
        return None

    def sync_impl(self: Any, exchange: Any) -> None:
        return None

    impl: Any = async_impl if is_async else sync_impl
    impl.__name__ = hook
    return type("BenchPlugin", (), {hook: impl})()


def manager(hook: str, count: int, is_async: bool) -> PluginManager:
    pm = PluginManager()
    for i in range(count):
        pm.register(make_plugin(hook, is_async), name=f"bench-{i}")
    pm.check_pending()
    return pm


def exchange() -> Exchange:
    return Exchange("POST", "/v1/chat/completions", {"authorization": "Bearer x"}, b"{}")


def _params() -> list[Any]:
    out = []
    for hook in HOOKS:
        short = hook[len("hapax_"):]
        for kind in ("sync", "async"):
            for n in COUNTS:
                if n == 0 and kind == "async":
                    continue  # no implementation: nothing is sync or async
                out.append(pytest.param(hook, kind == "async", n, id=f"{short}-{kind}-{n}"))
    return out


@pytest.mark.parametrize("hook,is_async,count", _params())
def test_stage(loop: asyncio.AbstractEventLoop, measure: Any, benchmark: Any, hook: str,
               is_async: bool, count: int) -> None:
    benchmark.group = f"hooks: {hook}"
    stage = Stage(manager(hook, count, is_async), hook)
    assert len(stage.impls) == count
    ex = exchange()

    async def batch() -> None:
        for _ in range(BATCH):
            await stage(ex)

    measure(lambda: loop.run_until_complete(batch()), ops=BATCH)


@pytest.mark.parametrize("hook,count", [
    pytest.param(h, n, id=f"{h[len('hapax_'):]}-run-{n}") for h in HOOKS for n in COUNTS])
def test_stage_run(measure: Any, benchmark: Any, hook: str, count: int) -> None:
    """A stage whose implementations are all sync, called without a coroutine."""
    benchmark.group = f"hooks: {hook}"
    stage = Stage(manager(hook, count, False), hook)
    assert stage.sync
    ex = exchange()

    def batch() -> None:
        for _ in range(BATCH):
            stage.run(ex)

    measure(batch, ops=BATCH)


@pytest.mark.parametrize("hook", HOOKS, ids=[h[len("hapax_"):] for h in HOOKS])
def test_stage_skipped_when_empty(loop: asyncio.AbstractEventLoop, measure: Any,
                                  benchmark: Any, hook: str) -> None:
    """What the pipeline pays for a stage nobody implements: one truth test."""
    benchmark.group = f"hooks: {hook}"
    stage = Stage(manager(hook, 0, False), hook)
    ex = exchange()

    async def batch() -> None:
        for _ in range(BATCH):
            if stage.impls:
                await stage(ex)

    measure(lambda: loop.run_until_complete(batch()), ops=BATCH)


@pytest.mark.parametrize("hook,count", [
    pytest.param(h, n, id=f"{h[len('hapax_'):]}-sync-{n}") for h in HOOKS for n in COUNTS])
def test_pluggy(measure: Any, benchmark: Any, hook: str, count: int) -> None:
    benchmark.group = f"hooks: {hook}"
    caller = getattr(manager(hook, count, False).hook, hook)
    ex = exchange()

    def batch() -> None:
        for _ in range(BATCH):
            caller(exchange=ex)

    measure(batch, ops=BATCH, baseline=count == 1)
