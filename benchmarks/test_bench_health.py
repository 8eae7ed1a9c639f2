"""What target health and load-balanced routing cost per request.

* ``health`` group — the bookkeeping one successful attempt pays, alone (the executor's
  ``allow``, ``_attempt``'s outstanding count, latency average, breaker window and attempt
  counter), against an empty loop of the same length as the baseline.
* ``routing`` group — ``Gateway.handle`` (canned provider, no I/O, as in
  test_bench_pipeline.py) for a model with one plain target (precomputed plan: the
  baseline), with the breaker off, and for models with a two-member group under each
  ``balance`` strategy (plan built per request).

Run: ``pytest benchmarks/test_bench_health.py --benchmark-only``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_bench_pipeline import BATCH, CannedPlugin, chat_body, handle_batch, headers_for

from hapax.config import from_dict
from hapax.pipeline.gateway import Gateway
from hapax.types import Target


def make_gateway(loop: asyncio.AbstractEventLoop) -> Gateway:
    group = [{"provider": "canned"}, {"provider": "canned2", "weight": 2}]
    raw: dict[str, Any] = {
        "server": {"access_log": {"format": "off"}},
        "providers": {"canned": {"kind": "canned"}, "canned2": {"kind": "canned"},
                      "unguarded": {"kind": "canned", "breaker": "off"}},
        "models": {
            "plain": {"targets": [{"provider": "canned"}]},
            "breaker-off": {"targets": [{"provider": "unguarded"}]},
            **{f"group-{b}": {"targets": [{"group": group, "balance": b}]}
               for b in ("weighted", "least_outstanding", "p2c")},
        },
    }
    gw = Gateway(from_dict(raw, "<bench>"), plugins=[("bench-canned", CannedPlugin())])
    loop.run_until_complete(gw.start())
    return gw


@pytest.mark.benchmark(group="health")
def test_empty_loop(measure: Any) -> None:
    def run() -> None:
        for _ in range(BATCH):
            pass

    measure(run, ops=BATCH, baseline=True)


@pytest.mark.benchmark(group="health")
def test_one_attempt_of_bookkeeping(loop: asyncio.AbstractEventLoop, measure: Any) -> None:
    gw = make_gateway(loop)
    health = gw.health
    target = Target("canned", "plain")

    def run() -> None:
        for _ in range(BATCH):
            health.allow(target)  # the executor
            th = health.targets.get(target) or health.get(target)  # _attempt
            th.outstanding += 1
            if 200 in health.retry_on("plain"):
                th.failure("x")
            else:
                th.success(0.01)
                health.attempts.inc((target.provider, "success"))
            th.outstanding -= 1

    measure(run, ops=BATCH)
    loop.run_until_complete(gw.close())


@pytest.mark.benchmark(group="routing")
@pytest.mark.parametrize("model", ["plain", "breaker-off", "group-weighted",
                                   "group-least_outstanding", "group-p2c"])
def test_handle(loop: asyncio.AbstractEventLoop, measure: Any, model: str) -> None:
    gw = make_gateway(loop)
    body = chat_body(model)
    run = handle_batch(loop, gw, body, headers_for(body, auth=False))
    assert run() == 200
    measure(run, ops=BATCH, baseline=model == "plain")
    loop.run_until_complete(gw.close())
