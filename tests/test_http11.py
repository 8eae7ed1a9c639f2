"""The HTTP/1.1 listener (hapax/server/http11.py) over raw sockets.

Malformed and adversarial input that no real client sends: broken request lines,
oversized heads, bad chunk framing, bodies over the limit, stalled clients, pipelining.
Each case checks the exact status and OpenAI error envelope, and that the server still
answers a normal request on a fresh connection afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import alive, collector_off, wait_for
from http_raw import RawConn, RawResponse, chat_body, chunked, request_bytes

from hapax.server.http11 import HTTP11Protocol
from hapax.testing import GatewayThread

LIMITS = {"max_body": "1KiB", "max_header": "2KiB", "header_timeout": "300ms",
          "body_timeout": "300ms", "keepalive": "300ms", "max_concurrent": 2}


def config(**mock: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"},
                   "limits": LIMITS},
        "providers": {"mock": {"kind": "mock", **mock}},
        "models": {"m": {"targets": [{"provider": "mock"}]}},
    }


@pytest.fixture
def gw(hapax_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    return hapax_gateway(config())


def check(resp: RawResponse, status: int) -> RawResponse:
    """Every response, errors included, says which request and which provider it was."""
    assert resp.status == status, (resp.status, resp.raw_head, resp.body[:300])
    assert resp.header("x-request-id")
    assert resp.header("x-hapax-provider")
    return resp


def check_error(resp: RawResponse, status: int, code: str | None = None,
                closes: bool = False) -> dict[str, Any]:
    check(resp, status)
    assert resp.header("content-type") == "application/json"
    assert resp.header("x-hapax-provider") == "hapax"
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if status < 500:
        assert err["type"] == "invalid_request_error"
    if code is not None:
        assert err["code"] == code
    if closes:
        assert resp.header("connection") == "close"
    return err


def answer_of(resp: RawResponse) -> str:
    content = resp.json()["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


def still_serving(gw: GatewayThread, prompt: str = "still there?") -> None:
    """A normal request on a fresh connection gets a normal answer."""
    with RawConn(gw.port) as c:
        c.send(request_bytes(body=chat_body(prompt)))
        resp = check(c.read_response(), 200)
        assert resp.header("x-hapax-provider") == "mock"
        assert answer_of(resp) == f"Mock answer to: {prompt}"


def chat(prompt: str, *, headers: list[tuple[str, str]] | None = None, **kw: Any) -> bytes:
    return request_bytes(body=chat_body(prompt, **kw), headers=headers)


# -- malformed request heads -----------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # a TLS ClientHello
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET / HTTP/7.3\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
], ids=["word", "tls", "trailing", "version", "nul", "header-name", "content-length"])
def test_garbage_gets_400_and_close(gw: GatewayThread, garbage: bytes) -> None:
    with RawConn(gw.port) as c:
        c.send(garbage)
        err = check_error(c.read_response(), 400, "bad_http_request", closes=True)
        assert err["message"].startswith("malformed HTTP request")
        assert c.closed_by_server()
    still_serving(gw)


def test_upgrade_header_is_ignored(gw: GatewayThread) -> None:
    # RFC 9110 §7.8: a server may ignore Upgrade and answer in HTTP/1.1 (curl --http2
    # on http:// asks for h2c this way); the connection goes on as HTTP/1.1.
    with RawConn(gw.port) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
               + request_bytes("GET", "/nope"))
        assert check(c.read_response("GET"), 200).json()["status"] == "ok"
        check_error(c.read_response("GET"), 404, "unknown_url")
        c.send(chat("still HTTP/1.1"))
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: still HTTP/1.1"


def test_upgrade_with_a_body_is_refused(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes(body=chat_body("upgrade me"),
                             headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")]))
        check_error(c.read_response(), 400, "upgrade_not_supported", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_giant_header_value_in_pieces_gets_431(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        # Never finish the header: the server must refuse once the head passes the limit,
        # not wait for a line end that may never come.
        for _ in range(16):
            c.send(b"a" * 256)
        check_error(c.read_response(), 431, "header_too_large", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_many_headers_get_431(gw: GatewayThread) -> None:
    headers = [(f"X-Header-{i}", "v" * 20) for i in range(120)]
    with RawConn(gw.port) as c:
        c.send(chat("hi", headers=headers))
        check_error(c.read_response(), 431, "header_too_large", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_long_url_gets_431(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes("GET", "/healthz?" + "q" * 3000))
        check_error(c.read_response("GET"), 431, "header_too_large", closes=True)
    still_serving(gw)


def test_pipelined_bodies_do_not_count_as_head(gw: GatewayThread) -> None:
    # Three requests near the body limit and the start of a fourth in one write: together
    # they pass max_header, but only the fourth's head counts against it.
    body = chat_body("x" * 800)
    req = request_bytes(body=body)
    with RawConn(gw.port) as c:
        c.send(req * 3 + req[:40])
        for _ in range(3):
            assert answer_of(check(c.read_response(), 200)).endswith("x" * 800)
        c.send(req[40:])
        assert answer_of(check(c.read_response(), 200)).endswith("x" * 800)


# -- request bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"zz\r\n{}\r\n0\r\n\r\n",  # chunk size is not hex
    b"5\r\n{\"a\":XX0\r\n\r\n",  # chunk data not followed by CRLF
    b"2\r\n{}0\r\n\r\n",  # same, shorter
    b"-1\r\n{}\r\n0\r\n\r\n",
], ids=["hex", "missing-crlf", "missing-crlf-short", "negative"])
def test_bad_chunked_framing_gets_400(gw: GatewayThread, body: bytes) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes(headers=[("Transfer-Encoding", "chunked")], body=body,
                             content_length=False) + body)
        check_error(c.read_response(), 400, "bad_http_request", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


@pytest.mark.parametrize(("body", "code", "param"), [
    (b"{not json", "invalid_json", None),
    (b"", "invalid_json", None),
    (b"[1, 2]", None, None),
    (b'"a string"', None, None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_model", "model"),
    (b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}', "missing_model", "model"),
], ids=["garbage", "empty", "array", "string", "no-model", "empty-model"])
def test_bad_json_gets_400_and_keeps_the_connection(gw: GatewayThread, body: bytes,
                                                   code: str | None, param: str | None) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes(body=body))
        err = check_error(c.read_response(), 400, code)
        assert err["param"] == param
        # A well-framed request with a bad body does not spoil the connection.
        c.send(chat("next"))
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: next"
    still_serving(gw)


def test_content_length_over_limit_answered_before_the_body(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes(headers=[("Content-Length", "5000")]))
        check_error(c.read_response(), 413, "request_too_large", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_content_length_over_limit_with_expect_gets_413_not_100(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes(headers=[("Content-Length", "5000"), ("Expect", "100-continue")]))
        # read_response fails on an interim 100: the client must not be invited to send.
        check_error(c.read_response(), 413, "request_too_large", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def send_in_pieces(c: RawConn, data: bytes, size: int = 8192) -> None:
    for i in range(0, len(data), size):
        c.send(data[i:i + size])


def test_413_is_readable_when_the_client_sends_the_body_anyway(gw: GatewayThread) -> None:
    # The server refuses after the head, but the client uploads 2 MiB regardless, then
    # reads.  The server must keep reading (and discarding) for a while: closing with
    # unread input resets the connection, which breaks the upload and can destroy the
    # 413 before the client reads it.
    body = b"x" * (2 * 1024 * 1024)
    with RawConn(gw.port) as c:
        send_in_pieces(c, request_bytes(body=body))
        check_error(c.read_response(), 413, "request_too_large", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_chunked_body_over_limit_gets_413(gw: GatewayThread) -> None:
    body = chunked(b"y" * (2 * 1024 * 1024), 4096)
    with RawConn(gw.port) as c:
        send_in_pieces(c, request_bytes(headers=[("Transfer-Encoding", "chunked")], body=body,
                                        content_length=False) + body)
        check_error(c.read_response(), 413, "request_too_large", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_chunked_body_is_served(gw: GatewayThread) -> None:
    body = chunked(chat_body("chunked hello"), 7)
    with RawConn(gw.port) as c:
        c.send(request_bytes(headers=[("Transfer-Encoding", "chunked")], body=body,
                             content_length=False) + body)
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: chunked hello"
        # The connection stays usable after a chunked request.
        c.send(chat("after"))
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: after"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_in_tiny_writes_is_served(gw: GatewayThread, framing: str) -> None:
    payload = chat_body("slowly, byte by byte")
    if framing == "chunked":
        body = chunked(payload, 3)
        data = request_bytes(headers=[("Transfer-Encoding", "chunked")], body=body,
                             content_length=False) + body
    else:
        data = request_bytes(body=payload)
    with RawConn(gw.port) as c:
        for i in range(0, len(data), 2):
            c.send(data[i:i + 2])
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: slowly, byte by byte"


def test_expect_100_continue(gw: GatewayThread) -> None:
    body = chat_body("after continue")
    with RawConn(gw.port) as c:
        c.send(request_bytes(headers=[("Expect", "100-continue"),
                                      ("Content-Length", str(len(body)))]))
        interim = c.read_response(interim=True)
        assert (interim.version, interim.status) == ("HTTP/1.1", 100)
        assert interim.raw_head == b"HTTP/1.1 100 Continue"
        c.send(body)
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: after continue"


@pytest.mark.parametrize("latency", ["0s", "500ms"], ids=["fast", "slower-than-body-timeout"])
def test_expect_100_continue_behind_a_pipelined_request(
        hapax_gateway: Callable[..., GatewayThread], latency: str) -> None:
    # The expectation arrives while the connection is busy: the 100 is owed once the
    # earlier response is out (or the client waits for it in vain), and the client's wait
    # until then is no body timeout.
    gw = hapax_gateway(config(latency=latency))
    body = chat_body("second")
    with RawConn(gw.port) as c:
        c.send(chat("first") + request_bytes(headers=[("Expect", "100-continue"),
                                                      ("Content-Length", str(len(body)))]))
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: first"
        assert c.read_response(interim=True).status == 100
        c.send(body)
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: second"


# -- connections ---------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(gw: GatewayThread) -> None:
    prompts = ["one", "two", "three"]
    with RawConn(gw.port) as c:
        c.send(b"".join(chat(p) for p in prompts))
        ids = set()
        for p in prompts:
            resp = check(c.read_response(), 200)
            assert answer_of(resp) == f"Mock answer to: {p}"
            ids.add(resp.header("x-request-id"))
        assert len(ids) == 3


def test_pipelined_requests_mixed_with_errors(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(chat("first") + request_bytes("GET", "/nope") + request_bytes(body=b"[]")
               + request_bytes("HEAD", "/healthz") + chat("last"))
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: first"
        check_error(c.read_response("GET"), 404, "unknown_url")
        check_error(c.read_response(), 400)
        assert check(c.read_response("HEAD"), 200).body == b""
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: last"


def test_keep_alive_serves_many_requests(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        for i in range(5):
            c.send(chat(f"request {i}"))
            resp = check(c.read_response(), 200)
            assert resp.header("connection") is None
            assert answer_of(resp) == f"Mock answer to: request {i}"


def test_connection_close_is_honoured(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(chat("bye", headers=[("Connection", "close")]))
        resp = check(c.read_response(), 200)
        assert resp.header("connection") == "close"
        assert answer_of(resp) == "Mock answer to: bye"
        assert c.closed_by_server()


def test_http10_closes_unless_keep_alive(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes("GET", "/healthz", version="HTTP/1.0"))
        resp = check(c.read_response("GET"), 200)
        assert resp.header("connection") == "close"
        assert resp.json()["status"] == "ok"
        assert c.closed_by_server()
    with RawConn(gw.port) as c:
        for _ in range(2):
            c.send(request_bytes("GET", "/healthz", headers=[("Connection", "keep-alive")],
                                 version="HTTP/1.0"))
            resp = check(c.read_response("GET"), 200)
            assert resp.header("connection") == "keep-alive"


def test_http10_stream_is_close_delimited(gw: GatewayThread) -> None:
    # No chunked coding for an HTTP/1.0 client: the events are the body, the close ends it.
    with RawConn(gw.port) as c:
        c.send(request_bytes(body=chat_body("old client", stream=True),
                             headers=[("Connection", "keep-alive")], version="HTTP/1.0"))
        resp = check(c.read_response(), 200)
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") is None
        assert resp.header("connection") == "close"
        assert resp.body.startswith(b"data: {") and resp.body.endswith(b"data: [DONE]\n\n")


def test_client_closing_mid_request_abandons_it(
        hapax_gateway: Callable[..., GatewayThread]) -> None:
    # A client that closes its side while waiting has given up (as nginx sees it): the
    # request is abandoned, not answered into the void, and the connection closed.
    gw = hapax_gateway(config(latency="2s"))
    with RawConn(gw.port) as c:
        c.send(chat("half") + chat("closed"))
        assert wait_for(lambda: gw.gateway.in_flight == 1)
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_to_eof() == b""
    assert wait_for(lambda: gw.gateway.in_flight == 0)
    still_serving(gw)


# -- timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("part", [
    b"P",
    b"POST /v1/chat/comp",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le",
], ids=["one-byte", "request-line", "headers"])
def test_half_a_head_gets_408(gw: GatewayThread, part: bytes) -> None:
    with RawConn(gw.port) as c:
        c.send(part)
        check_error(c.read_response(), 408, "request_timeout", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_half_a_second_head_gets_408(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(chat("first") + b"POST /v1/chat/completions HTTP/1.1\r\nHo")
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: first"
        check_error(c.read_response(), 408, "request_timeout", closes=True)
        assert c.closed_by_server()


def test_silent_connection_is_closed(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        # Nothing to answer: no 408 for a client that never asked anything, just a close.
        assert c.read_to_eof() == b""
    still_serving(gw)


def test_idle_keep_alive_connection_is_closed(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(chat("once"))
        check(c.read_response(), 200)
        assert c.read_to_eof() == b""
    still_serving(gw)


def test_stalled_body_gets_408(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes(headers=[("Content-Length", "100")]) + b'{"model": "m"')
        check_error(c.read_response(), 408, "request_timeout", closes=True)
        assert c.closed_by_server()
    still_serving(gw)


def test_slow_but_steady_body_is_not_timed_out(gw: GatewayThread) -> None:
    # body_timeout bounds the gap between reads, not the whole body.
    body = chat_body("patience")
    with RawConn(gw.port) as c:
        c.send(request_bytes(headers=[("Content-Length", str(len(body)))]))
        step = len(body) // 8 + 1  # 8 gaps of 50ms: longer than body_timeout in all
        for i in range(0, len(body), step):
            time.sleep(0.05)
            c.send(body[i:i + step])
        assert answer_of(check(c.read_response(), 200)) == "Mock answer to: patience"


# -- gateway answers ----------------------------------------------------------------------


@pytest.mark.parametrize("rid, sent", [
    ("req-from-plugin", "req-from-plugin"),
    ("bad\r\nx-injected: 1", "bad??x-injected: 1"),  # no header injection
    ("snow\u2603man", "snow?man"),  # past latin-1: could not be written at all
    ("x" * 300, "x" * 200),
    ("\n", "?"),
])
def test_request_id_set_by_a_plugin_is_made_header_safe(
        hapax_gateway: Callable[..., GatewayThread], rid: str, sent: str) -> None:
    class SetId:
        def hapax_request_received(self, exchange: Any) -> None:
            exchange.request_id = rid

    gw = hapax_gateway(config(), plugins=[("set_id", SetId())])
    with RawConn(gw.port) as c:
        for _ in range(2):  # and the connection goes on
            c.send(chat("hi"))
            resp = check(c.read_response(), 200)
            assert resp.header("x-request-id") == sent
            assert resp.header("x-injected") is None
    still_serving(gw)


def test_concurrency_limit_gets_503(hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(config(latency="500ms"))
    conns = [RawConn(gw.port) for _ in range(4)]
    try:
        for i, c in enumerate(conns[:2]):
            c.send(chat(f"concurrent {i}"))
        # Both slow requests are in the gateway (max_concurrent: 2) before the others come.
        assert wait_for(lambda: gw.gateway.in_flight == 2)
        for i, c in enumerate(conns[2:], 2):
            c.send(chat(f"concurrent {i}"))
        responses = [c.read_response() for c in conns]
    finally:
        for c in conns:
            c.close()
    assert [r.status for r in responses] == [200, 200, 503, 503]
    for i, resp in enumerate(responses[:2]):
        assert answer_of(check(resp, 200)) == f"Mock answer to: concurrent {i}"
    for resp in responses[2:]:
        assert resp.header("retry-after") == "1"
        err = check_error(resp, 503, "overloaded")
        assert err["type"] == "server_error"
    still_serving(gw)


def test_unknown_path_gets_404(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes("GET", "/v2/nothing/here"))
        err = check_error(c.read_response("GET"), 404, "unknown_url")
        assert "/v2/nothing/here" in err["message"]
        c.send(chat("same connection"))
        check(c.read_response(), 200)


def test_wrong_method_gets_405_with_allow(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes("GET", "/v1/chat/completions"))
        resp = c.read_response("GET")
        check_error(resp, 405, "method_not_allowed")
        assert resp.header("allow") == "POST"
        c.send(request_bytes("DELETE", "/healthz"))
        resp = c.read_response("DELETE")
        check_error(resp, 405, "method_not_allowed")
        assert resp.header("allow") == "GET, HEAD"


def test_head_healthz_has_length_and_no_body(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes("GET", "/healthz"))
        full = check(c.read_response("GET"), 200)
        c.send(request_bytes("HEAD", "/healthz"))
        head = check(c.read_response("HEAD"), 200)
        assert head.header("content-length") == full.header("content-length")
        assert int(full.header("content-length") or 0) == len(full.body) > 0
        # Nothing follows the head: the next bytes are the next response.
        c.send(request_bytes("GET", "/nope"))
        check_error(c.read_response("GET"), 404)


def test_absolute_form_target_is_served(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(request_bytes("GET", f"http://127.0.0.1:{gw.port}/healthz?x=1"))
        assert check(c.read_response("GET"), 200).json()["status"] == "ok"


def test_client_request_id_is_echoed(gw: GatewayThread) -> None:
    with RawConn(gw.port) as c:
        c.send(chat("tagged", headers=[("X-Request-Id", "trace-123")]))
        assert check(c.read_response(), 200).header("x-request-id") == "trace-123"
        c.send(request_bytes("GET", "/nope", headers=[("X-Request-Id", "trace-456")]))
        assert check(c.read_response("GET"), 404).header("x-request-id") == "trace-456"


def test_repeated_headers_are_joined_and_latin1_is_kept(gw: GatewayThread) -> None:
    # Header names match in any letter case, a repeated header's values are joined with
    # ", " in order, and values are latin-1: the echoed id comes back byte for byte.
    with RawConn(gw.port) as c:
        c.send(request_bytes("GET", "/nope?x=1", headers=[("X-REQUEST-ID", "first"),
                                                          ("x-Request-Id", "s\xe9cond")]))
        resp = check(c.read_response("GET"), 404)
        assert b"\r\nx-request-id: first, s\xe9cond\r\n" in resp.raw_head


# -- streaming ------------------------------------------------------------------------------


class Gate:
    """A chunk hook that holds every event after the first until the test opens it, so
    the test can prove the first event reached the socket while the stream was open."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None
        self.calls = 0

    def _event(self) -> asyncio.Event:
        if self.event is None:
            self.event = asyncio.Event()
        return self.event

    async def hapax_transform_chunk(self, chunk: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls > 1:
            await asyncio.wait_for(self._event().wait(), 10)

    def open(self, gw: GatewayThread) -> None:
        assert gw.loop is not None
        gw.loop.call_soon_threadsafe(lambda: self._event().set())


def stream_request(prompt: str) -> bytes:
    return chat(prompt, stream=True)


def test_sse_stream_is_chunked_event_by_event(
        hapax_gateway: Callable[..., GatewayThread]) -> None:
    gate = Gate()
    gw = hapax_gateway(config(chunks=4, chunk_delay="10ms"), plugins=[("gate", gate)])
    with RawConn(gw.port) as c:
        c.send(stream_request("stream me"))
        head = check(c.read_head(), 200)
        assert head.header("transfer-encoding") == "chunked"
        assert head.header("content-length") is None
        assert head.header("content-type") == "text/event-stream"
        assert head.header("x-hapax-provider") == "mock"
        # The first event arrives while the gate still holds the rest of the stream: the
        # listener flushes event by event instead of buffering the response.
        first = c.read_chunk()
        assert gate.calls >= 1
        gate.open(gw)
        chunks = [first]
        while chunk := c.read_chunk():
            chunks.append(chunk)
    # One SSE event per HTTP chunk, in order, ending with [DONE].
    assert all(ch.startswith(b"data: ") and ch.endswith(b"\n\n") and ch.count(b"\n\n") == 1
               for ch in chunks), chunks
    assert chunks[-1] == b"data: [DONE]\n\n"
    events = [orjson.loads(ch[6:]) for ch in chunks[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == "Mock answer to: stream me"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(events) == 1 + 4 + 1


def test_stream_without_gate(hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(config(chunks=3, chunk_delay="5ms"))
    with RawConn(gw.port) as c:
        for prompt in ("first stream", "second stream"):  # keep-alive after a stream
            c.send(stream_request(prompt))
            resp = check(c.read_response(), 200)
            assert resp.chunks is not None and resp.chunks[-1] == b"data: [DONE]\n\n"
            text = "".join(orjson.loads(ch[6:])["choices"][0]["delta"].get("content") or ""
                           for ch in resp.chunks[:-1])
            assert text == f"Mock answer to: {prompt}"


def test_disconnect_mid_stream_spares_other_streams(
        hapax_gateway: Callable[..., GatewayThread]) -> None:
    gw = hapax_gateway(config(chunks=20, chunk_delay="20ms"))
    quitter, stayer = RawConn(gw.port), RawConn(gw.port)
    try:
        quitter.send(stream_request("I will leave"))
        stayer.send(stream_request("I will stay"))
        check(quitter.read_head(), 200)
        assert quitter.read_chunk().startswith(b"data: ")
        check(stayer.read_head(), 200)
        assert stayer.read_chunk().startswith(b"data: ")
        # An abortive close (RST), the harshest way to leave.
        quitter.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                                b"\x00\x00\x00\x00")
        quitter.close()
        chunks = []
        while chunk := stayer.read_chunk():
            chunks.append(chunk)
        assert chunks[-1] == b"data: [DONE]\n\n"
        text = "".join(orjson.loads(ch[6:])["choices"][0]["delta"].get("content") or ""
                       for ch in chunks[:-1])
        assert text.endswith("I will stay")  # the first chunk (role only) was read above
    finally:
        quitter.close()
        stayer.close()
    # The abandoned request is finished, not leaked.
    deadline = time.monotonic() + 5
    while gw.gateway.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.gateway.in_flight == 0
    still_serving(gw)


def test_concurrent_clients_each_get_their_own_answer(gw: GatewayThread) -> None:
    results: dict[int, str] = {}

    def client(i: int) -> None:
        with RawConn(gw.port) as c:
            for j in range(3):
                c.send(chat(f"client {i} request {j}"))
                results[i * 10 + j] = answer_of(check(c.read_response(), 200))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i * 10 + j: f"Mock answer to: client {i} request {j}"
                       for i in range(2) for j in range(3)}


@pytest.mark.parametrize("how", ["after_answer", "mid_request", "bad_request"])
def test_closed_connections_are_freed_without_the_garbage_collector(
        gw: GatewayThread, how: str) -> None:
    # A closed connection's objects must go as soon as it closes, by reference counting:
    # the worker's garbage collector runs a full pass only every ~2M requests, so a
    # reference cycle per connection grew memory with every connection until then
    # (benchmarks/load, issue 6's "no RSS growth").
    with collector_off():
        base = alive(HTTP11Protocol)
        for i in range(20):
            with RawConn(gw.port) as c:
                if how == "after_answer":
                    c.send(chat(f"request {i}"))
                    check(c.read_response(), 200)
                elif how == "mid_request":
                    c.send(request_bytes(body=chat_body())[:-5])  # the body is incomplete
                else:
                    c.send(b"GARBAGE\r\n\r\n")
                    check_error(c.read_response(), 400, "bad_http_request", closes=True)
        assert wait_for(lambda: alive(HTTP11Protocol) <= base), \
            f"{alive(HTTP11Protocol) - base} closed connections still in memory"
    still_serving(gw)
