"""The upstream client as a client sees it: what reaches the provider, byte for byte, and
what comes back when the provider misbehaves (errors, silence, garbage, hang-ups)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
from helpers import (
    HELLO,
    GatewayFactory,
    RawServer,
    alive,
    client,
    closed_port,
    collector_off,
    post,
    wait_for,
    with_provider,
)

from hapax.testing import config_for
from hapax.testing.fake_provider import FakeProvider, Reply


def error_of(body: bytes) -> dict[str, Any]:
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket, int], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Callable[[socket.socket, int], None]) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def read_request(sock: socket.socket) -> bytes | None:
    """Read one HTTP request (Content-Length framing); None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            return None
        body += piece
    return head


OK_BODY = orjson.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": "raw ok"}}]})
OK_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
               % len(OK_BODY) + OK_BODY)


# -- what reaches the provider ---------------------------------------------------------------

ODD_BODY = (b'{\n  "messages" : [ {"content":"caf\\u00e9 \\ud83d\\ude00 \\"q\\"", "role":"user"} ],'
            b'\n\t"model" :  "alias-a"  , "temperature":0.50,'
            b' "metadata":{"model":"not-this-one"}, "user":"\xc3\xa9t\xc3\xa9"}')


@pytest.mark.parametrize(("upstream_model", "written_as"), [
    ("gpt-up", b'"gpt-up"'),
    ("ns/mod\u00e8le", '"ns/mod\u00e8le"'.encode()),
])
def test_body_forwarded_byte_for_byte_but_model(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory, upstream_model: str,
        written_as: bytes) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["alias-a"],
                                  upstream_model=upstream_model))
    status, _, body = post(gw, ODD_BODY)
    assert status == 200, body
    assert orjson.loads(body)["choices"][0]["message"]["content"] == \
        'Fake answer to: caf\u00e9 \U0001f600 "q"'
    [rec] = fake_provider.requests
    expected = ODD_BODY.replace(b'"alias-a"', written_as)
    assert expected != ODD_BODY
    assert rec.body == expected
    assert rec.json["model"] == upstream_model
    assert rec.json["metadata"] == {"model": "not-this-one"}


def test_escaped_alias_is_routed_and_replaced(fake_provider: FakeProvider,
                                              hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["alias-a"],
                                  upstream_model="gpt-up"))
    raw = b'{"model":"alias\\u002da","messages":[{"role":"user","content":"x"}]}'
    status, _, _ = post(gw, raw)
    assert status == 200
    assert fake_provider.requests[0].body == \
        b'{"model":"gpt-up","messages":[{"role":"user","content":"x"}]}'


def test_body_untouched_when_alias_is_upstream_model(fake_provider: FakeProvider,
                                                     hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["alias-a"]))
    status, _, _ = post(gw, ODD_BODY)
    assert status == 200
    assert fake_provider.requests[0].body == ODD_BODY
    # Embeddings take the same path.
    emb = b'{ "input" : ["\\u00e9", "b"],"model":"alias-a" }'
    status, _, _ = post(gw, emb, "/v1/embeddings")
    assert status == 200
    assert fake_provider.requests[1].body == emb
    assert fake_provider.requests[1].path == "/v1/embeddings"


def test_provider_headers(fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    """The provider's key and configured headers go up; the client's key does not."""
    gw = hapax_gateway(with_provider(fake_provider.base_url, api_key="sk-provider-secret",
                                     headers={"OpenAI-Organization": "org-1"}))
    with client(gw) as c:
        c.chat.completions.create(model="m", messages=HELLO)
    headers = {k.lower(): v for k, v in fake_provider.requests[0].headers.items()}
    assert headers["authorization"] == "Bearer sk-provider-secret"
    assert headers["openai-organization"] == "org-1"
    assert headers["content-type"] == "application/json"
    # Answers are read (stream checks, token counts): asked for uncompressed.
    assert headers["accept-encoding"] == "identity"
    assert "sk-test" not in repr(headers)


def test_a_configured_accept_encoding_wins(raw_server: Any,
                                           hapax_gateway: GatewayFactory) -> None:
    heads: list[bytes] = []

    def record(sock: socket.socket, n: int) -> None:
        while (head := read_request(sock)) is not None:
            heads.append(head)
            sock.sendall(OK_RESPONSE)

    server = raw_server(record)
    gw = hapax_gateway(with_provider(server.base_url,
                                     headers={"Accept-Encoding": "identity;q=1"}))
    with client(gw) as c:
        c.chat.completions.create(model="m", messages=HELLO)
    lines = [line for line in heads[0].lower().split(b"\r\n")
             if line.startswith(b"accept-encoding:")]
    assert lines == [b"accept-encoding: identity;q=1"]  # once: the operator's


def test_keepalive_pool_reuses_connections(fake_provider: FakeProvider,
                                           hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    with client(gw) as c:
        for i in range(30):
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": str(i)}])
        for _ in range(5):
            list(c.chat.completions.create(model="m", messages=HELLO, stream=True))
    assert len(fake_provider.requests) == 35
    ports = {rec.peer for rec in fake_provider.requests}
    assert None not in ports
    # Sequential requests share one pooled connection (two if a keep-alive race hit).
    assert len(ports) <= 2, ports
    assert gw.gateway.providers["fake"].stats()["open"] <= 2


# -- provider errors -----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code", "exc_type"), [
    (400, "context_length_exceeded", openai.BadRequestError),
    (429, "rate_limit_exceeded", openai.RateLimitError),
    (404, "model_not_found", openai.NotFoundError),
    (422, None, openai.UnprocessableEntityError),
])
def test_provider_4xx_passes_through(fake_provider: FakeProvider, hapax_gateway: GatewayFactory,
                                     status: int, code: str | None,
                                     exc_type: type[openai.APIStatusError]) -> None:
    error = {"error": {"message": f"provider says no ({status}): \u00e9", "type":
                       "invalid_request_error", "param": "messages", "code": code}}
    fake_provider.queue(Reply(status=status, json=error))
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    with client(gw) as c, pytest.raises(exc_type) as info:
        c.chat.completions.create(model="m", messages=HELLO)
    exc = info.value
    assert exc.status_code == status
    assert exc.code == code
    assert f"provider says no ({status}): \u00e9" in exc.message
    assert exc.response.content == orjson.dumps(error)  # the provider's body, untouched
    assert exc.response.headers["x-hapax-provider"] == "fake"
    assert len(fake_provider.requests) == 1


def test_provider_429_back_off_headers_pass_through(fake_provider: FakeProvider,
                                                   hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(status=429, json={"error": {"message": "slow down"}},
                              headers={"Retry-After": "7", "x-ratelimit-remaining-tokens": "0",
                                       "x-secret-internal": "no"}))
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    with client(gw) as c, pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="m", messages=HELLO)
    headers = info.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert "x-secret-internal" not in headers  # only back-off advice is relayed


def test_provider_4xx_text_body_gets_envelope(fake_provider: FakeProvider,
                                              hapax_gateway: GatewayFactory) -> None:
    fake_provider.queue(Reply(status=400, body=b"bad thing happened",
                              headers={"Content-Type": "text/plain"}))
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    with client(gw) as c, pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="m", messages=HELLO)
    assert info.value.message.endswith("bad thing happened")
    assert error_of(info.value.response.content)["message"] == "bad thing happened"
    assert info.value.response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("status", [500, 503])
def test_provider_5xx_becomes_502(fake_provider: FakeProvider, hapax_gateway: GatewayFactory,
                                  status: int) -> None:
    fake_provider.queue(Reply(status=status, json={"error": {"message": "overloaded, sorry"}}))
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    with client(gw) as c, pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="m", messages=HELLO)
    assert info.value.status_code == 502
    err = error_of(info.value.response.content)
    assert (err["type"], err["code"]) == ("upstream_error", "bad_gateway")
    assert str(status) in err["message"] and "overloaded, sorry" in err["message"]
    assert len(fake_provider.requests) == 1


def test_connection_refused_is_502(hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config_for(f"http://127.0.0.1:{closed_port()}/v1", models=["m"]))
    with client(gw) as c:
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as info:
                c.chat.completions.create(model="m", messages=HELLO, stream=stream)
            assert info.value.status_code == 502
            assert error_of(info.value.response.content)["code"] == "upstream_unreachable"
        assert gw.gateway.providers["fake"].stats()["open"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_hanging_provider_is_504(fake_provider: FakeProvider, hapax_gateway: GatewayFactory,
                                 stream: bool) -> None:
    fake_provider.queue(Reply(hang=True))
    gw = hapax_gateway(with_provider(fake_provider.base_url, timeouts={"first_byte": "300ms"}))
    with client(gw) as c, pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="m", messages=HELLO, stream=stream)
    assert info.value.status_code == 504
    err = error_of(info.value.response.content)
    assert (err["type"], err["code"]) == ("timeout_error", "upstream_timeout")
    assert len(fake_provider.requests) == 1
    # The gateway gave up on the request: the provider sees the hang-up.
    assert wait_for(lambda: fake_provider.disconnects == 1 and fake_provider.active == 0)
    # And the pool is usable afterwards.
    with client(gw) as c:
        assert c.chat.completions.create(model="m", messages=HELLO).choices[0].message.content


# -- failures in the middle of a stream --------------------------------------------------------


@pytest.mark.parametrize("reply", [Reply(chunks=4, stall_after_events=2),
                                   Reply(chunks=4, drop_after_events=2)],
                         ids=["stall", "drop"])
def test_stream_cut_midway_ends_with_error_not_done(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory, reply: Reply) -> None:
    fake_provider.queue(reply, reply)
    gw = hapax_gateway(with_provider(fake_provider.base_url, timeouts={"idle": "300ms"}))
    code = "upstream_timeout" if reply.stall_after_events else "bad_gateway"

    got: list[Any] = []
    with client(gw) as c, pytest.raises(openai.APIError) as info:
        for chunk in c.chat.completions.create(model="m", messages=HELLO, stream=True):
            got.append(chunk)
    assert len(got) == 2  # what the provider sent before it failed was relayed
    assert got[1].choices[0].delta.content
    assert isinstance(info.value.body, dict) and info.value.body["code"] == code

    status, headers, body = post(gw, orjson.dumps({"model": "m", "messages": HELLO,
                                                   "stream": True}))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.split(b"\n\n") if e.strip()]
    assert b"[DONE]" not in body
    assert len(events) == 3
    assert error_of(events[-1].removeprefix(b"data: "))["code"] == code


def test_client_disconnect_mid_stream_aborts_upstream(fake_provider: FakeProvider,
                                                      hapax_gateway: GatewayFactory) -> None:
    # A stream that would run for a minute unless someone hangs up.
    fake_provider.queue(Reply(content="word " * 1200, chunks=1200, chunk_delay=0.05))
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    body = orjson.dumps({"model": "m", "messages": HELLO, "stream": True})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        seen = b""
        while seen.count(b"data: ") < 3:
            piece = sock.recv(65536)
            assert piece, "the gateway closed the stream early"
            seen += piece
        assert fake_provider.active == 1 and fake_provider.disconnects == 0
    assert wait_for(lambda: fake_provider.disconnects == 1 and fake_provider.active == 0)
    pool = gw.gateway.providers["fake"]
    assert wait_for(lambda: pool.stats()["open"] == 0 and gw.gateway.in_flight == 0)


def test_client_reset_while_waiting_aborts_upstream(fake_provider: FakeProvider,
                                                    hapax_gateway: GatewayFactory) -> None:
    """A client that resets its connection before the answer is in.

    (A plain close only sends FIN, which HTTP/1.1 allows as a half-close that still
    wants its answer, so the gateway learns of a vanished client when it writes; a
    reset it learns of at once.)
    """
    fake_provider.queue(Reply(hang=True))
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    body = orjson.dumps({"model": "m", "messages": HELLO})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        assert wait_for(lambda: fake_provider.active == 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert wait_for(lambda: fake_provider.disconnects == 1 and fake_provider.active == 0)


# -- providers that break HTTP -----------------------------------------------------------------


@pytest.mark.parametrize("answer", [
    b"this is not HTTP at all\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: banana\r\n\r\n{}",
    b"\x00\xff\x13\x37" * 64,
    b"",  # closes without a byte on a fresh connection
    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"cut\":",  # body cut short
], ids=["text", "bad-length", "binary", "nothing", "short-body"])
def test_malformed_upstream_response_is_502(raw_server: Any, hapax_gateway: GatewayFactory,
                                            answer: bytes) -> None:
    def garbage(sock: socket.socket, n: int) -> None:
        if read_request(sock) is not None:
            sock.sendall(answer)

    server = raw_server(garbage)
    gw = hapax_gateway(config_for(server.base_url, models=["m"]))
    with client(gw) as c, pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="m", messages=HELLO)
    assert info.value.status_code == 502
    err = error_of(info.value.response.content)
    assert err["type"] == "upstream_error"
    assert server.connections == 1  # a fresh connection is never retried


def test_idle_close_by_provider_is_invisible(raw_server: Any,
                                             hapax_gateway: GatewayFactory) -> None:
    """The provider closes a pooled connection while it is idle."""
    def one_per_connection(sock: socket.socket, n: int) -> None:
        if read_request(sock) is not None:
            sock.sendall(OK_RESPONSE)  # keep-alive response... then hang up when idle

    server = raw_server(one_per_connection)
    gw = hapax_gateway(config_for(server.base_url, models=["m"]))
    pool = gw.gateway.providers["fake"]
    with client(gw) as c:
        for i in range(3):
            resp = c.chat.completions.create(model="m", messages=HELLO)
            assert resp.choices[0].message.content == "raw ok"
            assert wait_for(lambda: pool.stats()["open"] == 0)
            assert server.connections == i + 1


def big_completion(size: int) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {
                             "role": "assistant", "content": "y" * size}}]})


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_large_answer_is_read_whole(raw_server: Any, hapax_gateway: GatewayFactory,
                                      framing: str) -> None:
    """A non-streamed answer far past the upstream client's high-water mark (256 KiB,
    the back-pressure bound for relayed streams) is read whole, on a connection that
    stays reusable: the socket is never left paused with the gateway waiting for the end
    of the body (it once hung there, until the client gave up)."""
    body = big_completion(3 * 1024 * 1024)

    def big(sock: socket.socket, n: int) -> None:
        while read_request(sock) is not None:
            if framing == "chunked":
                pieces = [body[i:i + 100_000] for i in range(0, len(body), 100_000)]
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"transfer-encoding: chunked\r\n\r\n" + b"".join(
                                 b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % len(body) + body)

    server = raw_server(big)
    # shed_delay off: with the pure-Python twins, finding `usage` in 3 MiB of JSON takes
    # a quarter of a second of the loop, which could shed the next request.
    gw = hapax_gateway(config_for(server.base_url, models=["m"], server={
        "host": "127.0.0.1", "port": 0, "access_log": {"format": "off"},
        "limits": {"shed_delay": "off"}}))
    with client(gw) as c:
        for _ in range(3):
            resp = c.with_options(timeout=20).chat.completions.create(model="m",
                                                                      messages=HELLO)
            assert resp.choices[0].message.content == "y" * (3 * 1024 * 1024)
    assert server.connections == 1  # one connection, reused: each answer was read to its end


def answers_then_closes(response: bytes) -> Callable[[socket.socket, int], None]:
    """A provider that answers the first request of each connection with ``response``
    (bytes as they go on the wire), then closes its side."""
    def handler(sock: socket.socket, n: int) -> None:
        if read_request(sock) is not None:
            sock.sendall(response)
            sock.shutdown(socket.SHUT_WR)
    return handler


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.parametrize("size", [6, 2_000_000])
def test_an_answer_ended_by_closing_the_connection(raw_server: Any,
                                                    hapax_gateway: GatewayFactory,
                                                    version: str, size: int) -> None:
    """No Content-Length, not chunked: the body ends when the provider closes (RFC 9112
    §6.3), as a quick server on Python's http.server answers.  It was a 502 "closed the
    connection before the response was complete"."""
    server = raw_server(answers_then_closes(
        f"{version} 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"\r\n".encode() + big_completion(size)))
    gw = hapax_gateway(config_for(server.base_url, models=["m"]))
    with client(gw) as c:
        for i in range(2):
            resp = c.chat.completions.create(model="m", messages=HELLO)
            assert resp.choices[0].message.content == "y" * size
            assert server.connections == i + 1  # such a connection is never reused


def test_a_stream_ended_by_closing_the_connection(raw_server: Any,
                                                  hapax_gateway: GatewayFactory) -> None:
    events = b"".join(b"data: " + orjson.dumps({
        "id": "s", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        + b"\n\n" for piece in ("a", "b", "c")) + b"data: [DONE]\n\n"
    server = raw_server(answers_then_closes(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        + events))
    gw = hapax_gateway(config_for(server.base_url, models=["m"]))
    with client(gw) as c:
        stream = c.chat.completions.create(model="m", messages=HELLO, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == "abc"


def test_a_body_cut_short_of_its_length_is_502(raw_server: Any,
                                                hapax_gateway: GatewayFactory) -> None:
    server = raw_server(answers_then_closes(OK_RESPONSE[:-10]))
    gw = hapax_gateway(config_for(server.base_url, models=["m"]))
    with client(gw) as c, pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="m", messages=HELLO)
    assert info.value.status_code == 502
    assert "before the response was complete" in error_of(info.value.response.content)["message"]


def test_a_large_echo_through_the_fake_provider(fake_provider: FakeProvider,
                                                hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    prompt = "z" * 600_000
    with client(gw) as c:
        resp = c.with_options(timeout=20).chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompt}])
    assert prompt in (resp.choices[0].message.content or "")


def test_keepalive_race_is_retried_on_fresh_connection(raw_server: Any,
                                                       hapax_gateway: GatewayFactory) -> None:
    """The provider drops a reused connection just as the next request arrives on it
    (its keep-alive timer fired): the gateway retries once, the client sees nothing."""
    def first_only(sock: socket.socket, n: int) -> None:
        if read_request(sock) is None:
            return
        sock.sendall(OK_RESPONSE)
        read_request(sock)  # the next request on this connection is never answered
        sock.shutdown(socket.SHUT_RDWR)

    server = raw_server(first_only)
    gw = hapax_gateway(config_for(server.base_url, models=["m"]))
    with client(gw) as c:
        for _ in range(4):
            resp = c.chat.completions.create(model="m", messages=HELLO)
            assert resp.choices[0].message.content == "raw ok"
    # 1st: new connection; each later one: stale reused connection, then a fresh one.
    assert server.connections == 4


def test_closed_upstream_connections_are_freed_without_the_garbage_collector(
        raw_server: Any, hapax_gateway: GatewayFactory) -> None:
    """A provider that closes each connection after its answer (as nginx does after
    keepalive_requests) must not leave the closed connections' objects for the cyclic
    garbage collector, which the worker runs in full only every ~2M requests."""
    from hapax.providers.upstream import _Connection

    def one_per_connection(sock: socket.socket, n: int) -> None:
        if read_request(sock) is not None:
            sock.sendall(OK_RESPONSE)

    server = raw_server(one_per_connection)
    gw = hapax_gateway(config_for(server.base_url, models=["m"]))
    pool = gw.gateway.providers["fake"]

    with collector_off():
        base = alive(_Connection)
        with client(gw) as c:
            for _ in range(10):
                resp = c.chat.completions.create(model="m", messages=HELLO)
                assert resp.choices[0].message.content == "raw ok"
                assert wait_for(lambda: pool.stats()["open"] == 0)
        assert server.connections == 10
        assert wait_for(lambda: alive(_Connection) <= base), \
            f"{alive(_Connection) - base} closed connections left"
