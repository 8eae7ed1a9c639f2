"""HTTP/1.1 message handling (hapax._core.http1): one suite over both twins, plus
twin-vs-twin properties.  The listener's behaviour over real sockets is tests/test_http11.py."""

from __future__ import annotations

from http import HTTPStatus
from types import ModuleType
from typing import Any

import pytest
from core_twins import needs_c, twins
from hypothesis import given
from hypothesis import strategies as st

impl = twins("http1")

OPENAI_HEAD = [
    (b"Host", b"127.0.0.1:8080"), (b"Content-Type", b"application/json"),
    (b"Content-Length", b"412"), (b"User-Agent", b"OpenAI/Python 1.50.0"),
    (b"Accept", b"application/json"), (b"Authorization", b"Bearer sk-0123456789"),
    (b"X-Stainless-Lang", b"python"), (b"X-Stainless-Retry-Count", b"0"),
]


def head_of(impl: ModuleType, url: bytes | list[bytes] = b"/",
            headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    head = impl.RequestHead()
    for piece in [url] if isinstance(url, bytes) else url:
        head.on_url(piece)
    for name, value in headers or []:
        head.on_header(name, value)
    return head


# -- collecting the head ----------------------------------------------------------------


def test_head_collects_url_pieces_and_headers(impl: ModuleType) -> None:
    head = head_of(impl, [b"/v1/chat/", b"completions?a=1"], OPENAI_HEAD)
    assert head.url == b"/v1/chat/completions?a=1"
    assert head.headers == OPENAI_HEAD
    # The target, then each header line's name, value, ": " and CRLF.
    assert head.size == 24 + sum(len(n) + len(v) + 4 for n, v in OPENAI_HEAD)


def test_reset_starts_a_new_message(impl: ModuleType) -> None:
    head = head_of(impl, b"/a", [(b"X", b"y")])
    head.reset()
    assert (head.url, head.size, head.headers) == (b"", 0, [])
    head.on_url(b"/b")
    assert head.finish() == ({}, "/b", None)


def test_headers_is_a_copy(impl: ModuleType) -> None:
    head = head_of(impl, b"/", [(b"A", b"1")])
    head.headers.append((b"B", b"2"))
    assert head.headers == [(b"A", b"1")]


def test_callbacks_take_bytes_only(impl: ModuleType) -> None:
    if impl.__name__.endswith("_py"):
        pytest.skip("the spec does not check types; httptools only passes bytes")
    head = impl.RequestHead()
    with pytest.raises(TypeError):
        head.on_header("a", b"b")
    with pytest.raises(TypeError):
        head.on_url(None)


# -- scan: what the head says about the body ------------------------------------------------


@pytest.mark.parametrize("value,limit,flags", [
    (b"0", 10, ""),
    (b" 0 ", 10, ""),
    (b"10", 10, "framed"),
    (b"11", 10, "framed too-large"),
    (b"999999999999999999", 10**18, "framed"),        # 18 digits: read in place
    (b"1000000000000000001", 10**18, "framed too-large"),  # 19: int() reads it
    (b"123456789012345678901234567890", 10, "framed too-large"),
    (b" 11\t", 10, "framed too-large"),  # what int() accepts, as it does
    (b"1_1", 10, "framed too-large"),
    (b"+11", 10, "framed too-large"),
    (b"-11", 10, "framed"),
    (b"", 10, "framed"),
    (b"abc", 10, "framed"),              # httptools refuses it before this runs
    (b"\xd9\xa1", 0, "framed"),          # no non-ASCII digits in bytes
], ids=lambda v: repr(v) if isinstance(v, bytes) else None)
def test_scan_content_length(impl: ModuleType, value: bytes, limit: int, flags: str) -> None:
    expected = (impl.BODY_FRAMED if "framed" in flags else 0) | (
        impl.BODY_TOO_LARGE if "too-large" in flags else 0)
    for name in (b"Content-Length", b"content-length", b"CONTENT-LENGTH"):
        assert head_of(impl, b"/", [(name, value)]).scan(limit) == expected


def test_scan_expect_and_transfer_encoding(impl: ModuleType) -> None:
    def scan(*headers: tuple[bytes, bytes]) -> int:
        return int(head_of(impl, b"/", list(headers)).scan(1024))

    assert scan() == 0
    assert scan(*OPENAI_HEAD) == impl.BODY_FRAMED
    assert scan((b"Expect", b"100-continue")) == impl.EXPECT_CONTINUE
    assert scan((b"EXPECT", b"100-Continue")) == impl.EXPECT_CONTINUE
    assert scan((b"Expect", b"100-continue ")) == 0  # exactly, as httptools passes it
    assert scan((b"Expect", b"200-ok")) == 0
    assert scan((b"Expects", b"100-continue")) == 0
    assert scan((b"Transfer-Encoding", b"chunked")) == impl.BODY_FRAMED
    assert scan((b"transfer-encoding", b"")) == impl.BODY_FRAMED
    assert scan((b"Content-Length", b"2000"), (b"Expect", b"100-continue")) == (
        impl.BODY_TOO_LARGE | impl.BODY_FRAMED | impl.EXPECT_CONTINUE)
    assert (impl.BODY_TOO_LARGE, impl.EXPECT_CONTINUE, impl.BODY_FRAMED) == (1, 2, 4)


# -- finish: what the Exchange needs --------------------------------------------------------


def test_finish_lowers_names_and_joins_repeats(impl: ModuleType) -> None:
    headers, path, query = head_of(impl, b"/v1/chat/completions", [
        *OPENAI_HEAD, (b"accept", b"text/plain"), (b"ACCEPT", b""), (b"X-Id", b"caf\xe9"),
    ]).finish()
    assert (path, query) == ("/v1/chat/completions", None)
    assert headers == {
        "host": "127.0.0.1:8080", "content-type": "application/json",
        "content-length": "412", "user-agent": "OpenAI/Python 1.50.0",
        "accept": "application/json, text/plain, ", "authorization": "Bearer sk-0123456789",
        "x-stainless-lang": "python", "x-stainless-retry-count": "0", "x-id": "café",
    }
    assert list(headers) == ["host", "content-type", "content-length", "user-agent", "accept",
                             "authorization", "x-stainless-lang", "x-stainless-retry-count",
                             "x-id"]


def test_finish_decodes_names_as_latin1(impl: ModuleType) -> None:
    # httptools refuses such names; if one came through it would be read as latin-1.
    headers, _, _ = head_of(impl, b"/", [(b"X-\xc0\xdf", b"1"), (b"x-\xe0\xdf", b"2")]).finish()
    assert headers == {"x-àß": "1, 2"}


@pytest.mark.parametrize("url,path,query", [
    (b"/", "/", None),
    (b"/v1/models", "/v1/models", None),
    (b"/a?b=1&c=2", "/a", "b=1&c=2"),
    (b"/a?", "/a", None),
    (b"/a?b?c", "/a", "b?c"),
    (b"/caf\xe9?q=\xff", "/café", "q=ÿ"),
    (b"//x/y", "//x/y", None),
    (b"http://127.0.0.1:8080/healthz?x=1", "/healthz", "x=1"),
    (b"http://host/", "/", None),
    (b"http://host", "/", None),
    (b"http://host?x=1", "/", None),
    (b"http://", "/", None),
    (b"https://a//b", "//b", None),
    (b"a//b/c?d", "/c", "d"),
    (b"http:/x/y", "/", None),
    (b"*", "/", None),
    (b"?x", "/", None),
    (b"", "/", None),
], ids=lambda v: repr(v) if isinstance(v, bytes) else None)
def test_finish_splits_the_target(impl: ModuleType, url: bytes, path: str,
                                  query: str | None) -> None:
    assert head_of(impl, url).finish() == ({}, path, query)


# -- the response head ----------------------------------------------------------------------

DATE = b"date: Thu, 26 Nov 2026 09:18:03 GMT\r\nserver: hapax\r\n"


def test_response_head(impl: ModuleType) -> None:
    out = impl.response_head(200, [(b"content-type", b"application/json")],
                             [(b"x-ratelimit-remaining", b"9")], "req_0001", "openai", DATE,
                             b"alt-svc: h3=\":8443\"\r\n", b"content-length: 2\r\n",
                             b"connection: close\r\n", b"{}")
    assert out == (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                   b"x-ratelimit-remaining: 9\r\nx-request-id: req_0001\r\n"
                   b"x-hapax-provider: openai\r\n" + DATE + b"alt-svc: h3=\":8443\"\r\n"
                   b"content-length: 2\r\nconnection: close\r\n\r\n{}")


def test_response_head_minimal(impl: ModuleType) -> None:
    out = impl.response_head(404, [], [], "r", None, b"", b"", b"", b"")
    assert out == (b"HTTP/1.1 404 Not Found\r\nx-request-id: r\r\n"
                   b"x-hapax-provider: hapax\r\n\r\n")


@pytest.mark.parametrize("status,line", [
    (200, b"HTTP/1.1 200 OK\r\n"),
    (HTTPStatus.TOO_MANY_REQUESTS, b"HTTP/1.1 429 Too Many Requests\r\n"),
    (499, b"HTTP/1.1 499 Unknown\r\n"),
    (599, b"HTTP/1.1 599 Unknown\r\n"),
])
def test_status_line(impl: ModuleType, status: int, line: bytes) -> None:
    assert impl.status_line(status) == line
    assert impl.response_head(status, [], [], "r", None, b"", b"", b"", b"").startswith(line)


def test_response_head_encodings(impl: ModuleType) -> None:
    # The request id in latin-1 (it came in as a header), the provider name in UTF-8.
    out = impl.response_head(200, [], [], "trac\xe9", "prov\u00e9der-\u4e2d", b"", b"", b"",
                             b"")
    assert b"x-request-id: trac\xe9\r\n" in out
    assert "x-hapax-provider: provéder-中\r\n".encode() in out
    with pytest.raises(UnicodeEncodeError):
        impl.response_head(200, [], [], "\u4e2d", None, b"", b"", b"", b"")


@pytest.mark.parametrize("headers", [
    ((b"a", b"1"), (b"b", b"2")),                 # a tuple of pairs
    [[b"a", b"1"], [b"b", b"2"]],                 # pairs as lists
    [(b"a", bytearray(b"1")), (b"b", b"2")],      # a bytes-like value
], ids=["tuple", "lists", "bytearray"])
def test_response_head_takes_what_the_spec_takes(impl: ModuleType, headers: Any) -> None:
    out = impl.response_head(200, headers, [], "r", None, b"", b"", b"", b"", bytearray(b"!"))
    assert out == (b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nx-request-id: r\r\n"
                   b"x-hapax-provider: hapax\r\n\r\n!")
    assert type(out) is bytes


def test_response_head_refuses_str_headers(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.response_head(200, [("a", "1")], [], "r", None, b"", b"", b"", b"")
    with pytest.raises(TypeError):
        impl.response_head(200, [], [], "r", None, "date", b"", b"", b"")


# -- stream chunks --------------------------------------------------------------------------


@pytest.mark.parametrize("batch,framed", [
    ([b"data: 1\n\n"], b"9\r\ndata: 1\n\n\r\n"),
    ([b"data: 1\n\n", b"data: 22\n\n"], b"13\r\ndata: 1\n\ndata: 22\n\n\r\n"),
    ([b"x" * 255], b"ff\r\n" + b"x" * 255 + b"\r\n"),
    ([b"x" * 4096], b"1000\r\n" + b"x" * 4096 + b"\r\n"),
    ([b"", b"a", b""], b"1\r\na\r\n"),
])
def test_chunk(impl: ModuleType, batch: list[bytes], framed: bytes) -> None:
    data = b"".join(batch)
    assert impl.chunk(batch) == framed
    assert impl.chunk(batch, b"HEAD\r\n\r\n") == b"HEAD\r\n\r\n" + framed
    assert impl.chunk(batch, b"", False) == data
    assert impl.chunk(batch, b"HEAD\r\n\r\n", chunked=False) == b"HEAD\r\n\r\n" + data


@pytest.mark.parametrize("batch", [[], [b""], [b"", b""]])
def test_chunk_of_nothing_is_nothing(impl: ModuleType, batch: list[bytes]) -> None:
    # Even with a head: an empty chunk would end the body; the head waits for data.
    assert impl.chunk(batch) == b""
    assert impl.chunk(batch, b"HEAD") == b""
    assert impl.chunk(batch, b"HEAD", False) == b""


def test_chunk_takes_what_the_spec_takes(impl: ModuleType) -> None:
    assert impl.chunk((b"ab", bytearray(b"c"))) == b"3\r\nabc\r\n"
    assert impl.chunk([memoryview(b"ab")], b"H") == b"H2\r\nab\r\n"
    with pytest.raises(TypeError):
        impl.chunk(["text"])


# -- the twins agree --------------------------------------------------------------------------

# Bytes that matter to the parsing, plus filler (and latin-1 beyond ASCII).
names = st.one_of(
    st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding", b"Expect",
                     b"EXPECT", b"Host", b"X-Request-Id", b"accept"]),
    st.binary(max_size=12),
)
values = st.one_of(
    st.sampled_from([b"0", b" 0", b"12", b"1_2", b"+3", b"-4", b"99999999999999999999",
                     b"100-continue", b"100-CONTINUE", b"chunked", b"\xe9t\xe9"]),
    st.binary(max_size=16),
)
urls = st.lists(
    st.sampled_from([b"/", b"//", b"?", b"http:", b"h", b"*", b"\xff", b"a=1", b"#"]),
    max_size=12,
).map(b"".join)


@needs_c
@given(url=urls, headers=st.lists(st.tuples(names, values), max_size=10),
       limit=st.integers(0, 2**40))
def test_twins_agree_on_the_request_head(url: bytes, headers: list[tuple[bytes, bytes]],
                                         limit: int) -> None:
    from hapax._core import _http1_c, _http1_py

    c, py = head_of(_http1_c, url, headers), head_of(_http1_py, url, headers)
    assert (c.url, c.size, c.headers) == (py.url, py.size, py.headers)
    assert c.scan(limit) == py.scan(limit)
    assert c.finish() == py.finish()


pairs = st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=6)
lines = st.sampled_from([b"", b"x: y\r\n", DATE])


@needs_c
@given(status=st.integers(100, 999), headers=pairs, extra=pairs,
       request_id=st.text(st.characters(max_codepoint=0xFF), max_size=20),
       provider=st.one_of(st.none(), st.text(max_size=10)), date=lines, alt_svc=lines,
       framing=lines, connection=lines, body=st.binary(max_size=40))
def test_twins_agree_on_the_response_head(status: int, headers: list[tuple[bytes, bytes]],
                                          extra: list[tuple[bytes, bytes]], request_id: str,
                                          provider: str | None, date: bytes, alt_svc: bytes,
                                          framing: bytes, connection: bytes,
                                          body: bytes) -> None:
    from hapax._core import _http1_c, _http1_py

    args = (status, headers, extra, request_id, provider, date, alt_svc, framing, connection,
            body)
    assert _http1_c.response_head(*args) == _http1_py.response_head(*args)


@needs_c
@given(batch=st.lists(st.binary(max_size=300), max_size=5), head=st.binary(max_size=20),
       chunked=st.booleans())
def test_twins_agree_on_chunks(batch: list[bytes], head: bytes, chunked: bool) -> None:
    from hapax._core import _http1_c, _http1_py

    assert _http1_c.chunk(batch, head, chunked) == _http1_py.chunk(batch, head, chunked)
