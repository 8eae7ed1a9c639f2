"""SSE framing (hapax._core.sse): one suite over both twins, plus twin-vs-twin properties."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from itertools import pairwise
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapax._core import NO_EXTENSIONS

needs_c = pytest.mark.skipif(NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")


@pytest.fixture(
    scope="module",  # module scope: hypothesis refuses function-scoped fixtures
    params=[pytest.param("c", marks=needs_c), "py"],
    ids=["c", "py"],
)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    # No importorskip: with extensions enabled, a missing compiled module is a failure.
    return importlib.import_module(f"hapax._core._sse_{request.param}")


def chunk(event: str) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"' + event.encode() + b'"}}]}\n\n'


# A small but realistic stream: role chunk, content chunks, a keep-alive comment, [DONE].
EVENTS = [
    b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n',
    chunk("Hello"),
    b": keep-alive\n\n",
    chunk(" world"),
    b"event: usage\ndata: {\"usage\":1}\n\n",
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)


def feed_all(impl: ModuleType, pieces: Iterator[bytes] | list[bytes]) -> tuple[list[bytes], bytes]:
    decoder = impl.SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events, decoder.flush()


def with_endings(stream: bytes, eol: bytes) -> bytes:
    return stream.replace(b"\n", eol)


# -- framing ----------------------------------------------------------------------------


def test_one_event(impl: ModuleType) -> None:
    decoder = impl.SSEDecoder()
    assert decoder.feed(b"data: hi\n\n") == [b"data: hi\n\n"]
    assert decoder.pending == 0
    assert decoder.flush() == b""


def test_multiple_events_per_feed(impl: ModuleType) -> None:
    decoder = impl.SSEDecoder()
    assert decoder.feed(STREAM) == EVENTS
    assert decoder.pending == 0


def test_incomplete_event_is_held(impl: ModuleType) -> None:
    decoder = impl.SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [b"data: a\n\n"]
    assert decoder.pending == len(b"data: b\n")
    assert decoder.feed(b"\n") == [b"data: b\n\n"]
    assert decoder.pending == 0


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_split_point(impl: ModuleType, eol: bytes) -> None:
    stream = with_endings(STREAM, eol)
    for i in range(len(stream) + 1):
        assert feed_all(impl, [stream[:i], stream[i:]]) == (EVENTS, b""), i


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_pair_of_split_points(impl: ModuleType, eol: bytes) -> None:
    stream = with_endings(b"".join(EVENTS[:3]), eol)
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            pieces = [stream[:i], stream[i:j], stream[j:]]
            assert feed_all(impl, pieces) == (EVENTS[:3], b""), (i, j)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_byte_by_byte(impl: ModuleType, eol: bytes) -> None:
    stream = with_endings(STREAM, eol)
    pieces = [stream[i : i + 1] for i in range(len(stream))]
    assert feed_all(impl, pieces) == (EVENTS, b"")


@pytest.mark.parametrize(
    "pieces",
    [
        [b"data: a\r", b"\n\r\n"],
        [b"data: a\r", b"\n\r", b"\n"],
        [b"data: a\r\n\r", b"\n"],
        [b"data: a\r", b"", b"\n", b"\r", b"", b"\n"],
        [b"data: a\r", b"\r"],  # two lone CRs
        [b"data: a\r", b"\r", b"\n"],
        [b"data: a\r\r"],
        [b"data: a\n\r"],  # LF, then a lone CR
        [b"data: a\r", b"\n\n"],
        [b"data: a\r", b"\n", b"\n"],
    ],
)
def test_line_endings_split_across_feeds(impl: ModuleType, pieces: list[bytes]) -> None:
    decoder = impl.SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    assert events == [b"data: a\n\n"]
    assert decoder.pending == 0


def test_a_trailing_cr_ends_its_line_at_once(impl: ModuleType) -> None:
    # Whether a "\n" follows or not, the "\r" ended a line: a CR-only stream must not
    # have each event wait for the next piece.
    decoder = impl.SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.pending == len(b"data: a\n")
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []  # the rest of "\r\n", not a blank line
    assert decoder.pending == len(b"data: a\n")
    assert decoder.feed(b"\r") == [b"data: a\n\n"]
    assert decoder.pending == 0
    assert decoder.feed(b"\n") == []
    assert decoder.pending == 0


def test_blank_line_runs_are_dropped(impl: ModuleType) -> None:
    stream = b"\n\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n\r\n\r\n\n"
    assert feed_all(impl, [stream]) == ([b"data: a\n\n", b"data: b\n\n"], b"")
    decoder = impl.SSEDecoder()
    assert decoder.feed(b"\n\n\n\n") == []
    assert decoder.pending == 0


def test_leading_newline_of_the_stream_is_dropped(impl: ModuleType) -> None:
    assert feed_all(impl, [b"\ndata: a\n\n"]) == ([b"data: a\n\n"], b"")


def test_comments_are_events(impl: ModuleType) -> None:
    # The decoder frames; whether an event carries data is event_data's business.
    assert feed_all(impl, [b": ping\n\n: ping\n\n"]) == ([b": ping\n\n"] * 2, b"")


def test_multiline_event_stays_one_event(impl: ModuleType) -> None:
    stream = b"id: 7\r\nevent: message\r\ndata: a\r\ndata: b\r\n\r\n"
    assert feed_all(impl, [stream]) == ([b"id: 7\nevent: message\ndata: a\ndata: b\n\n"], b"")


def test_flush_returns_the_unterminated_tail(impl: ModuleType) -> None:
    decoder = impl.SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: {\"partial") == [b"data: a\n\n"]
    assert decoder.pending == len(b'data: {"partial')
    assert decoder.flush() == b'data: {"partial'
    assert decoder.pending == 0
    assert decoder.flush() == b""
    # The decoder is reusable after a flush.
    assert decoder.feed(b"data: b\n\n") == [b"data: b\n\n"]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_flush_normalises_a_trailing_line_ending(impl: ModuleType, eol: bytes) -> None:
    decoder = impl.SSEDecoder()
    decoder.feed(b"data: a" + eol)
    assert decoder.flush() == b"data: a\n"
    assert decoder.feed(b"\n") == []  # a fresh stream: not the rest of a "\r\n"
    assert decoder.pending == 1


def test_large_event_in_small_pieces(impl: ModuleType) -> None:
    event = b"data: " + b"x" * 300_000 + b"\n\n"
    pieces = [event[i : i + 997] for i in range(0, len(event), 997)]
    decoder = impl.SSEDecoder()
    events = []
    for piece in pieces[:-1]:
        events += decoder.feed(piece)
    assert events == []
    assert decoder.pending == len(event) - len(pieces[-1])
    assert decoder.feed(pieces[-1] + b"data: y\n\n") == [event, b"data: y\n\n"]
    assert decoder.pending == 0


def test_feed_rejects_str(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.SSEDecoder().feed("data: a\n\n")


# -- event_data -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: [DONE]\n\n", b"[DONE]"),
        (chunk("hi"), chunk("hi")[6:-2]),
        (b"data: \n\n", b""),
        (b"data:x\n\n", b"x"),
        (b"data:  two spaces\n\n", b" two spaces"),
        (b"data:\n\n", b""),
        (b"data\n\n", b""),
        (b"data: a\ndata: b\n\n", b"a\nb"),
        (b"data: a\ndata\ndata:\ndata: b\n\n", b"a\n\n\nb"),
        (b"event: x\nid: 1\ndata: a\n\n", b"a"),
        (b": comment\ndata: a\n: another\n\n", b"a"),
        (b": data: no\n\n", None),
        (b"event: ping\n\n", None),
        (b"dataa: x\n\n", None),
        (b"Data: x\n\n", None),
        (b"", None),
        (b"data: a", b"a"),  # no terminator (a flushed tail)
        (b"data: a\n", b"a"),
        (b"data: a\nb", b"a"),
        (b"data: a\r\n\r\n", b"a\r"),  # only "\n" ends a line: the decoder normalised
        (b"data: caf\xc3\xa9\n\n", b"caf\xc3\xa9"),
    ],
)
def test_event_data(impl: ModuleType, event: bytes, data: bytes | None) -> None:
    assert impl.event_data(event) == data


def test_event_data_of_decoded_stream(impl: ModuleType) -> None:
    values = [impl.event_data(e) for e in impl.SSEDecoder().feed(STREAM)]
    assert values[0] == b'{"choices":[{"delta":{"role":"assistant"}}]}'
    assert values[2] is None
    assert values[4] == b'{"usage":1}'
    assert values[-1] == b"[DONE]"


def test_event_data_rejects_str(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.event_data("data: a\n\n")


# -- properties -------------------------------------------------------------------------

# Bytes that matter to the framing, plus a little filler.
stream_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b"data", b":", b" ", b"a", b"\xff"]),
    max_size=40,
).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, streams: st.SearchStrategy[bytes] = stream_bytes) -> list[bytes]:
    """A stream cut at random points (empty pieces included)."""
    stream = draw(streams)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


def realistic_stream(contents: list[str]) -> bytes:
    return b"".join(chunk(c) for c in contents) + b"data: [DONE]\n\n"


# Content text never holds a raw line break: in a real stream it is JSON-escaped.
content = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
realistic = chunked(st.lists(content, max_size=6).map(realistic_stream))


@given(pieces=chunked())
def test_chunking_does_not_change_the_events(impl: ModuleType, pieces: list[bytes]) -> None:
    events, tail = feed_all(impl, pieces)
    whole_events, whole_tail = feed_all(impl, [b"".join(pieces)])
    assert events == whole_events
    # Only how many leading blank lines were already dropped may differ.
    assert tail.lstrip(b"\n") == whole_tail.lstrip(b"\n")


@given(pieces=realistic)
def test_realistic_streams(impl: ModuleType, pieces: list[bytes]) -> None:
    events, tail = feed_all(impl, pieces)
    assert b"".join(events) == b"".join(pieces)
    assert tail == b""
    assert impl.event_data(events[-1]) == b"[DONE]"


@needs_c
@given(pieces=st.one_of(chunked(), realistic))
def test_twins_agree_on_every_feed(pieces: list[bytes]) -> None:
    from hapax._core import _sse_c, _sse_py

    c, py = _sse_c.SSEDecoder(), _sse_py.SSEDecoder()
    for piece in pieces:
        assert c.feed(piece) == py.feed(piece)
        assert c.pending == py.pending
    assert c.flush() == py.flush()
    assert c.pending == py.pending == 0


@needs_c
@given(event=stream_bytes)
def test_twins_agree_on_event_data(event: bytes) -> None:
    from hapax._core import _sse_c, _sse_py

    assert _sse_c.event_data(event) == _sse_py.event_data(event)
    assert _sse_c.event_data(event + b"\n\n") == _sse_py.event_data(event + b"\n\n")
