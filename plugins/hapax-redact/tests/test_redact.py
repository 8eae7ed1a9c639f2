"""hapax-redact through a real gateway: what the (fake) provider receives is masked.

The plugin is loaded the way users get it: through its ``hapax`` entry point (the
package is installed), enabled by a ``plugins: hapax-redact:`` block.
"""

from __future__ import annotations

import http.client
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
from hapax.config import from_dict
from hapax.errors import ConfigError
from hapax.pipeline.gateway import Gateway
from hapax.testing import config_for
from hypothesis import given
from hypothesis import strategies as st

from hapax_redact import PATTERNS, Redactor, build_redactor, luhn_valid

PROMPT = ("Hi, I'm Jane (jane.doe@example.com, +44 20 7946 0958). Please refund card "
          "4111 1111 1111 1111 but not order 4111 1111 1111 1112, placed 2024-01-15 for $1,299.")
MASKED = ("Hi, I'm Jane ([EMAIL], [PHONE]). Please refund card "
          "[CARD] but not order 4111 1111 1111 1112, placed 2024-01-15 for $1,299.")
SYSTEM = "You are a helpful assistant. Escalate to support@example.org when unsure."
SYSTEM_MASKED = "You are a helpful assistant. Escalate to [EMAIL] when unsure."


def start(hapax_gateway: Any, fake: Any, settings: Any = None, **kwargs: Any) -> Any:
    cfg = config_for(fake.base_url, plugins={"hapax-redact": settings})
    return hapax_gateway(cfg, **kwargs)


@pytest.fixture
def client() -> Iterator[Callable[[Any], openai.OpenAI]]:
    """``client(gw)``: an OpenAI SDK client for the gateway, closed after the test."""
    made: list[openai.OpenAI] = []

    def make(gw: Any) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0))
        return made[-1]

    yield make
    for c in made:
        c.close()


class StateProbe:
    """A second plugin: records what hapax-redact left in ``exchange.state``."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.done = threading.Event()

    def hapax_after_response(self, exchange: Any) -> None:
        self.seen.append(exchange.state.get("hapax-redact"))
        self.done.set()


# -- through the gateway ------------------------------------------------------------


def test_chat_prompt_is_masked_before_it_leaves(hapax_gateway, fake_provider, client):
    gw = start(hapax_gateway, fake_provider)
    answer = client(gw).chat.completions.create(model="test-model", messages=[
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
    ])
    sent = fake_provider.requests[0].json
    assert sent["messages"] == [{"role": "system", "content": SYSTEM_MASKED},
                                {"role": "user", "content": MASKED}]
    assert sent["model"] == "test-model"
    # The fake echoes the prompt it got: the answer shows the masked text, too.
    assert answer.choices[0].message.content == f"Fake answer to: {MASKED}"


def test_text_parts_are_masked_and_other_parts_untouched(hapax_gateway, fake_provider, client):
    gw = start(hapax_gateway, fake_provider)
    image = {"type": "image_url",
             "image_url": {"url": "https://img.example/a.png?by=jane@example.com"}}
    client(gw).chat.completions.create(model="test-model", messages=[{"role": "user", "content": [
        {"type": "text", "text": PROMPT},
        image,
        {"type": "text", "text": "Call me on (555) 123-4567."},
    ]}])
    parts = fake_provider.requests[0].json["messages"][0]["content"]
    assert parts == [{"type": "text", "text": MASKED}, image,
                     {"type": "text", "text": "Call me on [PHONE]."}]


def test_streamed_request_is_masked(hapax_gateway, fake_provider, client):
    gw = start(hapax_gateway, fake_provider)
    stream = client(gw).chat.completions.create(
        model="test-model", stream=True, messages=[{"role": "user", "content": PROMPT}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert fake_provider.requests[0].json["messages"] == [{"role": "user", "content": MASKED}]
    assert fake_provider.requests[0].json["stream"] is True
    assert text == f"Fake answer to: {MASKED}"


def test_embeddings_input_is_masked(hapax_gateway, fake_provider, client):
    gw = start(hapax_gateway, fake_provider)
    client(gw).embeddings.create(model="test-model", input=[PROMPT, "nothing here"])
    assert fake_provider.requests[0].json["input"] == [MASKED, "nothing here"]


def test_settings_choose_patterns_and_replacements(hapax_gateway, fake_provider, client):
    gw = start(hapax_gateway, fake_provider, {
        "patterns": ["email", "card"], "replacement": "<{name}>",
        "email": {"replacement": "[E-MAIL REMOVED]"}})
    client(gw).chat.completions.create(model="test-model",
                                       messages=[{"role": "user", "content": PROMPT}])
    assert fake_provider.requests[0].json["messages"][0]["content"] == (
        "Hi, I'm Jane ([E-MAIL REMOVED], +44 20 7946 0958). Please refund card <card> but "
        "not order 4111 1111 1111 1112, placed 2024-01-15 for $1,299.")


def test_a_pattern_can_be_switched_off(hapax_gateway, fake_provider, client):
    gw = start(hapax_gateway, fake_provider, {"card": {"enabled": False},
                                              "phone": {"replacement": ""}})
    client(gw).chat.completions.create(model="test-model",
                                       messages=[{"role": "user", "content": PROMPT}])
    assert fake_provider.requests[0].json["messages"][0]["content"] == (
        "Hi, I'm Jane ([EMAIL], ). Please refund card 4111 1111 1111 1111 but not order "
        "4111 1111 1111 1112, placed 2024-01-15 for $1,299.")


def test_counts_reach_exchange_state_and_metrics(hapax_gateway, fake_provider, client):
    probe = StateProbe()
    gw = start(hapax_gateway, fake_provider, plugins=[("probe", probe)])
    api = client(gw)
    api.chat.completions.create(model="test-model", messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}])
    assert probe.done.wait(5)
    assert probe.seen == [{"email": 2, "phone": 1, "card": 1}]
    probe.done.clear()
    api.chat.completions.create(model="test-model",
                                messages=[{"role": "user", "content": "Nothing to hide."}])
    assert probe.done.wait(5)
    assert probe.seen[1] is None  # nothing masked: no entry at all
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'hapax_redactions_total{pattern="email"} 2.0' in text
    assert 'hapax_redactions_total{pattern="phone"} 1.0' in text
    assert 'hapax_redactions_total{pattern="card"} 1.0' in text


def test_installed_but_not_enabled_changes_nothing(hapax_gateway, fake_provider, client):
    """Without a settings block the plugin steps out: no transform stage, so the
    client's bytes go upstream untouched, PII and all."""
    gw = hapax_gateway(config_for(fake_provider.base_url))
    infos = {info.name: info for info in gw.gateway.plugin_infos}
    assert infos["hapax-redact"].source.startswith("entry point (hapax-redact ")
    assert not gw.gateway.hooks.transform_request
    body = orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": PROMPT}]})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    assert conn.getresponse().status == 200
    conn.close()
    assert fake_provider.requests[0].body == body


def test_a_clean_prompt_goes_through_unchanged(hapax_gateway, fake_provider, client):
    gw = start(hapax_gateway, fake_provider)
    messages = [{"role": "user", "content": "Summarise Q3 2024: revenue rose 12% to $4.2M "
                                            "(order #12345678, v1.2.3, 10.0.0.1)."}]
    client(gw).chat.completions.create(model="test-model", messages=messages)
    assert fake_provider.requests[0].json["messages"] == messages


# -- settings errors ----------------------------------------------------------------

P = "plugins.hapax-redact"


@pytest.mark.parametrize(("settings", "problems"), [
    ({"patern": ["email"]},
     [(f"{P}.patern", "unknown setting; expected patterns, replacement or a pattern name "
                      "(card, email, phone)")]),
    ({"patterns": "email"},
     [(f"{P}.patterns", "expected a list of pattern names (card, email, phone)")]),
    ({"patterns": ["email", "ssn", "email"]},
     [(f"{P}.patterns[1]", "unknown pattern 'ssn' (known: card, email, phone)"),
      (f"{P}.patterns[2]", "'email' is listed twice")]),
    ({"replacement": 5}, [(f"{P}.replacement", 'expected a string such as "[{NAME}]", got int')]),
    ({"email": {"replacement": "<{kind}>"}},
     [(f"{P}.email.replacement", "unknown placeholder {kind}; use {name} or {NAME} "
                                 "(write {{ and }} for literal braces)")]),
    ({"replacement": "[{name"},
     [(f"{P}.replacement", "invalid template (expected '}' before end of string); use "
                           "{name} or {NAME} (write {{ and }} for literal braces)")]),
    ({"card": "off"}, [(f"{P}.card", "expected a mapping with `enabled` and/or `replacement`")]),
    ({"card": {"enable": False}},
     [(f"{P}.card.enable", "unknown setting; expected enabled or replacement")]),
    ({"card": {"enabled": "no"}}, [(f"{P}.card.enabled", "expected true or false")]),
    ({"patterns": ["email"], "card": {"enabled": True}},
     [(f"{P}.card.enabled", "is true, but 'card' is not in `patterns`; add it there")]),
])
def test_invalid_settings_stop_the_gateway(settings, problems):
    config = from_dict(config_for("http://127.0.0.1:9/v1", plugins={"hapax-redact": settings}),
                       "pipeline.yaml")
    with pytest.raises(ConfigError) as info:
        Gateway(config)
    assert info.value.problems == problems
    assert str(info.value).startswith(f"pipeline.yaml: {problems[0][0]}: ")


def test_invalid_settings_fail_the_fixture_too(hapax_gateway, fake_provider, client):
    with pytest.raises(ConfigError, match=r"plugins\.hapax-redact\.patterns\[0\]"):
        start(hapax_gateway, fake_provider, {"patterns": ["iban"]})


# -- the patterns themselves --------------------------------------------------------


@pytest.mark.parametrize("number", ["4111111111111111", "5555555555554444", "378282246310005",
                                    "6011111111111117", "30569309025904", "4222222222222"])
def test_luhn_accepts_card_numbers(number):
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "378282246310006"])
def test_luhn_rejects_other_numbers(number):
    assert not luhn_valid(number)


DEFAULTS = build_redactor({})


@pytest.mark.parametrize(("text", "expected"), [
    ("mail jane.doe+work@mail.example.co.uk.", "mail [EMAIL]."),
    ("<a@b.io>", "<[EMAIL]>"),
    ("call +1 202 555 0143 now", "call [PHONE] now"),
    ("call +1-202-555-0143", "call [PHONE]"),
    ("+49 (0)30 1234567", "[PHONE]"),
    ("(555) 123-4567 or 555.123.4567 or 1-555-123-4567", "[PHONE] or [PHONE] or [PHONE]"),
    ("pay 4111-1111-1111-1111!", "pay [CARD]!"),
    ("amex 3782 822463 10005", "amex [CARD]"),
    ("visa 4111111111111111", "visa [CARD]"),
    ("Ünïcödé jane@example.com ☃ 4111111111111111", "Ünïcödé [EMAIL] ☃ [CARD]"),
])
def test_patterns_mask(text, expected):
    counts: dict[str, int] = {}
    assert DEFAULTS.redact(text, counts) == expected
    assert sum(counts.values()) == expected.count("[")


@pytest.mark.parametrize("text", [
    "an @decorator and x@y",
    "order 4111 1111 1111 1112 fails the checksum",
    "id 1234567812345678",
    "year 2024, date 2024-01-15, time 12:30, version 1.2.3, ip 192.168.100.100",
    "pi is 3.14159265358979",
    "a+1234567890 is arithmetic",
    "+1 234 is too short for a phone",
    "555 123 4567 has no separators a phone would use here",
    "2024-555-123-4567 is an id",
])
def test_patterns_leave_ordinary_text_alone(text):
    counts: dict[str, int] = {}
    assert DEFAULTS.redact(text, counts) is None
    assert counts == {}


def test_long_tokens_are_scanned_in_linear_time():
    # A quadratic regex would take minutes here (each start position rescanning the run).
    for text in ("a" * 50_000 + "@", "1" * 50_000, "+1" * 25_000, "0000 " * 10_000):
        assert DEFAULTS.redact(text, {}) is None


@given(st.text(alphabet="0123456789 -.+()@abc:", max_size=60))
def test_prefilter_never_hides_a_match(text):
    """The shape pre-filter only skips texts in which the pattern cannot match."""
    for name, pattern in PATTERNS.items():
        expected, hits = pattern.sub("#", text)
        counts: dict[str, int] = {}
        got = Redactor([(pattern, "#")]).redact(text, counts)
        assert (got if got is not None else text) == expected
        assert counts.get(name, 0) == hits
