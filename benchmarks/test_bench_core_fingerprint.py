"""Request fingerprints (hapax._core.fingerprint), compiled against pure-Python.

``core-fingerprint``: the fingerprint of a ~320-byte chat request (one system and one
user message) and of a ~4 KiB one (13 earlier turns), parsed once beforehand, as the
gateway has them (``exchange.json``), with the default ignore list (``user``,
``metadata``).  Both twins serialise with orjson; the compiled one saves the interpreter
work around it.  Each round fingerprints 1 000 times.

Run: ``pytest benchmarks/test_bench_core_fingerprint.py --benchmark-only``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson
import pytest
from twins import IMPLS, twin

OPS = 1_000
IGNORE = frozenset(("user", "metadata"))
QUESTION = 'What does "idempotent" mean for an HTTP method? Give one example.'
ANSWER = ("A method is idempotent when repeating it has the same effect as doing it once: "
          "PUT /items/42 twice leaves one item 42.\nGET, PUT and DELETE are; POST is not.")


def chat_request(turns: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    for _ in range(turns):
        messages += [{"role": "user", "content": QUESTION},
                     {"role": "assistant", "content": ANSWER}]
    messages.append({"role": "user", "content": QUESTION})
    return {"model": "gpt-4o-mini", "messages": messages, "temperature": 0, "max_tokens": 512,
            "user": "team-7f3a9c/alice", "stream": True,
            "stream_options": {"include_usage": True}}


SMALL, LARGE = chat_request(0), chat_request(13)
assert 300 <= len(orjson.dumps(SMALL)) <= 600 and 3500 <= len(orjson.dumps(LARGE)) <= 4500


@pytest.fixture(params=IMPLS, ids=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return twin("fingerprint", request.param)


@pytest.mark.parametrize("body", [pytest.param(SMALL, id="small"),
                                  pytest.param(LARGE, id="large")])
def test_fingerprint(benchmark: Any, measure: Any, impl: ModuleType,
                     body: dict[str, Any]) -> None:
    benchmark.group = f"core-fingerprint: {len(orjson.dumps(body))}-byte chat request"
    fingerprint = impl.fingerprint

    def run() -> None:
        for _ in range(OPS):
            fingerprint("team-a", "gpt-4o-mini", body, IGNORE)

    measure(run, ops=OPS, baseline=impl.__name__.endswith("_py"))
