"""The access log (json, text, off, to a file) and the Prometheus /metrics endpoint."""

from __future__ import annotations

import json
import re
import socket
import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from proc import HapaxProcess, get
from prometheus_client.parser import text_string_to_metric_families

from hapax.testing import Reply, config_for

GATEWAY_KEY = "hpx-obs-5b4a39281706f5e4d3c2"
USER = [{"role": "user", "content": "tell me something"}]


def write_config(tmp_path: Path, access_log: str, *, path: str = "-") -> Path:
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"""\
server:
  host: 127.0.0.1
  access_log: {{format: {access_log}, path: "{path}"}}
providers:
  mock: {{kind: mock, chunks: 3, latency: 20ms}}
models:
  gpt:
    targets: [{{provider: mock, model: mock-large}}]
keys:
  - name: web-app
    key: "${{HAPAX_TEST_KEY}}"
""")
    return cfg


def start(tmp_path: Path, access_log: str, *, path: str = "-") -> HapaxProcess:
    hp = HapaxProcess(write_config(tmp_path, access_log, path=path),
                      extra_env={"HAPAX_TEST_KEY": GATEWAY_KEY}).start()
    try:
        hp.wait_ready()
    except BaseException:
        hp.kill()
        raise
    return hp


@pytest.fixture
def json_gateway(tmp_path: Path) -> Iterator[HapaxProcess]:
    hp = start(tmp_path, "json")
    try:
        yield hp
    finally:
        hp.kill()


@pytest.fixture
def sdk() -> Iterator[Callable[..., openai.OpenAI]]:
    """``sdk(base_url, key)``: OpenAI clients, closed at the end of the test."""
    made: list[openai.OpenAI] = []

    def make(base_url: str, key: str = GATEWAY_KEY) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=base_url, api_key=key, max_retries=0))
        return made[-1]

    yield make
    for c in made:
        c.close()


# -- access log: json -------------------------------------------------------------------


def test_json_access_log_one_line_per_request(json_gateway: HapaxProcess, sdk: Any) -> None:
    hp = json_gateway
    oa = sdk(hp.base_url)
    plain = oa.chat.completions.with_raw_response.create(model="gpt", messages=USER)
    usage = plain.parse().usage
    assert usage is not None
    streamed = oa.chat.completions.with_raw_response.create(
        model="gpt", messages=USER, stream=True, stream_options={"include_usage": True})
    stream_usage = [c.usage for c in streamed.parse() if c.usage is not None]
    bare = oa.chat.completions.with_raw_response.create(model="gpt", messages=USER, stream=True)
    assert all(c.usage is None for c in bare.parse())
    mine = oa.chat.completions.with_raw_response.create(
        model="gpt", messages=USER, extra_headers={"x-request-id": "client-chosen-id-1"})
    mine.parse()
    with pytest.raises(openai.AuthenticationError) as denied:
        sdk(hp.base_url, GATEWAY_KEY + "-wrong").chat.completions.create(model="gpt", messages=USER)
    with pytest.raises(openai.NotFoundError) as unknown:
        oa.chat.completions.create(model="no-such-model", messages=USER)
    missing_status, missing_headers, _ = get(hp.url, "/no/such/path")
    assert missing_status == 404

    records = hp.access_log(7)
    assert len(records) == 7
    ok, stream, stream_bare, chosen, unauthorized, no_model, no_path = records

    assert ok["request_id"] == plain.headers["x-request-id"]
    assert stream["request_id"] == streamed.headers["x-request-id"]
    assert stream_bare["request_id"] == bare.headers["x-request-id"]
    assert chosen["request_id"] == "client-chosen-id-1" == mine.headers["x-request-id"]
    assert unauthorized["request_id"] == denied.value.response.headers["x-request-id"]
    assert no_model["request_id"] == unknown.value.response.headers["x-request-id"]
    assert no_path["request_id"] == missing_headers["x-request-id"]
    assert len({r["request_id"] for r in records}) == 7

    for rec in (ok, stream, stream_bare, chosen):
        assert (rec["key"], rec["method"], rec["path"], rec["status"]) == \
            ("web-app", "POST", "/v1/chat/completions", 200)
        assert (rec["model"], rec["provider"], rec["upstream_model"]) == \
            ("gpt", "mock", "mock-large")
        assert rec["error"] is None
        # The mock waits 20ms before answering: that time is the upstream's, not ours.
        # (It sleeps by the event loop's clock, which uvloop keeps in whole milliseconds
        # and reads once per loop turn: the sleep may end up to ~1 ms early by ours.)
        assert rec["upstream_ms"] >= 18
        assert rec["gateway_ms"] >= 0
        assert rec["latency_ms"] == pytest.approx(rec["gateway_ms"] + rec["upstream_ms"],
                                                  abs=0.01)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
    assert [r["stream"] for r in records] == [False, True, True, False, False, False, False]
    assert (ok["tokens_in"], ok["tokens_out"]) == (usage.prompt_tokens, usage.completion_tokens)
    (su,) = stream_usage
    assert (stream["tokens_in"], stream["tokens_out"]) == (su.prompt_tokens, su.completion_tokens)
    assert (stream_bare["tokens_in"], stream_bare["tokens_out"]) == (None, None)

    assert (unauthorized["status"], unauthorized["key"], unauthorized["provider"]) == \
        (401, None, None)
    assert unauthorized["error"] == "invalid API key"
    assert (no_model["status"], no_model["key"], no_model["model"], no_model["provider"]) == \
        (404, "web-app", "no-such-model", None)
    assert (no_path["status"], no_path["path"], no_path["method"]) == (404, "/no/such/path", "GET")
    for rec in (unauthorized, no_model, no_path):
        assert rec["upstream_ms"] == 0

    # The key's name is logged, never the key.
    assert GATEWAY_KEY not in hp.stdout + hp.stderr
    assert hp.stop() == 0


def test_json_access_log_to_a_file(tmp_path: Path, sdk: Any) -> None:
    log_file = tmp_path / "logs" / "access.log"
    log_file.parent.mkdir()
    with start(tmp_path, "json", path=str(log_file)) as hp:
        reply = sdk(hp.base_url).chat.completions.with_raw_response.create(model="gpt",
                                                                           messages=USER)
        reply.parse()
        assert hp.stop() == 0
    assert hp.stdout == ""
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    ours = [r for r in records if r["path"] == "/v1/chat/completions"]
    assert len(ours) == 1
    assert ours[0]["request_id"] == reply.headers["x-request-id"]
    assert (ours[0]["key"], ours[0]["status"]) == ("web-app", 200)


def test_text_access_log(tmp_path: Path, sdk: Any) -> None:
    with start(tmp_path, "text") as hp:
        oa = sdk(hp.base_url)
        plain = oa.chat.completions.with_raw_response.create(model="gpt", messages=USER)
        usage = plain.parse().usage
        streamed = oa.chat.completions.with_raw_response.create(model="gpt", messages=USER,
                                                                stream=True)
        list(streamed.parse())
        hp.wait_stdout(re.escape(streamed.headers["x-request-id"]))
        assert hp.stop() == 0
    lines = {line.split()[1]: line for line in hp.stdout.splitlines()}
    first = lines[plain.headers["x-request-id"]]
    assert re.fullmatch(
        r"\S+Z req_\w+ web-app POST /v1/chat/completions 200 model=gpt provider=mock "
        r"[\d.]+ms \(gateway [\d.]+ms\) tokens=(\d+)/(\d+)", first), first
    assert first.endswith(f"tokens={usage.prompt_tokens}/{usage.completion_tokens}")
    second = lines[streamed.headers["x-request-id"]]
    assert second.endswith(" stream")
    assert " web-app POST /v1/chat/completions 200 model=gpt provider=mock " in second
    assert not any(line.lstrip().startswith("{") for line in lines.values())


def test_access_log_off(tmp_path: Path, sdk: Any) -> None:
    with start(tmp_path, "off") as hp:
        sdk(hp.base_url).chat.completions.create(model="gpt", messages=USER)
        assert get(hp.url, "/nope")[0] == 404
        assert hp.stop() == 0
    assert hp.stdout == ""
    assert "shutting down" in hp.stderr  # the process did log, just not an access log


# -- /metrics ---------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: ``{(name, sorted labels): value}``; checks the types."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    types = {}
    samples = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert types["hapax_requests"] == "counter"
    assert types["hapax_tokens"] == "counter"
    assert types["hapax_upstream_latency_seconds"] == "histogram"
    assert types["hapax_gateway_overhead_seconds"] == "histogram"
    assert types["hapax_request_duration_seconds"] == "histogram"
    assert types["hapax_requests_in_flight"] == "gauge"
    return samples


def requests_total(samples: dict[Any, float], route: str, model: str, provider: str,
                   status: int) -> float:
    key = ("hapax_requests_total", (("model", model), ("provider", provider), ("route", route),
                                    ("status", str(status))))
    return samples.get(key, 0.0)


def labelled(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    return labelled(after, name, **labels) - labelled(before, name, **labels)


def metrics_config(fake_url: str) -> dict[str, Any]:
    cfg = config_for(fake_url, models=["fake-model"])
    cfg["providers"]["mock"] = {"kind": "mock", "chunks": 4, "chunk_delay": "50ms"}
    cfg["models"]["gpt"] = {"targets": [{"provider": "mock"}]}
    cfg["keys"] = [{"name": "web-app", "key": GATEWAY_KEY}]
    return cfg


def test_metrics(hapax_gateway: Any, fake_provider: Any, sdk: Any) -> None:
    gw = hapax_gateway(metrics_config(fake_provider.base_url))
    oa = sdk(gw.base_url)
    before = scrape(gw.url)
    tokens_in = tokens_out = 0
    for _ in range(3):
        usage = oa.chat.completions.create(model="gpt", messages=USER).usage
        assert usage is not None
        tokens_in += usage.prompt_tokens
        tokens_out += usage.completion_tokens
    chunks = list(oa.chat.completions.create(model="gpt", messages=USER, stream=True,
                                             stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None
    tokens_in += usage.prompt_tokens
    tokens_out += usage.completion_tokens
    oa.chat.completions.create(model="fake-model", messages=USER)
    fake_provider.queue(Reply(status=500))
    with pytest.raises(openai.InternalServerError):  # 502: the SDK's 5xx class
        oa.chat.completions.create(model="fake-model", messages=USER)
    with pytest.raises(openai.AuthenticationError):
        sdk(gw.base_url, "wrong").chat.completions.create(model="gpt", messages=USER)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{gw.url}/v2/other", timeout=10)
    assert missing.value.code == 404
    missing.value.close()
    after = scrape(gw.url)

    def count(route: str, model: str, provider: str, status: int) -> float:
        return (requests_total(after, route, model, provider, status)
                - requests_total(before, route, model, provider, status))

    assert count("chat", "gpt", "mock", 200) == 4
    assert count("chat", "fake-model", "fake", 200) == 1
    assert count("chat", "fake-model", "fake", 502) == 1
    assert count("chat", "", "", 401) == 1
    assert count("chat", "nope", "", 404) == 1
    assert count("other", "", "", 404) == 1
    assert count("metrics", "", "", 200) == 1  # the first scrape (the second is in flight)

    hist = "hapax_upstream_latency_seconds_count"
    assert delta(before, after, hist, provider="mock") == 4
    assert delta(before, after, hist, provider="fake") == 2  # the failed attempt too
    # every request's overhead is observed, by route
    assert delta(before, after, "hapax_gateway_overhead_seconds_count", route="chat") == 8
    assert delta(before, after, "hapax_request_duration_seconds_count", route="chat") == 8
    # cumulative buckets end in +Inf == count
    assert labelled(after, "hapax_upstream_latency_seconds_bucket", provider="mock", le="+Inf") \
        == labelled(after, hist, provider="mock")
    assert labelled(after, "hapax_upstream_latency_seconds_sum", provider="mock") > 0
    assert delta(before, after, "hapax_upstream_errors_total", provider="fake",
                 kind="bad_gateway") == 1

    assert delta(before, after, "hapax_tokens_total", model="gpt", provider="mock",
                 direction="prompt") == tokens_in
    assert delta(before, after, "hapax_tokens_total", model="gpt", provider="mock",
                 direction="completion") == tokens_out
    assert ("hapax_requests_in_flight", ()) in after


def test_in_flight_gauge_counts_an_open_stream(hapax_gateway: Any, fake_provider: Any) -> None:
    gw = hapax_gateway(metrics_config(fake_provider.base_url))
    idle = scrape(gw.url)[("hapax_requests_in_flight", ())]
    assert idle == 1  # the scrape itself
    fake_provider.queue(Reply(stall_after_events=2))  # the stream stays open, silent
    body = json.dumps({"model": "fake-model", "messages": USER, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                 + GATEWAY_KEY.encode() + b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while b"data: " not in received:
        received += sock.recv(65536)
    assert scrape(gw.url)[("hapax_requests_in_flight", ())] == 2
    # The client gives up (a reset, as when a client closes with unread data): the
    # gateway notices and lets the request go.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    for _ in range(500):
        if scrape(gw.url)[("hapax_requests_in_flight", ())] == 1:
            break
    assert scrape(gw.url)[("hapax_requests_in_flight", ())] == 1
    after = scrape(gw.url)
    assert requests_total(after, "chat", "fake-model", "fake", 499) == 1


def test_metrics_without_a_key_is_allowed_and_head_works(hapax_gateway: Any,
                                                         fake_provider: Any) -> None:
    gw = hapax_gateway(metrics_config(fake_provider.base_url))
    # /metrics answers without a gateway key (scrapers do not have one)
    assert ("hapax_requests_in_flight", ()) in scrape(gw.url)
    req = urllib.request.Request(f"{gw.url}/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        assert resp.read() == b""
