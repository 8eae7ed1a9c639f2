"""LLM timeouts and stream failure semantics (docs/reliability.md) through the real server.

Connect, first-byte and stream-idle timeouts of a provider; the request's deadline (the
model's ``timeout``, shortened by the ``x-hapax-timeout`` header); what a client gets
when a stream breaks (failover before its first event, an in-band error event and no
``[DONE]`` after it); ``Retry-After`` on a 5xx.  Clients are the openai SDK (its own
retries off) and a raw HTTP client where the bytes of a stream matter; providers are
:class:`FakeProvider` instances and, for connections that never complete, bare sockets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from email.utils import formatdate
from typing import Any

import openai
import orjson
import pytest
from helpers import (
    HELLO,
    GatewayFactory,
    RawServer,
    client,
    metric,
    post,
    two_targets,
    wait_for,
    with_provider,
)
from http_raw import RawConn, request_bytes

from hapax.config import from_dict
from hapax.errors import UpstreamTimeout
from hapax.pipeline.executor import retry_after
from hapax.providers.upstream import UpstreamPool
from hapax.testing import GatewayThread
from hapax.testing.fake_provider import DONE, FakeProvider, Reply, chunk


def one_target(base_url: str, timeouts: dict[str, str] | None = None,
               **model: Any) -> dict[str, Any]:
    """Model ``m`` served by provider ``fake`` at ``base_url`` (no retries by default)."""
    cfg = with_provider(base_url, timeouts=timeouts or {})
    cfg["models"]["m"].update(model)
    return cfg


def stream(gw: GatewayThread, headers: dict[str, str] | None = None
           ) -> tuple[list[bytes], dict[str, Any] | None]:
    """A streamed chat request for ``m``: its events' data, and the error of the in-band
    error event that ended it (None if it ended with ``[DONE]``)."""
    status, _, body = post(gw, {"model": "m", "messages": HELLO, "stream": True},
                           headers=headers)
    assert status == 200
    data = [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e.strip()]
    if data and data[-1] == b"[DONE]":
        assert b"error" not in b"".join(data[:-1])
        return data, None
    assert b"[DONE]" not in data  # a failed stream never looks complete
    last = orjson.loads(data[-1])
    assert set(last) == {"error"} and set(last["error"]) == {"message", "type", "param", "code"}
    return data, last["error"]


def content_of(data: list[bytes]) -> str:
    """The answer text of a complete stream's events."""
    return "".join(c["delta"].get("content") or "" for d in data[:-1]
                   for c in orjson.loads(d)["choices"])


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    return body


GOOD = [chunk("Hel"), chunk("lo"), chunk(finish_reason="stop"), DONE]


def silent_server() -> RawServer:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word (a TLS
    handshake with it never completes); ``close()`` hangs up."""
    server = RawServer(lambda conn, n: server.closing.wait())
    return server


class FullBacklog:
    """A listening socket on 127.0.0.1 whose accept queue is full (backlog 0, one
    connection never accepted): a new connection's SYN is dropped, so connecting hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def close(self) -> None:
        self.filler.close()
        self.sock.close()


# -- configuration ---------------------------------------------------------------------------


def provider_timeouts(timeouts: dict[str, str]) -> Any:
    cfg = from_dict({"providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1",
                                         "timeouts": timeouts}},
                     "models": {"m": {"targets": [{"provider": "p"}]}}})
    return cfg.providers["p"].timeouts


def test_timeout_defaults_and_the_deprecated_read_shorthand() -> None:
    t = provider_timeouts({})
    assert (t.connect, t.first_byte, t.idle) == (10.0, 600.0, 300.0)
    # `read` fills first_byte and idle where they are not given ...
    t = provider_timeouts({"read": "30s"})
    assert (t.first_byte, t.idle) == (30.0, 30.0)
    # ... and never overrides one that is.
    t = provider_timeouts({"read": "30s", "idle": "5s"})
    assert (t.first_byte, t.idle) == (30.0, 5.0)


# -- connect ---------------------------------------------------------------------------------


def test_connect_timeout_unit() -> None:
    """The pool gives up on a connection that is never established, naming the timeout."""
    backlog = FullBacklog()

    async def main() -> None:
        pool = UpstreamPool("slowpoke", "127.0.0.1", backlog.port, ssl_context=None,
                            max_connections=4, connect_timeout=0.3, first_byte_timeout=5,
                            idle_timeout=5, keepalive_timeout=5)
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"connecting to provider 'slowpoke' "
                                                  r"\(127.0.0.1:\d+\) took longer than 0.3s"):
            await pool.request(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        assert time.monotonic() - t0 < 3
        assert pool.open_connections == 0
        await pool.close()

    try:
        asyncio.run(main())
    finally:
        backlog.close()


def test_connect_timeout_fails_over(second: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    backlog = FullBacklog()
    try:
        gw = hapax_gateway(two_targets(f"http://127.0.0.1:{backlog.port}/v1", second.base_url,
                                       timeouts={"connect": "300ms"}, retries=0))
        t0 = time.monotonic()
        answer = client(gw).chat.completions.create(model="m", messages=HELLO)
        assert answer.choices[0].message.content == "Fake answer to: hello"
        assert time.monotonic() - t0 < 4
        assert len(second.requests) == 1
    finally:
        backlog.close()


def test_tls_handshake_that_never_ends_is_a_connect_timeout(
        hapax_gateway: GatewayFactory) -> None:
    silent = silent_server()
    try:
        gw = hapax_gateway(one_target(f"https://127.0.0.1:{silent.port}/v1",
                                      {"connect": "300ms"}))
        t0 = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            client(gw).chat.completions.create(model="m", messages=HELLO)
        assert time.monotonic() - t0 < 4
        assert info.value.status_code == 504
        err = error_of(info.value)
        assert (err["type"], err["code"]) == ("timeout_error", "upstream_timeout")
        assert "connecting to provider 'fake'" in err["message"]
        assert "0.3s" in err["message"]
        assert silent.connections  # the TCP connection was made: the handshake timed out
    finally:
        silent.close()


# -- first byte ------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "stream"])
def test_first_byte_timeout_is_504(fake_provider: FakeProvider, hapax_gateway: GatewayFactory,
                                   streamed: bool) -> None:
    fake_provider.queue(Reply(delay=5))
    gw = hapax_gateway(one_target(fake_provider.base_url, {"first_byte": "300ms"}))
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="m", messages=HELLO, stream=streamed)
    assert time.monotonic() - t0 < 3
    assert info.value.status_code == 504
    err = error_of(info.value)
    assert (err["type"], err["code"]) == ("timeout_error", "upstream_timeout")
    assert err["message"] == ("provider 'fake' did not answer within 0.3s "
                              "(timeouts.first_byte)")


def test_first_byte_timeout_fails_over(fake_provider: FakeProvider, second: FakeProvider,
                                       hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(delay=5))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url,
                                   timeouts={"first_byte": "400ms"}, retries=0))
    t0 = time.monotonic()
    answer = client(gw).chat.completions.create(model="m", messages=HELLO)
    assert answer.choices[0].message.content == "Fake answer to: hello"
    assert 0.35 < time.monotonic() - t0 < 3  # the failover waited for first_byte, no longer
    assert len(fake_provider.requests) == len(second.requests) == 1


def test_first_byte_does_not_bound_a_long_stream(fake_provider: FakeProvider,
                                                  hapax_gateway: GatewayFactory) -> None:
    """A slow-but-steady stream (an event every 0.2 s) runs past both timeouts (1 s)."""
    fake_provider.queue(Reply(content="abcdefgh", chunks=8, chunk_delay=0.2))
    gw = hapax_gateway(one_target(fake_provider.base_url, {"first_byte": "1s", "idle": "1s"}))
    t0 = time.monotonic()
    data, error = stream(gw)
    assert error is None
    assert time.monotonic() - t0 > 1.2
    assert len(data) == 11  # role, 8 pieces, finish, [DONE]


# -- idle ------------------------------------------------------------------------------------


def test_stream_stall_after_the_first_event_is_an_in_band_error(
        fake_provider: FakeProvider, second: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(chunks=4, stall_after_events=2))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url,
                                   timeouts={"idle": "300ms"}, retries=0))
    t0 = time.monotonic()
    data, error = stream(gw)
    assert time.monotonic() - t0 < 3
    assert len(data) == 3  # two events relayed, then the error
    assert error is not None and error["code"] == "upstream_timeout"
    assert error["message"] == ("provider 'primary' went silent for 0.3s in the middle of "
                                "its response (timeouts.idle)")
    assert not second.requests  # something was sent: too late to fail over


def test_stream_stall_before_the_first_event_fails_over(
        fake_provider: FakeProvider, second: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(stream=True, stall_after_events=0))  # head sent, then silence
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url,
                                   timeouts={"idle": "300ms"}, retries=0))
    chunks = list(client(gw).chat.completions.create(model="m", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Fake answer to: hello"
    assert len(fake_provider.requests) == len(second.requests) == 1


def test_sdk_sees_a_stalled_stream_fail(fake_provider: FakeProvider,
                                        hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(chunks=4, stall_after_events=2))
    gw = hapax_gateway(one_target(fake_provider.base_url, {"idle": "300ms"}))
    got = []
    with pytest.raises(openai.APIError) as info:
        for c in client(gw).chat.completions.create(model="m", messages=HELLO, stream=True):
            got.append(c)
    assert len(got) == 2
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_timeout"


# -- malformed and incomplete streams ----------------------------------------------------------


@pytest.mark.parametrize("bad", [b"data: this is not json\n\n",
                                 b'data: {"id": "chatcmpl-t", "choices": [{\n\n',
                                 b"data: [1, 2]\n\n"],
                         ids=["text", "truncated", "array"])
def test_malformed_event_mid_stream_is_an_in_band_error(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory, bad: bytes) -> None:
    fake_provider.queue(Reply(events=[chunk("Hel"), chunk("lo"), bad, chunk(finish_reason="stop"),
                                      DONE]))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    data, error = stream(gw)
    assert len(data) == 3
    assert error is not None and error["code"] == "bad_gateway"
    assert error["message"].startswith("provider 'fake' sent a malformed stream event: ")
    assert bad[6:20].decode().strip() in error["message"]
    # The relay survived: the next request is fine.
    data, error = stream(gw)
    assert error is None and data[-1] == b"[DONE]"


def test_malformed_event_message_is_truncated(fake_provider: FakeProvider,
                                              hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(events=[chunk("Hi"), b"data: " + b"x" * 5000 + b"\n\n", DONE]))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    _, error = stream(gw)
    assert error is not None and len(error["message"]) < 200


def test_malformed_first_event_fails_over(fake_provider: FakeProvider, second: FakeProvider,
                                          hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(events=[b"data: <html>oops</html>\n\n", *GOOD]))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=0))
    data, error = stream(gw)
    assert error is None and content_of(data) == "Fake answer to: hello"
    assert len(fake_provider.requests) == len(second.requests) == 1


def test_stream_without_done_ends_with_an_in_band_error(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(events=GOOD[:-1]))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    data, error = stream(gw)
    assert len(data) == 4  # every event the provider sent, then the error
    assert error is not None and error["code"] == "bad_gateway"
    assert error["message"] == "stream from provider 'fake' ended without its final DONE event"


def test_upstream_error_event_ends_the_stream_without_done(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    """OpenAI reports a failure inside a stream as ``data: {"error": ...}`` (and may still
    send [DONE]): the client gets an error event in Hapax's format, and no [DONE]."""
    upstream_error = b'data: {"error": {"message": "The server had an error", "type": ' \
                     b'"server_error", "param": null, "code": null}}\n\n'
    fake_provider.queue(Reply(events=[chunk("Hel"), upstream_error, DONE]))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    data, error = stream(gw)
    assert len(data) == 2
    assert error == {"message": "provider 'fake' sent an error in its stream: The server had "
                                "an error", "type": "upstream_error", "param": None,
                     "code": "bad_gateway"}


def test_upstream_error_event_first_fails_over(fake_provider: FakeProvider,
                                               second: FakeProvider,
                                               hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(events=[b'event: error\ndata: {"message": "overloaded"}\n\n']))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, retries=0))
    data, error = stream(gw)
    assert error is None and data[-1] == b"[DONE]"
    assert len(second.requests) == 1


def test_events_after_done_are_dropped_and_comments_pass(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(events=[b": keep-alive\n\n", chunk("Hi"),
                                      chunk(finish_reason="stop"), DONE, chunk("late"),
                                      b"data: junk\n\n"]))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    status, _, body = post(gw, {"model": "m", "messages": HELLO, "stream": True})
    assert status == 200
    assert body.startswith(b": keep-alive\n\n")
    assert body.endswith(b"data: [DONE]\n\n") and b"late" not in body and b"junk" not in body
    # The client's stream ends at [DONE]; the provider's connection is drained to its
    # end behind it and goes back to the pool, where the next request finds it.
    assert wait_for(lambda: metric(gw, "hapax_upstream_connections",
                                   provider="fake", state="idle") == 1)
    data, error = stream(gw)
    assert error is None
    assert fake_provider.requests[0].peer == fake_provider.requests[1].peer


def test_client_leaving_after_done_lets_the_drain_finish(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    """The client has its whole stream at [DONE] and closes its connection while the
    provider still sends (late events, 0.2 s apart): the gateway reads the provider's
    response to its end all the same, its connection goes back to the pool, and the
    request counts as answered (200), not abandoned (499)."""
    finished: list[Any] = []

    class After:
        def hapax_after_response(self, exchange: Any) -> None:
            if exchange.route == "chat":  # (not the /metrics scrapes)
                finished.append(exchange)

    fake_provider.queue(Reply(events=[chunk("Hi"), chunk(finish_reason="stop"), DONE,
                                      chunk("late"), chunk("later")], chunk_delay=0.2))
    gw = hapax_gateway(one_target(fake_provider.base_url), plugins=[("after", After())])
    status, _, body = post(gw, {"model": "m", "messages": HELLO, "stream": True})
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")  # ... and closed
    assert wait_for(lambda: metric(gw, "hapax_upstream_connections",
                                   provider="fake", state="idle") == 1)
    assert wait_for(lambda: len(finished) == 1)
    assert finished[0].status == 200 and not finished[0].disconnected
    data, error = stream(gw)
    assert error is None
    assert fake_provider.requests[0].peer == fake_provider.requests[1].peer


def test_provider_holding_the_stream_open_after_done(fake_provider: FakeProvider,
                                                     hapax_gateway: GatewayFactory) -> None:
    """[DONE] arrives, then the provider neither ends the response nor says more: the
    client's stream still ends promptly, complete."""
    fake_provider.queue(Reply(events=[*GOOD, chunk("late")], stall_after_events=len(GOOD)))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    t0 = time.monotonic()
    data, error = stream(gw)
    assert error is None and content_of(data) == "Hello"
    assert time.monotonic() - t0 < 5  # not timeouts.idle (300 s)


def test_the_client_stream_ends_at_done_without_waiting_for_the_provider(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    """[DONE] is the end of the client's stream: the chunked terminator goes out with it
    (one write), not once the provider has finished its own response — which a provider
    holding the response open delays by the drain grace (1 s) before its connection is
    dropped."""
    fake_provider.queue(Reply(events=[*GOOD, chunk("late")], stall_after_events=len(GOOD)))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    body = orjson.dumps({"model": "m", "messages": HELLO, "stream": True})
    with RawConn(gw.port) as c:
        c.send(request_bytes(body=body, headers=[("authorization", "Bearer sk-test")]))
        assert c.read_head().status == 200
        chunks = []
        while (piece := c.read_chunk()) != b"":
            chunks.append(piece)
            if piece.endswith(b"data: [DONE]\n\n"):
                done_at = time.monotonic()
        ended_at = time.monotonic()
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n") and b"late" not in b"".join(chunks)
    # The terminator came with [DONE], not after the provider's drain grace (1 s).
    assert ended_at - done_at < 0.5


# -- the request's deadline -----------------------------------------------------------------


def test_deadline_during_a_slow_answer_is_504(fake_provider: FakeProvider,
                                              hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(delay=5))
    gw = hapax_gateway(one_target(fake_provider.base_url, timeout="500ms"))
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="m", messages=HELLO)
    assert time.monotonic() - t0 < 3
    assert info.value.status_code == 504
    err = error_of(info.value)
    assert (err["type"], err["code"]) == ("timeout_error", "deadline_exceeded")
    assert "deadline of 0.5s" in err["message"]
    # The attempt was cut, not left running: the provider sees the hang-up.
    wait_for(lambda: fake_provider.disconnects >= 1, timeout=5)
    assert fake_provider.disconnects == 1


@pytest.mark.parametrize(("model_timeout", "header"), [("60s", "400ms"), ("400ms", "30s")],
                         ids=["shortens", "cannot-lengthen"])
def test_timeout_header_can_only_shorten_the_deadline(fake_provider: FakeProvider,
                                                      hapax_gateway: GatewayFactory,
                                                      model_timeout: str, header: str) -> None:
    fake_provider.queue(Reply(delay=5))
    gw = hapax_gateway(one_target(fake_provider.base_url, timeout=model_timeout))
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client(gw, **{"x-hapax-timeout": header}).chat.completions.create(
            model="m", messages=HELLO)
    assert time.monotonic() - t0 < 3
    assert error_of(info.value)["code"] == "deadline_exceeded"
    assert "deadline of 0.4s" in error_of(info.value)["message"]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "10 parsecs", ""])
def test_invalid_timeout_header_is_400(fake_provider: FakeProvider,
                                       hapax_gateway: GatewayFactory, value: str) -> None:
    gw = hapax_gateway(one_target(fake_provider.base_url))
    status, _, body = post(gw, {"model": "m", "messages": HELLO},
                           headers={"x-hapax-timeout": value})
    assert status == 400
    err = orjson.loads(body)["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error",
                                                         "invalid_timeout", "x-hapax-timeout")
    assert "expected a positive duration" in err["message"]
    assert not fake_provider.requests


def test_deadline_across_a_retry(fake_provider: FakeProvider,
                                 hapax_gateway: GatewayFactory) -> None:
    """The deadline covers every attempt: a retry that hangs is cut when it passes, and
    the client learns what failed before."""
    fake_provider.queue(Reply(status=503, headers={"retry-after-ms": "100"}), Reply(hang=True))
    gw = hapax_gateway(one_target(fake_provider.base_url, timeout="1s", retries=3))
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="m", messages=HELLO)
    assert 0.9 < time.monotonic() - t0 < 4
    err = error_of(info.value)
    assert err["code"] == "deadline_exceeded"
    assert "last failure: provider 'fake' answered 503" in err["message"]
    assert len(fake_provider.requests) == 2


def test_backoff_never_sleeps_past_the_deadline(fake_provider: FakeProvider,
                                                second: FakeProvider,
                                                hapax_gateway: GatewayFactory) -> None:
    """Advice to wait longer than the deadline allows: fail over at once instead."""
    fake_provider.queue(Reply(status=503, headers={"Retry-After": "30"}))
    gw = hapax_gateway(two_targets(fake_provider.base_url, second.base_url, timeout="2s",
                                   retries=3))
    t0 = time.monotonic()
    answer = client(gw).chat.completions.create(model="m", messages=HELLO)
    assert answer.choices[0].message.content == "Fake answer to: hello"
    assert time.monotonic() - t0 < 1.5
    assert len(fake_provider.requests) == len(second.requests) == 1


def test_deadline_mid_stream_is_an_in_band_error(fake_provider: FakeProvider,
                                                 hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(content="word " * 40, chunks=40, chunk_delay=0.1))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    t0 = time.monotonic()
    data, error = stream(gw, {"x-hapax-timeout": "800ms"})
    assert time.monotonic() - t0 < 3
    assert 2 <= len(data) < 40
    assert error is not None and error["code"] == "deadline_exceeded"
    assert "passed mid-stream" in error["message"]


# -- the mock provider ------------------------------------------------------------------------


def mock_config(**provider: Any) -> dict[str, Any]:
    return {"server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"}},
            "providers": {"mock": {"kind": "mock", **provider}},
            "models": {"m": {"targets": [{"provider": "mock"}], "retries": 0,
                             "dedup": "off"}}}


def test_mock_stream_stops_at_the_deadline(hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(mock_config(chunks=3, chunk_delay="10s"))
    t0 = time.monotonic()
    data, error = stream(gw, {"x-hapax-timeout": "500ms"})
    assert time.monotonic() - t0 < 3  # not after the 10 s pause
    assert len(data) == 2
    assert error is not None and error["code"] == "deadline_exceeded"


def test_mock_honours_its_timeouts(hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(mock_config(chunks=3, chunk_delay="10s", timeouts={"idle": "300ms"}))
    t0 = time.monotonic()
    data, error = stream(gw)
    assert time.monotonic() - t0 < 3
    assert len(data) == 2
    assert error is not None and error["code"] == "upstream_timeout"
    assert "(timeouts.idle)" in error["message"]

    gw = hapax_gateway(mock_config(latency="10s", timeouts={"first_byte": "300ms"}))
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="m", messages=HELLO)
    assert info.value.status_code == 504
    assert "(timeouts.first_byte)" in error_of(info.value)["message"]


# -- Retry-After -----------------------------------------------------------------------------


def test_retry_after_on_a_503_is_honoured(fake_provider: FakeProvider,
                                          hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(status=503, headers={"Retry-After": "1"}), Reply())
    gw = hapax_gateway(one_target(fake_provider.base_url, retries=1))
    answer = client(gw).chat.completions.create(model="m", messages=HELLO)
    assert answer.choices[0].message.content == "Fake answer to: hello"
    first, retry = fake_provider.requests
    assert retry.at - first.at >= 0.9  # not before the advised second (backoff alone: < 0.1 s)


def test_retry_after_as_an_http_date_is_honoured(fake_provider: FakeProvider,
                                                 hapax_gateway: GatewayFactory) -> None:
    # HTTP dates have whole seconds: "2 s from now" is between 1 and 2 s away.
    when = formatdate(time.time() + 2, usegmt=True)
    fake_provider.queue(Reply(status=503, headers={"Retry-After": when}), Reply())
    gw = hapax_gateway(one_target(fake_provider.base_url, retries=1))
    client(gw).chat.completions.create(model="m", messages=HELLO)
    first, retry = fake_provider.requests
    assert retry.at - first.at >= 0.9


def test_retry_after_of_a_5xx_reaches_the_client(fake_provider: FakeProvider,
                                                 hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(status=503, headers={"Retry-After": "7"}))
    gw = hapax_gateway(one_target(fake_provider.base_url))
    status, headers, body = post(gw, {"model": "m", "messages": HELLO})
    assert status == 502 and headers["retry-after"] == "7"
    assert orjson.loads(body)["error"]["message"] == "provider 'fake' answered 503: fake error 503"


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert retry_after([(b"retry-after", b"3")]) == 3.0
    assert retry_after([(b"Retry-After", b"1.5")]) == 1.5
    assert retry_after([(b"retry-after", b"3"), (b"retry-after-ms", b"250")]) == 0.25
    assert retry_after([(b"retry-after", b"-4")]) == 0.0
    assert retry_after([(b"x-other", b"3")]) is None
    assert retry_after([(b"retry-after", b"soon")]) is None
    date = formatdate(now + 90, usegmt=True).encode()
    assert retry_after([(b"retry-after", date)], now=now) == 90.0
    past = formatdate(now - 90, usegmt=True).encode()
    assert retry_after([(b"retry-after", past)], now=now) == 0.0
    assert retry_after([(b"retry-after", b"Wed, 21 Oct 2015 07:28:00 GMT")],
                       now=1445412480.0 - 5) == 5.0

