"""The rate-limit plugin's cost per request, in-process.

``ratelimit`` group — one request's admission (the resolved ``hapax_admit`` stage, as
``Gateway.handle`` awaits it) plus its ``hapax_after_response`` (the token correction from
the provider's usage), for a gateway key with ``rpm`` and ``tpm`` limits that are never
reached (the load test's configuration, ``benchmarks/load/servers.py``):

* ``fast``: the built-in plugin on the in-node limiter (``NodeLimiter.fast_path``: one
  compiled ``GCRAGroup.charge``, headers included, in a synchronous hook);
* ``generic``: the same limits through the abstract ``Limiter`` interface only
  (``acquire`` -> ``LimitState`` list -> headers in Python, an ``async`` hook), as
  another store would be used.  Baseline.

Both run on the core the process selected (compiled unless ``HAPAX_NO_EXTENSIONS``; the
core's own compiled-vs-pure figures are in ``test_bench_core_gcra.py``).  Rounds of
``BATCH`` requests inside one ``loop.run_until_complete``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_bench_pipeline import chat_body

from hapax.builtins.ratelimit import Plugin
from hapax.config import from_dict
from hapax.limiter import Limiter
from hapax.pipeline.exchange import Exchange
from hapax.pipeline.gateway import Gateway
from hapax.testing.limiters import InterfaceOnly
from hapax.types import Principal, RoutePlan

BATCH = 2000
BODY = chat_body("bench-stub")
USAGE = {"prompt_tokens": 57, "completion_tokens": 11, "total_tokens": 68}


class GenericPlugin(Plugin):
    def make_limiter(self, gateway: Any) -> Limiter:
        return InterfaceOnly(super().make_limiter(gateway))


def make_gateway(loop: asyncio.AbstractEventLoop, plugin: Plugin,
                 monkeypatch: pytest.MonkeyPatch) -> Gateway:
    config = from_dict({
        "server": {"access_log": {"format": "off"}},
        "providers": {"mock": {"kind": "mock"}},
        "models": {"bench-stub": {"targets": [{"provider": "mock"}]}},
        "keys": [{"name": "bench", "key": "sk-bench-key",
                  "limits": {"rpm": 10_000_000, "tpm": 1_000_000_000}}],
    }, "<bench>")
    with monkeypatch.context() as m:  # the plugin under test instead of the built-in
        m.setenv("HAPAX_BLOCK_PLUGINS", "hapax.builtins.ratelimit")
        gw = Gateway(config, plugins=[("bench-ratelimit", plugin)])
    loop.run_until_complete(gw.start())
    return gw


@pytest.mark.benchmark(group="ratelimit")
@pytest.mark.parametrize("path", ["fast", "generic"])
def test_admit_and_correct(loop: asyncio.AbstractEventLoop, measure: Any,
                           monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    plugin = Plugin() if path == "fast" else GenericPlugin()
    gw = make_gateway(loop, plugin, monkeypatch)
    admit = gw.hooks.admit
    assert admit.plugins == (["bench-ratelimit"] if path == "fast" else
                             ["bench-ratelimit", "bench-ratelimit.acquire"])
    sync = getattr(admit, "sync", False)
    after = plugin.hapax_after_response
    ex = Exchange("POST", "/v1/chat/completions", {}, BODY)
    ex.principal = Principal("bench")
    assert ex.json  # parsed before admission, as in the pipeline
    ex.attempts = [object()]
    ex.status = 200
    plan = RoutePlan("bench-stub", ())

    async def batch() -> None:
        for _ in range(BATCH):
            ex.response_headers = []
            ex.state = {}
            ex.usage = None
            # As Gateway.handle calls the stage: without a coroutine when it can.
            denial = admit.run(ex, plan) if sync else await admit(ex, plan)
            if denial is not None:
                raise AssertionError("refused")
            ex.usage = USAGE
            after(ex)

    loop.run_until_complete(batch())
    assert [n for n, _ in ex.response_headers][:2] == [b"x-ratelimit-limit-requests",
                                                       b"x-ratelimit-remaining-requests"]
    assert all((e[1] is not None) == (path == "fast")
               for e in plugin._entries["bench"].values())
    measure(lambda: loop.run_until_complete(batch()), ops=BATCH, baseline=path == "generic")
    loop.run_until_complete(gw.close())
