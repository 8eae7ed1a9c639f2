"""Admission control through the real server: each provider's max_concurrent, its queue
(full, deadline, expiry), priority classes, fairness between keys, disconnects, streams,
and the limit across ``--workers 2``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from http_raw import RawConn, chat_body, request_bytes
from prometheus_client.parser import text_string_to_metric_families

from hapax.testing import FakeProvider, GatewayThread, Reply, config_for

KEYS = {  # name -> (key, priority)
    "inter": ("hpx-q-inter-5f2a", "interactive"),
    "std-a": ("hpx-q-std-a-81c3", "standard"),
    "std-b": ("hpx-q-std-b-9d0e", "standard"),
    "batch": ("hpx-q-batch-3b7c", "batch"),
}


def queue_config(fake: FakeProvider, *, limit: int = 1, size: int = 100,
                 timeout: str = "30s", model_timeout: str = "600s") -> dict[str, Any]:
    cfg = config_for(fake.base_url, keys=[{"name": n, "key": k, "priority": p}
                                          for n, (k, p) in KEYS.items()])
    cfg["providers"] = {"fake": {"kind": "openai", "base_url": fake.base_url,
                                 "max_concurrent": limit,
                                 "queue": {"size": size, "timeout": timeout}}}
    cfg["models"]["test-model"]["timeout"] = model_timeout
    return cfg


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


async def await_until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def client(gw: GatewayThread, name: str) -> openai.AsyncOpenAI:
    # No retries: a 429 must reach the test.  A timeout: a lost waiter fails, not hangs.
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEYS[name][0], max_retries=0,
                              timeout=30)


async def ask(gw: GatewayThread, name: str, prompt: str) -> str | None:
    async with client(gw, name) as c:
        resp = await c.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": prompt}])
    return resp.choices[0].message.content


async def ask_open(gw: GatewayThread, prompt: str) -> str | None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="-", max_retries=0,
                                  timeout=30) as c:
        resp = await c.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": prompt}])
    return resp.choices[0].message.content


def raw_request(gw: GatewayThread, name: str, prompt: str, **extra: Any) -> RawConn:
    """A request sent on a raw socket (so the test can hang up whenever it likes)."""
    conn = RawConn(gw.port)
    conn.send(request_bytes(body=chat_body(prompt, model="test-model", **extra),
                            headers=[("Authorization", f"Bearer {KEYS[name][0]}")]))
    return conn


def hold(gw: GatewayThread, fake: FakeProvider) -> RawConn:
    """Occupy the provider's only slot with a call that never ends until the client
    hangs up (closing the returned connection frees the slot)."""
    fake.queue(Reply(hang=True))
    conn = raw_request(gw, "std-a", "holder")
    wait_until(lambda: fake.active == 1, "the holder to reach the provider")
    return conn


def prompts(fake: FakeProvider) -> list[str]:
    """The prompts the provider received, in order."""
    return [r.json["messages"][-1]["content"] for r in fake.requests]


def metric(gw: GatewayThread, name: str, **labels: str) -> float:
    text = gw.call(gw.gateway._metrics(None)).body.decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.fixture
def start(fake_provider: FakeProvider,
          hapax_gateway: Callable[..., GatewayThread]) -> Callable[..., GatewayThread]:
    return lambda **kw: hapax_gateway(queue_config(fake_provider, **kw))


# -- waiting, then success ------------------------------------------------------------------


def test_requests_beyond_the_limit_wait_then_succeed(start: Callable[..., GatewayThread],
                                                     fake_provider: FakeProvider) -> None:
    gw = start(limit=2)
    fake_provider.default = Reply(delay=0.1)

    async def main() -> list[str | None]:
        return await asyncio.gather(*(ask(gw, "std-a", f"q{i}") for i in range(8)))

    answers = asyncio.run(main())
    assert answers == [f"Fake answer to: q{i}" for i in range(8)]
    assert len(fake_provider.requests) == 8
    assert fake_provider.max_active <= 2
    queue = gw.gateway.queues["fake"]
    assert (queue.waiting(), queue.in_flight()) == (0, 0)
    assert metric(gw, "hapax_queue_wait_seconds_count", provider="fake") == 8


def test_no_queue_without_max_concurrent(fake_provider: FakeProvider,
                                         hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url))
    assert gw.gateway.queues == {}
    assert metric(gw, "hapax_queue_depth", provider="fake") == 0
    asyncio.run(ask_open(gw, "free"))
    assert metric(gw, "hapax_queue_wait_seconds_count", provider="fake") == 0


# -- refused at once -----------------------------------------------------------------------


def test_full_queue_refuses_at_once_with_retry_after(start: Callable[..., GatewayThread],
                                                     fake_provider: FakeProvider) -> None:
    gw = start(limit=1, size=2)
    queue = gw.gateway.queues["fake"]
    holder = hold(gw, fake_provider)

    async def main() -> tuple[Any, list[str | None]]:
        waiting = [asyncio.ensure_future(ask(gw, "std-b", f"w{i}")) for i in range(2)]
        await await_until(lambda: queue.waiting() == 2, "two waiters")
        with pytest.raises(openai.RateLimitError) as info:
            await ask(gw, "std-b", "one too many")
        assert not any(t.done() for t in waiting)  # the refusal did not wait for them
        holder.close()  # the slot is free: the two waiters are served
        return info.value, await asyncio.gather(*waiting)

    err, answers = asyncio.run(main())
    assert err.status_code == 429
    assert err.body["code"] == "queue_full"
    assert int(err.response.headers["retry-after"]) >= 1
    assert answers == ["Fake answer to: w0", "Fake answer to: w1"]
    assert "one too many" not in prompts(fake_provider)
    assert metric(gw, "hapax_queue_rejections_total", provider="fake",
                  reason="queue_full") == 1
    assert metric(gw, "hapax_queue_depth", provider="fake") == 0
    assert metric(gw, "hapax_provider_in_flight", provider="fake") == 0


def test_wait_beyond_the_deadline_is_refused_at_once(start: Callable[..., GatewayThread],
                                                     fake_provider: FakeProvider) -> None:
    # The model's timeout (2.5s) is the deadline, not queue.timeout (30s).  One call of
    # ~1s measures the drain rate: 1 slot / ~1s.  With the slot held, the 1st and 2nd
    # waiters expect ~1s and ~2s (< 2.5s) and queue; the 3rd expects ~3s: refused.
    gw = start(limit=1, timeout="30s", model_timeout="2500ms")
    queue = gw.gateway.queues["fake"]
    fake_provider.queue(Reply(delay=1.0))
    assert asyncio.run(ask(gw, "std-a", "measure")) == "Fake answer to: measure"
    service = queue.service_time()
    assert service is not None and 1.0 <= service < 1.25
    holder = hold(gw, fake_provider)

    async def main() -> tuple[Any, list[str | None]]:
        waiting = []
        for i in range(2):
            waiting.append(asyncio.ensure_future(ask(gw, "std-b", f"w{i}")))
            await await_until(lambda n=i + 1: queue.waiting() == n, f"{i + 1} waiters")
        with pytest.raises(openai.RateLimitError) as info:
            await ask(gw, "std-b", "too late")
        holder.close()
        return info.value, await asyncio.gather(*waiting)

    err, answers = asyncio.run(main())
    assert err.body["code"] == "queue_timeout"
    assert int(err.response.headers["retry-after"]) >= 1
    assert answers == ["Fake answer to: w0", "Fake answer to: w1"]
    assert "too late" not in prompts(fake_provider)
    assert metric(gw, "hapax_queue_rejections_total", provider="fake",
                  reason="queue_timeout") == 1


def test_waiter_whose_deadline_passes_gets_429(start: Callable[..., GatewayThread],
                                               fake_provider: FakeProvider) -> None:
    gw = start(limit=1, timeout="300ms")  # no call finished yet: no estimate, it queues
    queue = gw.gateway.queues["fake"]
    holder = hold(gw, fake_provider)
    with pytest.raises(openai.RateLimitError) as info:
        asyncio.run(ask(gw, "std-b", "patient"))
    assert info.value.body["code"] == "queue_timeout"
    assert "retry-after" in info.value.response.headers
    assert (queue.waiting(), queue.in_flight()) == (0, 1)  # the holder still has its slot
    assert metric(gw, "hapax_queue_rejections_total", provider="fake",
                  reason="queue_expired") == 1
    holder.close()
    wait_until(lambda: queue.in_flight() == 0, "the holder's slot to be released")
    assert prompts(fake_provider) == ["holder"]


# -- order under contention --------------------------------------------------------------


def test_interactive_is_served_before_batch(start: Callable[..., GatewayThread],
                                            fake_provider: FakeProvider) -> None:
    gw = start(limit=1)
    queue = gw.gateway.queues["fake"]
    holder = hold(gw, fake_provider)

    async def main() -> None:
        tasks = []
        for name, label in [("batch", "b0"), ("batch", "b1"), ("batch", "b2"),
                            ("inter", "i0"), ("inter", "i1"), ("inter", "i2")]:
            tasks.append(asyncio.ensure_future(ask(gw, name, label)))
            n = len(tasks)
            await await_until(lambda n=n: queue.waiting() == n, f"{n} waiters")
        holder.close()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert prompts(fake_provider) == ["holder", "i0", "i1", "i2", "b0", "b1", "b2"]
    assert fake_provider.max_active == 1


def test_keys_of_one_class_take_turns(start: Callable[..., GatewayThread],
                                      fake_provider: FakeProvider) -> None:
    gw = start(limit=1)
    queue = gw.gateway.queues["fake"]
    holder = hold(gw, fake_provider)

    async def main() -> None:
        tasks = []
        for name, label in [*[("std-a", f"a{i}") for i in range(10)],
                            ("std-b", "b0"), ("std-b", "b1")]:
            tasks.append(asyncio.ensure_future(ask(gw, name, label)))
            n = len(tasks)
            await await_until(lambda n=n: queue.waiting() == n, f"{n} waiters")
        holder.close()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    served = prompts(fake_provider)[1:]
    # Round-robin: the noisy key's line does not push the other key's two to the end.
    assert served[:4] == ["a0", "b0", "a1", "b1"]
    assert served[4:] == [f"a{i}" for i in range(2, 10)]


# -- slots are released exactly once --------------------------------------------------------


def test_client_leaving_the_queue_frees_its_place_and_no_slot(
        start: Callable[..., GatewayThread], fake_provider: FakeProvider) -> None:
    gw = start(limit=1)
    queue = gw.gateway.queues["fake"]
    holder = hold(gw, fake_provider)
    leaver = raw_request(gw, "std-b", "leaver")
    wait_until(lambda: queue.waiting() == 1, "the waiter")
    leaver.close()
    wait_until(lambda: queue.waiting() == 0, "the waiter to leave")
    assert queue.in_flight() == 1  # still the holder's, nobody else's
    holder.close()
    wait_until(lambda: queue.in_flight() == 0, "the holder's slot")
    assert asyncio.run(ask(gw, "std-b", "after")) == "Fake answer to: after"
    assert prompts(fake_provider) == ["holder", "after"]  # the leaver never went upstream
    assert queue.in_flight() == 0
    assert fake_provider.max_active == 1


def test_stream_holds_its_slot_until_it_ends(start: Callable[..., GatewayThread],
                                             fake_provider: FakeProvider) -> None:
    gw = start(limit=1)
    queue = gw.gateway.queues["fake"]
    fake_provider.queue(Reply(chunks=4, stall_after_events=2))  # open, silent after 2
    stream = raw_request(gw, "std-a", "streamer", stream=True)
    head = stream.read_head()
    assert head.status == 200
    assert stream.read_chunk().startswith(b"data: ")  # the stream has started
    later = raw_request(gw, "std-b", "later")
    wait_until(lambda: queue.waiting() == 1, "the second request to wait")
    assert queue.in_flight() == 1 and prompts(fake_provider) == ["streamer"]
    stream.close()  # the stream is abandoned: its slot goes to the waiter
    resp = later.read_response()
    later.close()
    assert resp.status == 200
    assert prompts(fake_provider) == ["streamer", "later"]
    wait_until(lambda: queue.in_flight() == 0, "every slot released")

    async def complete_stream() -> str:
        async with client(gw, "std-a") as c:
            chunks = await c.chat.completions.create(
                model="test-model", stream=True,
                messages=[{"role": "user", "content": "whole"}])
            return "".join([ch.choices[0].delta.content or "" async for ch in chunks
                            if ch.choices])

    assert asyncio.run(complete_stream()) == "Fake answer to: whole"
    wait_until(lambda: queue.in_flight() == 0, "the finished stream's slot")
    assert fake_provider.max_active == 1


# -- exact across workers --------------------------------------------------------------------


@pytest.mark.slow
def test_max_concurrent_is_exact_across_two_workers(tmp_path: Path,
                                                    fake_provider: FakeProvider) -> None:
    from proc import HapaxProcess

    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"""\
server: {{host: 127.0.0.1, access_log: {{format: "off"}}}}
providers:
  fake:
    kind: openai
    base_url: {fake_provider.base_url}
    max_concurrent: 2
    queue: {{size: 100, timeout: 60s}}
models:
  test-model: {{targets: [{{provider: fake}}]}}
""")
    fake_provider.default = Reply(delay=0.1)
    with HapaxProcess(cfg, "--workers", "2") as hp:
        hp.wait_ready(workers=2)

        async def main() -> list[str | None]:
            async def one(i: int) -> str | None:
                # A client per request: new connections spread over both workers.
                async with openai.AsyncOpenAI(base_url=hp.base_url, api_key="-",
                                              max_retries=0, timeout=30) as c:
                    r = await c.chat.completions.create(
                        model="test-model", messages=[{"role": "user", "content": f"q{i}"}])
                return r.choices[0].message.content

            return await asyncio.gather(*(one(i) for i in range(16)))

        try:
            answers = asyncio.run(main())
        except Exception as exc:  # say what the gateway saw
            raise AssertionError(f"{exc!r}; gateway stderr:\n{hp.stderr}") from exc
        assert answers == [f"Fake answer to: q{i}" for i in range(16)]
    assert len(fake_provider.requests) == 16
    assert fake_provider.max_active <= 2


@pytest.mark.slow
def test_slots_of_a_killed_worker_are_given_back(tmp_path: Path,
                                                 fake_provider: FakeProvider) -> None:
    import os
    import signal

    from proc import HapaxProcess, pid_alive

    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"""\
server: {{host: 127.0.0.1, access_log: {{format: "off"}}}}
providers:
  fake:
    kind: openai
    base_url: {fake_provider.base_url}
    max_concurrent: 1
    queue: {{size: 10, timeout: 2s}}
models:
  test-model: {{targets: [{{provider: fake}}]}}
""")
    with HapaxProcess(cfg, "--workers", "2") as hp:
        hp.wait_ready(workers=2)
        fake_provider.queue(Reply(hang=True))
        holder = RawConn(hp.port)
        holder.send(request_bytes(body=chat_body("holder", model="test-model")))
        wait_until(lambda: fake_provider.active == 1, "the holder to reach the provider")
        # One of the two workers holds the only slot: kill both (one after the other,
        # each replaced by the supervisor); the replacement gives back what it held.
        for victim in hp.children():
            os.kill(victim, signal.SIGKILL)
            hp.wait_stderr(rf"\(pid {victim}\) exited with signal 9; restarting")
            wait_until(lambda v=victim: not pid_alive(v), "the victim to be gone")
        hp.wait_ready(workers=2)
        holder.close()
        hp.wait_stderr(r"gave back what worker pid \d+ held when it died")

        async def main() -> str | None:
            async with openai.AsyncOpenAI(base_url=hp.base_url, api_key="-", max_retries=0,
                                          timeout=30) as c:
                r = await c.chat.completions.create(
                    model="test-model", messages=[{"role": "user", "content": "after"}])
            return r.choices[0].message.content

        # A leaked slot would leave this request waiting until its 2s deadline (429).
        assert asyncio.run(main()) == "Fake answer to: after"
