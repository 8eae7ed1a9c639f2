"""JSON field surgery (hapax._core.json): one suite over both twins, a stdlib-json
reference on generated documents, and twin-vs-twin properties on odd bytes."""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any, NamedTuple

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
    return importlib.import_module(f"hapax._core._json_{request.param}")


def value_of(impl: ModuleType, body: bytes, key: bytes = b"model") -> bytes | None:
    span = impl.find_value(body, key)
    return None if span is None else body[span[0] : span[1]]


CHAT = (
    b'{"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."}, '
    b'{"role": "user", "content": "Say \\"model\\": \\"x\\" {[,]}"}], "stream": true}'
)


# -- find_value -------------------------------------------------------------------------


def test_chat_request(impl: ModuleType) -> None:
    assert value_of(impl, CHAT) == b'"gpt-4o"'
    assert value_of(impl, CHAT, b"stream") == b"true"
    messages = value_of(impl, CHAT, b"messages")
    assert messages is not None
    assert json.loads(messages) == json.loads(CHAT)["messages"]
    assert value_of(impl, CHAT, b"temperature") is None


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"model":"a"}', b'"a"'),
        (b'{"model":1}', b"1"),
        (b'{"model":-1.5e+3}', b"-1.5e+3"),
        (b'{"model":null}', b"null"),
        (b'{"model":false,"x":1}', b"false"),
        (b'{"model":{"model":"inner"}}', b'{"model":"inner"}'),
        (b'{"model":[1,[2,{"a":"]"}]],"x":0}', b'[1,[2,{"a":"]"}]]'),
        (b'{"model":""}', b'""'),
        (b'{"model":"\\""}', b'"\\""'),
        (b'{"model":"\\\\"}', b'"\\\\"'),
        (b'{"model":"a\\\\\\"b"}', b'"a\\\\\\"b"'),
        (b'{"model":"caf\xc3\xa9 \\u00e9"}', b'"caf\xc3\xa9 \\u00e9"'),
        (b'{"\xc3\xa9":1,"model":"\xe2\x9c\x93"}', b'"\xe2\x9c\x93"'),
    ],
)
def test_values(impl: ModuleType, body: bytes, value: bytes) -> None:
    assert value_of(impl, body) == value


def test_whitespace_everywhere(impl: ModuleType) -> None:
    body = b' \r\n\t{ \r\n\t"x" \t: [ 1 , 2 ] ,\r\n "model"\n:\t"m" \r\n\t, "y" : { } } \n\t\r '
    assert value_of(impl, body) == b'"m"'
    assert value_of(impl, body, b"x") == b"[ 1 , 2 ]"
    assert value_of(impl, body, b"y") == b"{ }"


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": {"model": "nested"}}',
        b'{"a": [{"model": "in array"}]}',
        b'{"a": "model", "b": ["model"]}',  # as a value, not a key
        b'{"a": "\\"model\\": \\"escaped\\""}',
        b'{"modelx": 1, "xmodel": 2, "Model": 3}',
        b'{"mod\\u0065l": "escaped key"}',  # keys are compared as written
        b"{}",
    ],
)
def test_key_not_at_top_level(impl: ModuleType, body: bytes) -> None:
    assert impl.find_value(body, b"model") is None
    assert impl.replace_string_value(body, b"model", b"x") is None


def test_duplicate_key_last_wins(impl: ModuleType) -> None:
    body = b'{"model": "first", "a": {"model": "nested"}, "model": "last", "b": 1}'
    assert value_of(impl, body) == b'"last"'
    assert json.loads(body)["model"] == "last"  # as the parsers that see it after us


def test_escaped_key(impl: ModuleType) -> None:
    body = b'{"a\\"b": 1, "c\\\\": 2}'
    assert value_of(impl, body, b'a\\"b') == b"1"
    assert value_of(impl, body, b"c\\\\") == b"2"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"[]",
        b'[{"model": "x"}]',
        b'"model"',
        b"1",
        b"null",
        b'\xef\xbb\xbf{"model": "bom"}',
        b'{"model": "x"',  # never closed
        b'{"model": "x"} {}',  # trailing document
        b'{"model": "x"},',
        b'{"model": "x"}]',
        b'{"model" "x"}',  # no colon
        b'{"model":}',  # no value
        b'{"model": , "a": 1}',
        b'{"model": "unterminated}',
        b'{"model": {"a": 1}',
        b'{"model": "x\\"}',
    ],
)
def test_not_an_object_or_malformed(impl: ModuleType, body: bytes) -> None:
    assert impl.find_value(body, b"model") is None


def test_a_missing_colon_stops_the_search(impl: ModuleType) -> None:
    # A broken key/value pair means the document is not what we think: give up rather
    # than return an earlier occurrence.
    assert impl.find_value(b'{"model": "a", "model" 1}', b"model") is None


def test_arguments_must_be_bytes(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.find_value('{"model": "x"}', b"model")
    with pytest.raises(TypeError):
        impl.replace_string_value('{"model": "x"}', b"model", b"y")


# -- replace_string_value ---------------------------------------------------------------


def test_replace_keeps_every_other_byte(impl: ModuleType) -> None:
    out = impl.replace_string_value(CHAT, b"model", b"gpt-4o-2024-08-06")
    assert out == CHAT.replace(b'"gpt-4o"', b'"gpt-4o-2024-08-06"', 1)
    assert json.loads(out) == {**json.loads(CHAT), "model": "gpt-4o-2024-08-06"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model":"a"}', b'{"model":"b\\"\xc3\xa9"}'),
        (b' { "model" :\n"a" } ', b' { "model" :\n"b\\"\xc3\xa9" } '),
        (
            b'{"x":{"model":1},"model":"\\\\","y":[]}',
            b'{"x":{"model":1},"model":"b\\"\xc3\xa9","y":[]}',
        ),
    ],
)
def test_replace(impl: ModuleType, body: bytes, expected: bytes) -> None:
    assert impl.replace_string_value(body, b"model", b'b\\"\xc3\xa9') == expected


def test_replace_with_empty_string(impl: ModuleType) -> None:
    assert impl.replace_string_value(b'{"model": "a"}', b"model", b"") == b'{"model": ""}'


@pytest.mark.parametrize(
    "value", [b"1", b"1.5", b"null", b"true", b"false", b'{"a": "b"}', b'["a"]']
)
def test_replace_refuses_non_string_values(impl: ModuleType, value: bytes) -> None:
    assert impl.replace_string_value(b'{"model": ' + value + b"}", b"model", b"x") is None


def test_replace_absent_key(impl: ModuleType) -> None:
    assert impl.replace_string_value(b'{"a": "b"}', b"model", b"x") is None
    assert impl.replace_string_value(b'["model"]', b"model", b"x") is None


# -- properties -------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


class Doc(NamedTuple):
    obj: dict[str, Any]
    body: bytes
    ensure_ascii: bool

    def key(self, key: str) -> bytes:
        """``key`` as written in ``body`` (the form find_value compares)."""
        return json.dumps(key, ensure_ascii=self.ensure_ascii)[1:-1].encode()


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    """A JSON object and one of its many serialisations."""
    obj = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
    layout: dict[str, Any] = draw(
        st.sampled_from(
            [
                {},
                {"separators": (",", ":")},
                {"separators": (" , ", " : ")},
                {"separators": ("\r\n,\t", "\n:\r ")},
                {"indent": 2},
                {"indent": "\t"},
                {"indent": "\r\n"},
            ]
        )
    )
    ensure_ascii = draw(st.booleans())
    text = json.dumps(obj, ensure_ascii=ensure_ascii, **layout)
    padding = st.sampled_from(["", " ", "\n", "\r\n\t "])
    # st.text() draws no lone surrogates, so the text always encodes.
    body = (draw(padding) + text + draw(padding)).encode()
    return Doc(obj, body, ensure_ascii)


@given(doc=documents(), data=st.data())
def test_find_value_matches_the_stdlib_parser(
    impl: ModuleType, doc: Doc, data: st.DataObject
) -> None:
    for key in doc.obj:
        span = impl.find_value(doc.body, doc.key(key))
        assert span is not None
        start, end = span
        assert json.loads(doc.body[start:end]) == doc.obj[key]
    absent = data.draw(st.text(max_size=3).filter(lambda k: k not in doc.obj))
    assert impl.find_value(doc.body, doc.key(absent)) is None


@given(doc=documents(), value=st.text(), ensure_ascii=st.booleans())
def test_replace_matches_the_stdlib_parser(
    impl: ModuleType, doc: Doc, value: str, ensure_ascii: bool
) -> None:
    escaped = json.dumps(value, ensure_ascii=ensure_ascii)[1:-1].encode()
    for key in doc.obj:
        out = impl.replace_string_value(doc.body, doc.key(key), escaped)
        if not isinstance(doc.obj[key], str):
            assert out is None
            continue
        assert out is not None
        assert json.loads(out) == {**doc.obj, key: value}
        start, end = impl.find_value(doc.body, doc.key(key))
        # Every byte around the value is kept as it was.
        assert out[:start] == doc.body[:start]
        assert out[len(out) - (len(doc.body) - end) :] == doc.body[end:]


# Bytes that matter to the scanner: structure, quotes, escapes, whitespace, a key.
odd_bytes = st.lists(
    st.sampled_from(
        [b"{", b"}", b"[", b"]", b":", b",", b'"', b"\\", b" ", b"\n", b"1", b"a", b'"k"', b"\xe9"]
    ),
    max_size=30,
).map(b"".join)


@needs_c
@given(body=st.one_of(odd_bytes, odd_bytes.map(b"{".__add__), documents().map(lambda d: d.body)))
def test_twins_agree_on_any_bytes(body: bytes) -> None:
    from hapax._core import _json_c, _json_py

    for key in (b"k", b"a", b"", b"model", b'k\\"'):
        assert _json_c.find_value(body, key) == _json_py.find_value(body, key)
        assert _json_c.replace_string_value(body, key, b"v") == _json_py.replace_string_value(
            body, key, b"v"
        )


@needs_c
@given(doc=documents(), data=st.data())
def test_twins_agree_on_damaged_documents(doc: Doc, data: st.DataObject) -> None:
    from hapax._core import _json_c, _json_py

    body = doc.body
    # Cut, duplicate or drop a few bytes: the twins must fail (or not) identically.
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(body)))
        j = data.draw(st.integers(i, min(len(body), i + 4)))
        body = data.draw(st.sampled_from([body[:i] + body[j:], body[:j] + body[i:j] + body[j:]]))
    for key in [b"model", *map(doc.key, doc.obj)]:
        assert _json_c.find_value(body, key) == _json_py.find_value(body, key)
