"""Compressed request bodies (Content-Encoding: gzip, deflate) through a real gateway:
decoded before the pipeline, sent uncompressed to the provider, bounded by max_body;
other codings and corrupt bodies get a clear error in the front door's format."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from http_raw import RawConn, RawResponse, chat_body, request_bytes

from hapax.testing import GatewayThread
from hapax.testing.fake_provider import FakeProvider

GatewayFactory = Callable[..., GatewayThread]


def config(base_url: str, max_body: str = "4MiB") -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"},
                   "limits": {"max_body": max_body}},
        "providers": {"up": {"kind": "openai", "base_url": base_url}},
        "models": {"m": {"targets": [{"provider": "up", "model": "up-model"}]}},
    }


@pytest.fixture
def gw(hapax_gateway: GatewayFactory, fake_provider: FakeProvider) -> GatewayThread:
    return hapax_gateway(config(fake_provider.base_url))


def send(gw: GatewayThread, body: bytes, coding: str, path: str = "/v1/chat/completions",
         extra: list[tuple[str, str]] | None = None) -> RawResponse:
    with RawConn(gw.port) as c:
        c.send(request_bytes(path=path, body=body,
                             headers=[("Content-Encoding", coding), *(extra or [])]))
        resp = c.read_response()
        # The connection stays usable after an error.
        c.send(request_bytes(body=chat_body("after")))
        assert c.read_response().status == 200
        return resp


def answer(resp: RawResponse) -> str:
    assert resp.status == 200, resp.body
    return resp.json()["choices"][0]["message"]["content"]  # type: ignore[no-any-return]


def error(resp: RawResponse, status: int, code: str) -> str:
    assert resp.status == status, resp.body
    assert resp.header("content-type") == "application/json"
    err = resp.json()["error"]
    assert err["code"] == code, err
    return err["message"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("coding, compress", [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("GZIP", gzip.compress),
    ("deflate", zlib.compress),  # RFC 9110's deflate: the zlib format
    ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, also seen as deflate
    ("identity", lambda b: b),
    ("gzip, gzip", lambda b: gzip.compress(gzip.compress(b))),
    ("deflate, gzip", lambda b: gzip.compress(zlib.compress(b))),
], ids=["gzip", "x-gzip", "upper", "zlib", "raw-deflate", "identity", "twice", "two"])
def test_a_compressed_body_is_decoded_and_sent_plain(
        gw: GatewayThread, fake_provider: FakeProvider, coding: str,
        compress: Callable[[bytes], bytes]) -> None:
    body = chat_body("squeezed")
    resp = send(gw, compress(body), coding)
    assert "squeezed" in answer(resp)
    upstream = fake_provider.requests[0]
    assert upstream.json["model"] == "up-model"  # the gateway read the decoded JSON
    assert upstream.json["messages"] == [{"role": "user", "content": "squeezed"}]
    assert "content-encoding" not in upstream.headers


def test_a_multi_member_gzip_body_is_read_whole(gw: GatewayThread) -> None:
    body = chat_body("two members")
    half = len(body) // 2
    assert "two members" in answer(send(gw, gzip.compress(body[:half]) +
                                        gzip.compress(body[half:]), "gzip"))


def test_an_unknown_coding_is_415(gw: GatewayThread) -> None:
    message = error(send(gw, b"\x00\x01", "br"), 415, "unsupported_content_encoding")
    assert "'br'" in message and "gzip or deflate" in message


@pytest.mark.parametrize("body", [
    chat_body("not compressed at all"),
    gzip.compress(chat_body("cut short"))[:-12],
    gzip.compress(chat_body("with trailing junk")) + b"junk",
], ids=["plain", "truncated", "trailing"])
def test_a_body_that_is_not_what_its_coding_says_is_400(gw: GatewayThread,
                                                         body: bytes) -> None:
    message = error(send(gw, body, "gzip"), 400, "invalid_body")
    assert "not valid gzip data" in message


def test_a_body_that_inflates_past_max_body_is_413(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider) -> None:
    """A zip bomb: 64 KiB on the wire, 64 MiB inflated; refused at the 1 MiB limit."""
    gw = hapax_gateway(config(fake_provider.base_url, max_body="1MiB"))
    padding = " " * (64 * 1024 * 1024)
    bomb = gzip.compress(b'{"model": "m", "messages": []' + padding.encode() + b"}",
                         compresslevel=9)
    assert len(bomb) < 128 * 1024
    message = error(send(gw, bomb, "gzip"), 413, "request_too_large")
    assert "1048576 bytes once decompressed" in message
    assert not fake_provider.requests[:-1]  # only the "after" request reached the provider
    # Just under the limit is fine.
    body = chat_body("x" * (1024 * 1024 - 200))
    assert len(body) < 1024 * 1024
    answer(send(gw, gzip.compress(body), "gzip"))


def test_errors_on_the_anthropic_route_are_in_anthropic_format(gw: GatewayThread) -> None:
    body = orjson.dumps({"model": "m", "max_tokens": 8,
                         "messages": [{"role": "user", "content": "hi"}]})
    resp = send(gw, body, "zstd", path="/v1/messages",
                extra=[("anthropic-version", "2023-06-01")])
    assert resp.status == 415
    err = resp.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "'zstd'" in err["error"]["message"]
    assert resp.header("request-id")
    ok = send(gw, gzip.compress(body), "gzip", path="/v1/messages",
              extra=[("anthropic-version", "2023-06-01")])
    assert ok.status == 200, ok.body
    assert ok.json()["type"] == "message"
