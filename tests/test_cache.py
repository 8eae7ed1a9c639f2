"""The exact-match response cache (hapax.builtins.cache), through the real server: the
official SDK and raw HTTP against a gateway in front of the fake provider."""

from __future__ import annotations

import http.client
import time
from typing import Any

import orjson
import pytest
from helpers import metric
from openai import OpenAI
from proc import HapaxProcess

from hapax.config import from_dict
from hapax.node import NodeState
from hapax.pipeline.gateway import Gateway
from hapax.testing import GatewayThread, config_for
from hapax.testing.fake_provider import FakeProvider, Reply

HELLO = [{"role": "user", "content": "hello"}]


def cached(fake: FakeProvider, ttl: str = "10m", **extra: Any) -> dict[str, Any]:
    """Aliases ``m`` (cached) and ``plain`` (not)."""
    cfg = config_for(fake.base_url, models=("m", "plain"), **extra)
    cfg["models"]["m"]["cache"] = {"ttl": ttl}
    return cfg


def post(gw: GatewayThread, body: bytes | dict[str, Any], *, key: str | None = None,
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One raw POST to /v1/chat/completions: ``(status, headers, body)``."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"content-type": "application/json", **{k.replace("_", "-"): v
                                                   for k, v in headers.items()}}
    if key is not None:
        hdrs["authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def chat(prompt: str = "hello", model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def test_miss_then_hit_calls_the_provider_once(fake_provider: FakeProvider,
                                               hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    client = OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    first = client.chat.completions.with_raw_response.create(model="m", messages=HELLO)
    second = client.chat.completions.with_raw_response.create(model="m", messages=HELLO)
    assert len(fake_provider.requests) == 1
    assert first.headers["x-hapax-cache"] == "miss"
    assert second.headers["x-hapax-cache"] == "hit"
    # A hit names the provider that served the original answer.
    assert second.headers["x-hapax-provider"] == "fake"
    assert first.http_response.content == second.http_response.content
    assert second.parse().choices[0].message.content == "Fake answer to: hello"
    assert metric(gw, "hapax_cache_requests_total", model="m", result="miss") == 1
    assert metric(gw, "hapax_cache_requests_total", model="m", result="hit") == 1
    assert metric(gw, "hapax_cache_entries") == 1
    assert metric(gw, "hapax_cache_bytes") > len(first.http_response.content)


def test_uncached_alias_is_untouched(fake_provider: FakeProvider, hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    for _ in range(2):
        status, headers, _ = post(gw, chat(model="plain"))
        assert status == 200 and "x-hapax-cache" not in headers
    assert len(fake_provider.requests) == 2


def test_no_cached_alias_means_no_cache_hooks(fake_provider: FakeProvider,
                                              hapax_gateway: Any) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url, models=("m",)))
    hooks = gw.gateway.hooks
    assert not hooks.cache_lookup and not hooks.cache_store


def test_streamed_answer_is_replayed(fake_provider: FakeProvider, hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    miss = post(gw, chat(stream=True))
    hit = post(gw, chat(stream=True))
    assert len(fake_provider.requests) == 1
    assert (miss[0], miss[1]["x-hapax-cache"]) == (200, "miss")
    assert (hit[0], hit[1]["x-hapax-cache"]) == (200, "hit")
    assert hit[1]["content-type"].startswith("text/event-stream")
    assert hit[2] == miss[2] and hit[2].endswith(b"data: [DONE]\n\n")
    # The SDK reassembles the same answer from the replay.
    client = OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=HELLO, stream=True) if c.choices]
    assert "".join(pieces) == "Fake answer to: hello"
    assert len(fake_provider.requests) == 1
    # A streamed and a complete answer are different entries.
    status, headers, _ = post(gw, chat())
    assert (status, headers["x-hapax-cache"]) == (200, "miss")


def test_answers_expire(fake_provider: FakeProvider, hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider, ttl="300ms"))
    assert post(gw, chat())[1]["x-hapax-cache"] == "miss"
    deadline = time.monotonic() + 20
    while True:  # hits until the answer is 300 ms old, then a miss
        result = post(gw, chat())[1]["x-hapax-cache"]
        if result == "miss":
            break
        assert result == "hit"
        assert time.monotonic() < deadline, "the cached answer never expired"
        time.sleep(0.05)
    assert len(fake_provider.requests) == 2


def test_least_recently_used_answers_are_evicted(fake_provider: FakeProvider,
                                                 hapax_gateway: Any) -> None:
    max_bytes = 3000  # room for a few ~600-byte entries
    gw = hapax_gateway(cached(fake_provider, cache={"max_bytes": max_bytes}))
    for i in range(8):
        assert post(gw, chat(f"prompt {i}"))[1]["x-hapax-cache"] == "miss"
        assert post(gw, chat("prompt 0"))[1]["x-hapax-cache"] in ("hit", "miss")
    # "prompt 0" was used after every other one: still held; the oldest others are gone.
    assert post(gw, chat("prompt 0"))[1]["x-hapax-cache"] == "hit"
    assert post(gw, chat("prompt 1"))[1]["x-hapax-cache"] == "miss"
    assert metric(gw, "hapax_cache_evictions_total") >= 4
    assert 0 < metric(gw, "hapax_cache_bytes") <= max_bytes
    assert metric(gw, "hapax_cache_entries") < 8


def test_client_no_cache_refreshes_the_entry(fake_provider: FakeProvider,
                                             hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    fake_provider.queue(Reply(content="old"), Reply(content="new"))
    assert orjson.loads(post(gw, chat())[2])["choices"][0]["message"]["content"] == "old"
    status, headers, body = post(gw, chat(), cache_control="no-cache")
    assert headers["x-hapax-cache"] == "bypass"
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "new"
    status, headers, body = post(gw, chat())
    assert headers["x-hapax-cache"] == "hit"
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "new"
    assert len(fake_provider.requests) == 2
    assert metric(gw, "hapax_cache_requests_total", model="m", result="bypass") == 1


def test_client_no_store_neither_reads_nor_writes(fake_provider: FakeProvider,
                                                  hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    headers = post(gw, chat("a"), cache_control="no-store, max-age=0")[1]
    assert headers["x-hapax-cache"] == "bypass"
    assert post(gw, chat("a"))[1]["x-hapax-cache"] == "miss"  # nothing was stored
    assert post(gw, chat("a"), cache_control="No-Store")[1]["x-hapax-cache"] == "bypass"
    assert len(fake_provider.requests) == 3  # the held answer was not used either
    assert post(gw, chat("a"))[1]["x-hapax-cache"] == "hit"


@pytest.mark.parametrize("scope", ["key", "global"])
def test_keys_share_only_with_a_global_scope(fake_provider: FakeProvider, hapax_gateway: Any,
                                             scope: str) -> None:
    cfg = cached(fake_provider, keys=[{"name": "alice", "key": "sk-alice"},
                                      {"name": "bob", "key": "sk-bob"}])
    cfg["models"]["m"]["fingerprint"] = {"scope": scope}
    gw = hapax_gateway(cfg)
    assert post(gw, chat(), key="sk-alice")[1]["x-hapax-cache"] == "miss"
    assert post(gw, chat(), key="sk-alice")[1]["x-hapax-cache"] == "hit"
    bob = post(gw, chat(), key="sk-bob")[1]["x-hapax-cache"]
    assert bob == ("hit" if scope == "global" else "miss")
    assert len(fake_provider.requests) == (1 if scope == "global" else 2)


def test_same_meaning_hits_and_other_meaning_misses(fake_provider: FakeProvider,
                                                    hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    first = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}'
    spaced = (b'{ "temperature" : 0 ,\n  "messages": [ {"content": "hi", "role": "user"} ],'
              b' "model": "m", "user": "someone" }')  # order, spacing, an ignored field
    assert post(gw, first)[1]["x-hapax-cache"] == "miss"
    assert post(gw, spaced)[1]["x-hapax-cache"] == "hit"
    other = first.replace(b'"temperature":0', b'"temperature":1')
    assert post(gw, other)[1]["x-hapax-cache"] == "miss"
    assert len(fake_provider.requests) == 2


def test_errors_are_never_cached(fake_provider: FakeProvider, hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    fake_provider.queue(Reply(status=400), Reply(status=503))
    status, headers, _ = post(gw, chat())
    assert (status, headers["x-hapax-cache"]) == (400, "miss")
    status, headers, _ = post(gw, chat())
    assert (status, headers["x-hapax-cache"]) == (502, "miss")
    status, headers, _ = post(gw, chat())
    assert (status, headers["x-hapax-cache"]) == (200, "miss")
    assert post(gw, chat())[1]["x-hapax-cache"] == "hit"
    assert len(fake_provider.requests) == 3


def test_incomplete_streams_are_never_cached(fake_provider: FakeProvider,
                                             hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider))
    no_done = [b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n']
    fake_provider.queue(Reply(drop_after_events=2), Reply(events=no_done))
    cut = post(gw, chat(stream=True))
    assert cut[1]["x-hapax-cache"] == "miss" and b"[DONE]" not in cut[2]
    ended_early = post(gw, chat(stream=True))
    assert ended_early[1]["x-hapax-cache"] == "miss" and b"[DONE]" not in ended_early[2]
    whole = post(gw, chat(stream=True))
    assert whole[1]["x-hapax-cache"] == "miss" and whole[2].endswith(b"data: [DONE]\n\n")
    assert post(gw, chat(stream=True))[1]["x-hapax-cache"] == "hit"
    assert len(fake_provider.requests) == 3


def test_a_stream_too_big_for_the_cache_is_not_kept(fake_provider: FakeProvider,
                                                    hapax_gateway: Any) -> None:
    gw = hapax_gateway(cached(fake_provider, cache={"max_bytes": 1000}))
    fake_provider.default = Reply(content="word " * 200, chunks=20)
    for _ in range(2):
        status, headers, body = post(gw, chat(stream=True))
        assert (status, headers["x-hapax-cache"]) == (200, "miss")
        assert body.endswith(b"data: [DONE]\n\n")
    assert len(fake_provider.requests) == 2 and metric(gw, "hapax_cache_entries") == 0


def test_the_store_is_the_nodes(fake_provider: FakeProvider) -> None:
    # Made before the workers fork (NodeState), the store is the same memory in each.
    config = from_dict(cached(fake_provider, cache={"max_bytes": "1MiB"}), "<test>")
    node = NodeState(256, workers=4, cache_bytes=1 << 20)
    gateway = Gateway(config, node=node)
    plugin = gateway.pm.get_plugin("hapax.builtins.cache")
    assert plugin.cache.lru is node.cache_store
    assert node.cache_store.max_bytes == 1 << 20  # the node's whole budget, not a share


def mock_config(max_bytes: int) -> dict[str, Any]:
    return {"server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"}},
            "providers": {"mock": {"kind": "mock"}},
            "models": {"m": {"targets": [{"provider": "mock"}], "cache": {"ttl": "10m"}}},
            "cache": {"max_bytes": max_bytes}}


def _pinned_connections(hp: HapaxProcess) -> dict[int, http.client.HTTPConnection]:
    """Keep-alive connections, one per worker pid (found with /healthz)."""
    host, _, port = hp.url.removeprefix("http://").rpartition(":")
    conns: dict[int, http.client.HTTPConnection] = {}
    for _ in range(200):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/healthz")
        pid = orjson.loads(conn.getresponse().read())["pid"]
        if pid in conns:
            conn.close()
        else:
            conns[pid] = conn
        if len(conns) == 2:
            return conns
    raise AssertionError("the kernel never spread connections over both workers")


@pytest.mark.slow
def test_a_hit_is_shared_by_the_workers(tmp_path: Any) -> None:
    # An answer stored by one worker is a hit in the other: the store is the node's.
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(orjson.dumps(mock_config(1 << 20)))
    with HapaxProcess(path, "--workers", "2") as hp:
        hp.wait_ready(workers=2)
        a, b = _pinned_connections(hp).values()
        try:
            for first, second, prompt in ((a, b, "one"), (b, a, "two")):
                results = []
                for conn in (first, second):
                    conn.request("POST", "/v1/chat/completions", body=orjson.dumps(chat(prompt)),
                                 headers={"content-type": "application/json"})
                    resp = conn.getresponse()
                    body = resp.read()
                    assert resp.status == 200
                    results.append((resp.getheader("x-hapax-cache"), body))
                assert [r[0] for r in results] == ["miss", "hit"]
                assert results[0][1] == results[1][1]
        finally:
            a.close()
            b.close()
