"""Request fingerprints (hapax._core.fingerprint): one suite over both twins, plus
twin-vs-twin properties."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import orjson
import pytest
from core_twins import needs_c, twins
from hypothesis import given
from hypothesis import strategies as st

impl = twins("fingerprint")


BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "What is 2 + 2?"}],
    "temperature": 0,
    "max_tokens": 64,
    "response_format": {"type": "json_object"},
    "user": "alice",
    "metadata": {"trace": "t-1"},
}
IGNORE = ("user", "metadata")


def fp(impl: ModuleType, body: dict[str, Any], scope: str = "team-a", alias: str = "gpt",
       ignore: Any = IGNORE) -> bytes:
    return impl.fingerprint(scope, alias, body, ignore)


def test_sixteen_bytes_and_stable(impl: ModuleType) -> None:
    a = fp(impl, BODY)
    assert type(a) is bytes and len(a) == 16
    assert fp(impl, json.loads(json.dumps(BODY))) == a
    # The algorithm is part of the contract (a shared cache will keep fingerprints):
    # xxh3-128 of scope, NUL, alias, NUL, the sorted compact JSON of what counts.
    import xxhash
    kept = {k: v for k, v in BODY.items() if k not in ("model", *IGNORE)}
    assert a == xxhash.xxh3_128(b"team-a\0gpt\0" + orjson.dumps(
        kept, option=orjson.OPT_SORT_KEYS)).digest()


def test_key_order_does_not_count_at_any_depth(impl: ModuleType) -> None:
    reordered = dict(reversed(list(BODY.items())))
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in BODY["messages"]]
    assert list(reordered) != list(BODY)
    assert fp(impl, reordered) == fp(impl, BODY)


def test_whitespace_does_not_count(impl: ModuleType) -> None:
    compact = json.dumps(BODY, separators=(",", ":"))
    spaced = json.dumps(BODY, indent=4).replace("\n", "\r\n \t")
    assert compact != spaced
    assert fp(impl, orjson.loads(spaced)) == fp(impl, orjson.loads(compact))


@pytest.mark.parametrize("change", [
    lambda b: b["messages"][1].update(content="What is 2 + 3?"),
    lambda b: b["messages"].reverse(),
    lambda b: b["messages"].append({"role": "user", "content": "and?"}),
    lambda b: b.update(temperature=0.5),
    lambda b: b.update(max_tokens="64"),
    lambda b: b.update(max_tokens=None),
    lambda b: b.pop("max_tokens"),
    lambda b: b.update(stream=True),
    lambda b: b.update(seed=1),
    lambda b: b["response_format"].update(type="text"),
    lambda b: b["messages"][0].update(name="user"),  # an ignored name, but nested
], ids=["content", "order-of-messages", "more-messages", "temperature", "number-vs-string",
        "null", "missing", "stream", "new-field", "nested", "nested-ignored-name"])
def test_any_semantic_difference_counts(impl: ModuleType, change: Any) -> None:
    body = json.loads(json.dumps(BODY))
    change(body)
    assert fp(impl, body) != fp(impl, BODY)


def test_ignored_fields_do_not_count(impl: ModuleType) -> None:
    other = {**BODY, "user": "bob", "metadata": {"trace": "t-2", "more": [1]}}
    assert fp(impl, other) == fp(impl, BODY)
    bare = {k: v for k, v in BODY.items() if k not in IGNORE}
    assert fp(impl, bare) == fp(impl, BODY)
    # Only what the list names: without an ignore list, "user" counts.
    assert fp(impl, other, ignore=()) != fp(impl, BODY, ignore=())
    assert fp(impl, BODY, ignore=frozenset(IGNORE)) == fp(impl, BODY, ignore=list(IGNORE))


def test_model_does_not_count_but_the_alias_does(impl: ModuleType) -> None:
    assert fp(impl, {**BODY, "model": "something-else"}) == fp(impl, BODY)
    assert fp(impl, {k: v for k, v in BODY.items() if k != "model"}) == fp(impl, BODY)
    assert fp(impl, BODY, alias="gpt-2") != fp(impl, BODY, alias="gpt")


def test_scope_counts(impl: ModuleType) -> None:
    assert fp(impl, BODY, scope="team-b") != fp(impl, BODY, scope="team-a")
    assert fp(impl, BODY, scope="") != fp(impl, BODY, scope="team-a")
    # Scope and alias are separated: moving a character across the boundary differs.
    assert fp(impl, BODY, scope="ab", alias="c") != fp(impl, BODY, scope="a", alias="bc")


def test_unicode(impl: ModuleType) -> None:
    body = {"messages": [{"role": "user", "content": "caf\u00e9 \U0001f600"}]}
    assert fp(impl, body, scope="\u00e9quipe", alias="m\u00f6del") == \
        fp(impl, orjson.loads(orjson.dumps(body)), scope="\u00e9quipe", alias="m\u00f6del")


# -- properties ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
bodies = st.dictionaries(
    st.sampled_from(["model", "messages", "temperature", "user", "metadata", "seed", "n",
                     "stream", "x"]) | st.text(max_size=6),
    json_values, max_size=6)
ignores = st.lists(st.sampled_from(["user", "metadata", "x", "seed"]), max_size=3)
names = st.text(max_size=8)


def shuffled(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


@given(body=bodies, ignore=ignores, scope=names, alias=names, rnd=st.randoms())
def test_key_order_never_counts(impl: ModuleType, body: dict[str, Any], ignore: list[str],
                                scope: str, alias: str, rnd: Any) -> None:
    assert impl.fingerprint(scope, alias, shuffled(body, rnd), ignore) == \
        impl.fingerprint(scope, alias, body, ignore)


@given(body=bodies, ignore=ignores, key=st.text(max_size=6), value=json_values)
def test_a_counted_field_changes_it(impl: ModuleType, body: dict[str, Any], ignore: list[str],
                                    key: str, value: Any) -> None:
    other = {**body, key: value}
    counted = key != "model" and key not in ignore
    same = key in body and orjson.dumps(body[key]) == orjson.dumps(value)
    if counted and not same:
        assert impl.fingerprint("s", "a", other, ignore) != impl.fingerprint("s", "a", body,
                                                                             ignore)
    if not counted:
        assert impl.fingerprint("s", "a", other, ignore) == impl.fingerprint("s", "a", body,
                                                                             ignore)


@needs_c
@given(body=bodies, ignore=ignores, scope=names, alias=names)
def test_twins_agree(body: dict[str, Any], ignore: list[str], scope: str, alias: str) -> None:
    from hapax._core import _fingerprint_c, _fingerprint_py

    assert _fingerprint_c.fingerprint(scope, alias, body, ignore) == \
        _fingerprint_py.fingerprint(scope, alias, body, ignore)
    assert _fingerprint_c.fingerprint(scope, alias, body, frozenset(ignore)) == \
        _fingerprint_py.fingerprint(scope, alias, body, frozenset(ignore))
