"""Soak tests (bounded, about 30 s in all): failover under sustained concurrent load.

Through the real server, with the official ``openai`` SDK (its own retries off) on
several threads, half the requests streamed:

* a primary failing 30 % of its calls at random (500, connection reset, 429) and a
  healthy fallback: every client request succeeds, every stream ends with ``[DONE]``;
* a primary that never answers, a 0.5 s time-to-first-byte timeout and a fallback that
  answers in 0.2 s: every request succeeds, none waits much longer than 0.5 + 0.2 s
  (a circuit breaker opening on the dead primary only makes later requests faster).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from helpers import GatewayFactory, two_targets

from hapax.testing import GatewayThread
from hapax.testing.fake_provider import FakeProvider, RecordedRequest, Reply, at_random

pytestmark = pytest.mark.slow

#: How long the clients keep sending, per test (the file must stay under ~35 s).
RANDOM_FAILURES_SECONDS = 18.0
HANGING_PRIMARY_SECONDS = 7.0


@dataclass
class Outcome:
    """What the clients saw."""

    served: Counter[str] = field(default_factory=Counter)  # answers per provider
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return sum(self.served.values()) + len(self.failures)


def one_request(client: openai.OpenAI, prompt: str, stream: bool) -> str | None:
    """One chat completion; the provider that answered (``x-hapax-provider``).  Raises
    AssertionError when the answer is not the complete, right one."""
    messages: Any = [{"role": "user", "content": prompt}]
    expected = f"Fake answer to: {prompt}"
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model="m", messages=messages)
        assert raw.parse().choices[0].message.content == expected
        return raw.headers.get("x-hapax-provider")
    with client.chat.completions.with_streaming_response.create(
            model="m", messages=messages, stream=True) as resp:
        # The raw events: the SDK would hide a missing [DONE].
        data = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
        provider = resp.headers.get("x-hapax-provider")
    assert data and data[-1] == "[DONE]", data[-2:]
    text = ""
    for payload in data[:-1]:
        chunk = openai.types.chat.ChatCompletionChunk.model_validate_json(payload)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == expected, text
    return provider


def run_clients(gw: GatewayThread, threads: int, seconds: float) -> Outcome:
    """``threads`` clients sending back to back for ``seconds`` (every other request
    streamed); a request never takes more than the clients' 15 s timeout."""
    outcome = Outcome()
    end = time.monotonic() + seconds

    def client_loop(n: int) -> None:
        client = openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0,
                               timeout=15)
        try:
            i = 0
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    provider = one_request(client, f"hello {n}.{i}", stream=bool(i % 2))
                except (openai.APIError, AssertionError) as exc:
                    with outcome.lock:
                        outcome.failures.append(f"client {n} request {i}: {exc!r}")
                else:
                    with outcome.lock:
                        outcome.served[provider or "?"] += 1
                        outcome.latencies.append(time.monotonic() - started)
                i += 1
        finally:
            client.close()

    workers = [threading.Thread(target=client_loop, args=(n,), name=f"soak-client-{n}")
               for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 30)
    assert not any(w.is_alive() for w in workers), "a client is stuck"
    return outcome


def kinds(requests: list[RecordedRequest]) -> Counter[str]:
    """How the fake answered its requests: ``ok``, ``reset`` or the error status."""
    out: Counter[str] = Counter()
    for r in requests:
        reply = r.reply
        out["reset" if reply and reply.reset else
            "ok" if reply is None or reply.status == 200 else str(reply.status)] += 1
    return out


def test_a_primary_failing_30_percent_at_random(hapax_gateway: GatewayFactory,
                                                primary: FakeProvider,
                                                secondary: FakeProvider) -> None:
    primary.script = at_random(0.3, [Reply(status=500), Reply(reset=True), Reply(status=429)],
                               seed=20261126)
    # Without its breaker, the primary takes every request's first attempt: the test is
    # about retries and failover (at 30 %, five failures in a row are frequent enough
    # that the breaker would keep the primary out of the soak most of the time).
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url,
                                   provider={"breaker": "off"}))
    outcome = run_clients(gw, threads=8, seconds=RANDOM_FAILURES_SECONDS)
    seen = kinds(primary.requests)
    print(f"\nsoak (random failures): {outcome.requests} client requests, served by "
          f"{dict(outcome.served)}; primary saw {len(primary.requests)} calls "
          f"{dict(seen)}, secondary saw {len(secondary.requests)}")
    assert outcome.failures == []
    assert outcome.requests >= 100  # a real soak, not a handful of requests
    # Every kind of failure happened, and some were failed over.
    assert seen["500"] and seen["429"] and seen["reset"] and seen["ok"]
    assert outcome.served["primary"] > outcome.served["secondary"] > 0
    assert len(secondary.requests) == outcome.served["secondary"]


def test_a_hanging_primary_costs_at_most_the_first_byte_timeout(
        hapax_gateway: GatewayFactory, primary: FakeProvider,
        secondary: FakeProvider) -> None:
    first_byte, fallback = 0.5, 0.2
    primary.default = Reply(hang=True)
    secondary.default = Reply(delay=fallback)
    gw = hapax_gateway(two_targets(primary.base_url, secondary.base_url, retries=0,
                                   provider={"timeouts": {"first_byte": f"{first_byte}s"}}))
    outcome = run_clients(gw, threads=4, seconds=HANGING_PRIMARY_SECONDS)
    print(f"\nsoak (hanging primary): {outcome.requests} client requests, slowest "
          f"{max(outcome.latencies, default=0):.2f}s; primary saw {len(primary.requests)} "
          f"calls, secondary {len(secondary.requests)}")
    assert outcome.failures == []
    assert outcome.requests >= 4 * 3
    assert outcome.served == Counter(secondary=outcome.requests)
    assert len(primary.requests) >= 4  # the first requests did wait for the primary...
    assert max(outcome.latencies) <= first_byte + fallback + 1.5  # ...no longer than this
