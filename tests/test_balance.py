"""Load-balanced target groups (docs/reliability.md#load-balanced-groups) through the real
server: the openai SDK as client, fake providers as the group's members."""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import HELLO, GatewayFactory, chat, client, wait_for

from hapax.builtins.routing import Group
from hapax.config import from_dict
from hapax.errors import ConfigError
from hapax.testing import GatewayThread
from hapax.testing.fake_provider import FakeProvider, Reply
from hapax.types import Target


@pytest.fixture
def fakes() -> Iterator[list[FakeProvider]]:
    with FakeProvider() as a, FakeProvider() as b, FakeProvider() as c:
        yield [a, b, c]


def group_config(fakes: list[FakeProvider], members: list[dict[str, Any]], balance: str,
                 *, then: list[dict[str, Any]] = (), breaker: Any = None,
                 alias: str = "m") -> dict[str, Any]:
    providers = {name: {"kind": "openai", "base_url": fake.base_url,
                        **({"breaker": breaker} if breaker is not None else {})}
                 for name, fake in zip("abc", fakes, strict=True)}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"}},
        "providers": providers,
        "models": {alias: {"targets": [{"group": members, "balance": balance}, *then],
                           "dedup": "off", "retries": 0}},
    }


def served_by(gw: GatewayThread, model: str = "m") -> str:
    """The provider that served one request."""
    return str(chat(gw, model).headers["x-hapax-provider"])


def test_weighted_distribution_matches_the_weights_exactly(hapax_gateway: GatewayFactory,
                                                           fakes: list[FakeProvider]) -> None:
    gw = hapax_gateway(group_config(fakes, [{"provider": "a", "weight": 3},
                                            {"provider": "b", "model": "m-b", "weight": 1}],
                                    "weighted"))
    served = [served_by(gw) for _ in range(40)]
    assert served.count("a") == 30 and served.count("b") == 10
    assert served[:4] == ["a", "a", "b", "a"]  # smooth: spread out, not a,a,a,b
    assert {r.json["model"] for r in fakes[1].requests} == {"m-b"}
    assert {r.json["model"] for r in fakes[0].requests} == {"m"}


def test_smooth_weighted_round_robin_order() -> None:
    group = Group((("a", None, 5), ("b", None, 1), ("c", None, 1)), "weighted")
    firsts = [group.plan("m", None)[0].provider for _ in range(7)]
    assert firsts == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's example
    plan = group.plan("m", None)
    assert sorted(t.provider for t in plan) == ["a", "b", "c"]  # the rest as fallbacks


def test_least_outstanding_sends_to_the_idle_member(hapax_gateway: GatewayFactory,
                                                    fakes: list[FakeProvider]) -> None:
    a, b, _ = fakes
    a.default = b.default = Reply(delay=3.0)
    gw = hapax_gateway(group_config(fakes, [{"provider": "a"}, {"provider": "b"}],
                                    "least_outstanding"))
    slow: list[str] = []
    worker = threading.Thread(target=lambda: slow.append(served_by(gw)))
    worker.start()
    assert wait_for(lambda: a.active + b.active > 0)
    busy, idle = (a, b) if a.active else (b, a)
    idle.default = Reply()  # the idle member answers at once from now on
    served = [served_by(gw) for _ in range(5)]
    worker.join(10)
    idle_name = "a" if idle is a else "b"
    assert served == [idle_name] * 5  # round-robin would have sent some to the busy one
    assert len(busy.requests) == 1 and slow == ["b" if idle is a else "a"]


def test_p2c_prefers_the_faster_member(hapax_gateway: GatewayFactory,
                                       fakes: list[FakeProvider]) -> None:
    a, b, _ = fakes
    a.default = Reply(delay=0.15)
    gw = hapax_gateway(group_config(fakes, [{"provider": "a"}, {"provider": "b"}], "p2c"))
    served = [served_by(gw) for _ in range(20)]
    # Each member is tried once (an unmeasured member wins a tie), then the faster wins.
    assert served.count("a") == 1 and served.count("b") == 19


def test_p2c_score_weighs_load_and_latency() -> None:
    from hapax.pipeline.health import TargetHealth

    group = Group((("a", None, 1), ("b", None, 1)), "p2c", rng=random.Random(1))
    stats = [TargetHealth(Target(p, "m"), None, lambda th, s: None) for p in "ab"]
    stats[0].ewma, stats[1].ewma = 0.1, 0.3
    assert group._p2c([0, 1], stats)[0] == 0
    stats[0].outstanding = 3  # 0.1 × 4 > 0.3 × 1
    assert group._p2c([0, 1], stats)[0] == 1


def test_an_open_member_is_skipped(hapax_gateway: GatewayFactory,
                                   fakes: list[FakeProvider]) -> None:
    a, b, _ = fakes
    a.default = Reply(status=500)
    gw = hapax_gateway(group_config(fakes, [{"provider": "a"}, {"provider": "b"}], "weighted",
                                    breaker={"failures": 1, "cooldown": "60s"}))
    served = [served_by(gw) for _ in range(10)]
    assert served == ["b"] * 10
    assert len(a.requests) == 1  # the first request failed over to b; then a was open
    assert len(b.requests) == 10


def test_after_the_group_come_the_next_entries(hapax_gateway: GatewayFactory,
                                               fakes: list[FakeProvider]) -> None:
    a, b, c = fakes
    a.default = b.default = Reply(status=503)
    seen: queue.Queue[Any] = queue.Queue()

    class After:
        def hapax_after_response(self, exchange: Any) -> None:
            seen.put(exchange)

    gw = hapax_gateway(group_config(fakes, [{"provider": "a"}, {"provider": "b"}], "weighted",
                                    then=[{"provider": "c", "model": "m-c"}],
                                    breaker="off"), plugins=[("after", After())])
    assert served_by(gw) == "c"
    ex = seen.get(timeout=10)
    assert sorted(a.target.provider for a in ex.attempts[:2]) == ["a", "b"]
    assert ex.attempts[2].target == Target("c", "m-c")
    assert [a.reason for a in ex.attempts] == ["503", "503", None]


def test_catch_all_group_uses_the_clients_alias(hapax_gateway: GatewayFactory,
                                                fakes: list[FakeProvider]) -> None:
    gw = hapax_gateway(group_config(fakes, [{"provider": "a", "weight": 1},
                                            {"provider": "b", "weight": 1}],
                                    "weighted", alias="*"))
    assert sorted([served_by(gw, "x-1"), served_by(gw, "x-1")]) == ["a", "b"]
    assert fakes[0].requests[0].json["model"] == "x-1"


def test_models_lists_balanced_aliases(hapax_gateway: GatewayFactory,
                                       fakes: list[FakeProvider]) -> None:
    gw = hapax_gateway(group_config(fakes, [{"provider": "a"}], "p2c"))
    c = client(gw)
    assert [m.id for m in c.models.list()] == ["m"]


def problems(targets: list[Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        from_dict({"providers": {"a": {"kind": "mock"}, "b": {"kind": "mock"}},
                   "models": {"m": {"targets": targets}}})
    return list(info.value.problems)


@pytest.mark.parametrize(("targets", "path", "words"), [
    ([{"group": [{"provider": "a"}, {"provider": "b", "weight": 0}]}],
     "models.m.targets[0].group[1].weight", ">= 1"),
    ([{"group": [{"provider": "a"}], "balance": "random"}],
     "models.m.targets[0].balance", "weighted, least_outstanding, p2c"),
    ([{"group": [{"provider": "a", "group": [{"provider": "b"}]}]}],
     "models.m.targets[0].group[0].group", "do not nest"),
    ([{"group": []}], "models.m.targets[0].group", "at least 1"),
    ([{"group": [{"provider": "a"}], "provider": "b"}], "models.m.targets[0].provider",
     "only `group` and `balance`"),
    ([{"provider": "a", "weight": 2}], "models.m.targets[0].weight", "only meaningful in a group"),
    ([{"model": "x"}], "models.m.targets[0].provider", "is required"),
    ([{"group": [{"weight": 2}]}], "models.m.targets[0].group[0].provider", "is required"),
    ([{"provider": "a"}, {"group": [{"provider": "a"}, {"provider": "zz"}]}],
     "models.m.targets[1].group[1].provider", "unknown provider 'zz'"),
    ([{"group": [{"provider": "a", "wieght": 2}]}], "models.m.targets[0].group[0].wieght",
     "did you mean 'weight'"),
])
def test_bad_group_settings_name_the_key(targets: list[Any], path: str, words: str) -> None:
    [(where, message)] = problems(targets)
    assert where == path
    assert words in message


def test_a_stream_is_outstanding_until_it_ends(hapax_gateway: GatewayFactory,
                                               fakes: list[FakeProvider]) -> None:
    a, b, _ = fakes
    a.default = b.default = Reply(chunks=4, chunk_delay=0.4)
    gw = hapax_gateway(group_config(fakes, [{"provider": "a"}, {"provider": "b"}],
                                    "least_outstanding"))
    health = gw.gateway.health
    c = client(gw)
    stream = c.chat.completions.create(model="m", messages=HELLO, stream=True)
    next(iter(stream))  # the stream has started
    busy = "a" if a.requests else "b"
    assert health.get(Target(busy, "m")).outstanding == 1
    assert served_by(gw) != busy  # least_outstanding sees the stream in flight
    assert [chunk for chunk in stream]  # read to the end
    stream.close()
    assert wait_for(lambda: not health.get(Target(busy, "m")).outstanding, timeout=5)


def test_a_deduplicated_follower_is_not_counted_twice(hapax_gateway: GatewayFactory,
                                                      fakes: list[FakeProvider]) -> None:
    a, _, _ = fakes
    a.default = Reply(delay=0.5)
    cfg = group_config(fakes, [{"provider": "a"}], "weighted")
    cfg["models"]["m"]["dedup"] = "always"
    gw = hapax_gateway(cfg)
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda _: served_by(gw), range(3))) == ["a"] * 3
    assert len(a.requests) == 1
    text = gw.gateway.metrics.render().decode()
    assert 'hapax_upstream_attempts_total{outcome="success",provider="a"} 1.0' in text
