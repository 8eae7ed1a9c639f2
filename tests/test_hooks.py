"""The hook dispatcher (hapax.pipeline.hooks.Stage): a stage whose implementations are
all sync runs through ``Stage.run`` without a coroutine, with the same semantics as
awaiting the stage (order, first result, chaining, error wrapping)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hapax.config import from_dict
from hapax.errors import BadRequest, PluginError
from hapax.pipeline.gateway import Gateway
from hapax.pipeline.hooks import PluginManager, Stage


def stage_of(hook: str, *plugins: Any) -> Stage:
    pm = PluginManager()
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"p{i}")
    pm.check_pending()
    return Stage(pm, hook)


def both(stage: Stage, *args: Any, chain: bool = False) -> Any:
    """``stage.run(...)``, checked against awaiting the stage."""
    assert stage.sync
    awaited = asyncio.run(stage(*args, chain=chain))
    ran = stage.run(*args, chain=chain)
    assert ran == awaited
    return ran


class Answer:
    def __init__(self, value: Any, calls: list[str], name: str) -> None:
        self.value, self.calls, self.name = value, calls, name

    def hapax_authenticate(self, exchange: Any) -> Any:
        self.calls.append(self.name)
        return self.value


def test_first_result_wins_and_later_implementations_are_not_called() -> None:
    calls: list[str] = []
    # pluggy calls the last registered first.
    stage = stage_of("hapax_authenticate", Answer("late", calls, "a"),
                     Answer("first", calls, "b"), Answer(None, calls, "c"))
    assert both(stage, object()) == "first"
    assert calls == ["c", "b"] * 2


def test_no_result_is_none() -> None:
    calls: list[str] = []
    stage = stage_of("hapax_authenticate", Answer(None, calls, "a"))
    assert both(stage, object()) is None
    assert both(stage_of("hapax_authenticate"), object()) is None


class Chunk:
    def __init__(self, add: str | None) -> None:
        self.add = add

    def hapax_transform_chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        if self.add is None:
            return None
        return {**chunk, "seen": [*chunk.get("seen", []), self.add]}


def test_chain_passes_each_result_on_and_picks_the_arguments() -> None:
    stage = stage_of("hapax_transform_chunk", Chunk("a"), Chunk(None), Chunk("b"))
    assert stage.impls[0][2] is not None  # the implementations take `chunk` only
    assert both(stage, object(), {"x": 1}, chain=True) == {"x": 1, "seen": ["b", "a"]}
    assert both(stage_of("hapax_transform_chunk"), object(), {"x": 1}, chain=True) == {"x": 1}


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def hapax_authenticate(self, exchange: Any) -> Any:
        raise self.exc


def test_a_plugin_exception_becomes_a_plugin_error_and_a_request_error_passes() -> None:
    stage = stage_of("hapax_authenticate", Failing(KeyError("boom")))
    with pytest.raises(PluginError, match=r"plugin 'p0' failed in hapax_authenticate: "
                                          r"KeyError: 'boom'") as info:
        stage.run(object())
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(PluginError, match=r"plugin 'p0' failed in hapax_authenticate: "
                                          r"KeyError: 'boom'"):
        asyncio.run(stage(object()))  # awaited: the same error
    refusal = BadRequest("no")
    with pytest.raises(BadRequest) as caught:
        stage_of("hapax_authenticate", Failing(refusal)).run(object())
    assert caught.value is refusal


class Async:
    async def hapax_authenticate(self, exchange: Any) -> Any:
        return "async"


def test_one_async_implementation_makes_the_stage_async() -> None:
    calls: list[str] = []
    stage = stage_of("hapax_authenticate", Async(), Answer(None, calls, "a"))
    assert not stage.sync and not stage.all_sync
    assert asyncio.run(stage(object())) == "async"


class Notice:
    def __init__(self, seen: list[str], name: str) -> None:
        self.seen, self.name = seen, name

    def hapax_request_received(self, exchange: Any) -> None:
        self.seen.append(self.name)


class AsyncNotice(Notice):
    async def hapax_request_received(self, exchange: Any) -> None:  # type: ignore[override]
        self.seen.append(self.name)


def test_start_runs_a_sync_stage_now_and_hands_back_an_async_one() -> None:
    seen: list[str] = []
    assert stage_of("hapax_request_received", Notice(seen, "a")).start(object()) is None
    assert seen == ["a"]  # ran, no coroutine
    pending = stage_of("hapax_request_received", Notice(seen, "b"),
                       AsyncNotice(seen, "c")).start(object())
    assert pending is not None and seen == ["a"]  # nothing ran yet
    asyncio.run(pending)
    assert seen == ["a", "c", "b"]  # in the stage's order


def gateway(access_log: str) -> Gateway:
    return Gateway(from_dict({"server": {"access_log": {"format": access_log}},
                              "providers": {"m": {"kind": "mock"}},
                              "models": {"a": {"targets": [{"provider": "m"}]}}}, "<test>"))


def test_the_access_log_leaves_the_after_response_stage_when_off() -> None:
    assert "hapax.builtins.accesslog" not in gateway("off").hooks.after_response.plugins
    assert "hapax.builtins.accesslog" in gateway("json").hooks.after_response.plugins
