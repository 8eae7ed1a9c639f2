"""Gateway keys (who may call, which models) and routing (alias -> provider model), seen
through the ``openai`` SDK."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from hapax.builtins import auth
from hapax.config import from_dict
from hapax.errors import AuthenticationError
from hapax.testing import GatewayThread, config_for
from hapax.testing.fake_provider import FakeProvider

HELLO = [{"role": "user", "content": "hello"}]
KEY_ENV = "sk-hapax-env-0123456789abcdef"  # given in clear through ${HAPAX_TEST_GATEWAY_KEY}
KEY_HASHED = "sk-hapax-hashed-fedcba9876543210"  # given as key_sha256
NO_AUTH: dict[str, Any] = {"Authorization": openai.omit}  # the SDK then sends no key

GatewayFactory = Callable[..., GatewayThread]


def client(gw: GatewayThread, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


@pytest.fixture
def gw(fake_provider: FakeProvider, hapax_gateway: GatewayFactory,
       monkeypatch: pytest.MonkeyPatch) -> GatewayThread:
    monkeypatch.setenv("HAPAX_TEST_GATEWAY_KEY", KEY_ENV)
    return hapax_gateway(config_for(
        fake_provider.base_url, models=["model-a", "model-b"], upstream_model="up",
        keys=[{"name": "env-key", "key": "${HAPAX_TEST_GATEWAY_KEY}", "models": ["model-a"]},
              {"name": "hashed-key",
               "key_sha256": hashlib.sha256(KEY_HASHED.encode()).hexdigest()}]))


def assert_no_secret(exc_or_resp: Any, *secrets: str) -> None:
    """Neither the body nor any header of a response carries the key."""
    response = getattr(exc_or_resp, "response", None) or exc_or_resp.http_response
    blob = response.content + repr(dict(response.headers)).encode()
    if isinstance(exc_or_resp, Exception):
        blob += str(exc_or_resp).encode()
    for secret in secrets:
        assert secret.encode() not in blob
        assert secret[-12:].encode() not in blob  # not even a tail of it


def envelope(exc: openai.APIStatusError) -> dict[str, Any]:
    err = orjson.loads(exc.response.content)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


# -- authentication ----------------------------------------------------------------------


def test_no_key_is_401(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    with client(gw) as c:
        for call in (lambda: c.chat.completions.create(model="model-a", messages=HELLO,
                                                       extra_headers=NO_AUTH),
                     lambda: c.embeddings.create(model="model-a", input="x",
                                                 extra_headers=NO_AUTH),
                     lambda: c.models.list(extra_headers=NO_AUTH)):
            with pytest.raises(openai.AuthenticationError) as info:
                call()
            assert info.value.status_code == 401
            assert "authorization" not in info.value.response.request.headers
            err = envelope(info.value)
            assert (err["type"], err["code"]) == ("authentication_error", "missing_api_key")
            assert info.value.response.headers["x-request-id"]
    assert fake_provider.requests == []


@pytest.mark.parametrize("key", [
    "sk-completely-wrong-key-123456",
    KEY_ENV + "x",
    KEY_ENV[:-1],
    KEY_ENV.upper(),
    hashlib.sha256(KEY_HASHED.encode()).hexdigest(),  # the hash is not the key
], ids=["wrong", "longer", "shorter", "case", "the-hash"])
def test_wrong_key_is_401_and_never_echoed(gw: GatewayThread, fake_provider: FakeProvider,
                                            key: str) -> None:
    with client(gw, key) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.chat.completions.create(model="model-a", messages=HELLO)
        assert envelope(info.value)["code"] == "invalid_api_key"
        assert_no_secret(info.value, key)
        with pytest.raises(openai.AuthenticationError) as info:
            c.models.list()
        assert_no_secret(info.value, key)
        # The same through x-api-key.
        with pytest.raises(openai.AuthenticationError) as info:
            c.chat.completions.create(model="model-a", messages=HELLO,
                                      extra_headers={**NO_AUTH, "x-api-key": key})
        assert_no_secret(info.value, key)
    assert fake_provider.requests == []


def test_malformed_authorization_is_401(gw: GatewayThread) -> None:
    with client(gw) as c:
        for value in (f"Basic {KEY_HASHED}", "Bearer", KEY_HASHED):
            with pytest.raises(openai.AuthenticationError) as info:
                c.chat.completions.create(model="model-a", messages=HELLO,
                                          extra_headers={"Authorization": value})
            assert info.value.status_code == 401
            assert_no_secret(info.value, KEY_HASHED)


@pytest.mark.parametrize("key", [KEY_ENV, KEY_HASHED], ids=["env-key", "hashed-key"])
def test_right_key_is_200(gw: GatewayThread, fake_provider: FakeProvider, key: str) -> None:
    with client(gw, key) as c:
        raw = c.chat.completions.with_raw_response.create(model="model-a", messages=HELLO)
        emb = c.embeddings.create(model="model-a", input="x")
    assert raw.status_code == 200
    assert raw.parse().choices[0].message.content == "Fake answer to: hello"
    assert len(emb.data) == 1
    assert_no_secret(raw, key)
    assert [r.json["model"] for r in fake_provider.requests] == ["up", "up"]
    # The gateway key is the client's credential, never forwarded to the provider.
    for rec in fake_provider.requests:
        assert key not in repr(rec.headers)


@pytest.mark.parametrize("key", [KEY_ENV, KEY_HASHED], ids=["env-key", "hashed-key"])
def test_x_api_key_header_is_accepted(gw: GatewayThread, fake_provider: FakeProvider,
                                      key: str) -> None:
    with client(gw) as c:
        resp = c.chat.completions.create(model="model-a", messages=HELLO,
                                         extra_headers={**NO_AUTH, "x-api-key": key})
        models = c.models.list(extra_headers={**NO_AUTH, "x-api-key": key})
    assert resp.choices[0].message.content == "Fake answer to: hello"
    assert "model-a" in [m.id for m in models]
    assert len(fake_provider.requests) == 1


def test_remembered_headers_answer_like_the_first_time() -> None:
    """A valid Authorization header is remembered as is (no parsing next time); any
    spelling of a valid key works every time, an invalid header never does, and the
    memory is bounded."""
    plugin = auth.Plugin()
    plugin.hapax_configure(from_dict({
        "providers": {"m": {"kind": "mock"}}, "models": {"a": {"targets": [{"provider": "m"}]}},
        "keys": [{"name": "k", "key": KEY_HASHED}]}, "<test>"))

    def who(headers: dict[str, str]) -> str:
        ex: Any = type("Ex", (), {"headers": headers})()
        return str(plugin.hapax_authenticate(ex).name)

    for value in (f"Bearer {KEY_HASHED}", f"bearer  {KEY_HASHED} ", f"BEARER {KEY_HASHED}"):
        assert [who({"authorization": value}) for _ in range(3)] == ["k"] * 3
    assert who({"x-api-key": KEY_HASHED}) == "k"
    assert len(plugin.known) == 1 and len(plugin.known_headers) == 3
    for value in ("Bearer sk-wrong", f"Basic {KEY_HASHED}", "Bearer sk-wrong"):
        with pytest.raises(AuthenticationError):
            who({"authorization": value})
    assert len(plugin.known_headers) == 3
    for i in range(auth._HEADER_MEMO + 10):
        assert who({"authorization": "Bearer " + " " * i + KEY_HASHED}) == "k"
    assert len(plugin.known_headers) == auth._HEADER_MEMO


# -- authorization ------------------------------------------------------------------------


def test_key_restricted_to_its_models(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    with client(gw, KEY_ENV) as c:
        assert c.chat.completions.create(model="model-a", messages=HELLO).choices
        for call in (lambda: c.chat.completions.create(model="model-b", messages=HELLO),
                     lambda: c.chat.completions.create(model="model-b", messages=HELLO,
                                                       stream=True),
                     lambda: c.embeddings.create(model="model-b", input="x"),
                     # Unknown aliases are refused the same way: a restricted key
                     # cannot probe which aliases exist.
                     lambda: c.chat.completions.create(model="no-such", messages=HELLO)):
            with pytest.raises(openai.PermissionDeniedError) as info:
                call()
            assert info.value.status_code == 403
            err = envelope(info.value)
            assert (err["type"], err["code"]) == ("permission_error", "model_not_allowed")
            assert "env-key" in err["message"]
            assert_no_secret(info.value, KEY_ENV)
    assert len(fake_provider.requests) == 1
    with client(gw, KEY_HASHED) as c:  # the "*" key may use model-b
        assert c.chat.completions.create(model="model-b", messages=HELLO).choices
    assert len(fake_provider.requests) == 2


def test_unknown_alias_is_404(gw: GatewayThread, fake_provider: FakeProvider) -> None:
    with client(gw, KEY_HASHED) as c:
        for call in (lambda: c.chat.completions.create(model="gpt-nope", messages=HELLO),
                     lambda: c.chat.completions.create(model="gpt-nope", messages=HELLO,
                                                       stream=True),
                     lambda: c.embeddings.create(model="gpt-nope", input="x")):
            with pytest.raises(openai.NotFoundError) as info:
                call()
            assert info.value.status_code == 404
            assert info.value.code == "model_not_found"
            assert info.value.param == "model"
            assert "gpt-nope" in info.value.message
    assert fake_provider.requests == []


def test_models_list_shows_what_the_key_may_use(gw: GatewayThread) -> None:
    with client(gw, KEY_ENV) as c:
        assert [m.id for m in c.models.list()] == ["model-a"]
    with client(gw, KEY_HASHED) as c:
        assert sorted(m.id for m in c.models.list()) == ["model-a", "model-b"]


# -- routing ---------------------------------------------------------------------------


def test_catchall_route(fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    cfg = config_for(fake_provider.base_url, models=["known"], upstream_model="known-up")
    cfg["models"]["*"] = {"targets": [{"provider": "fake"}]}
    gw = hapax_gateway(cfg)
    with client(gw) as c:
        for model in ("known", "anything-goes", "vendor/model:tag", "known"):
            c.chat.completions.create(model=model, messages=HELLO)
        ids = [m.id for m in c.models.list()]
    # Listed aliases keep their target; any other alias is sent under its own name.
    assert [r.json["model"] for r in fake_provider.requests] == \
        ["known-up", "anything-goes", "vendor/model:tag", "known-up"]
    assert ids == ["known"]


def test_catchall_with_fixed_model_and_keys(fake_provider: FakeProvider,
                                            hapax_gateway: GatewayFactory,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAPAX_TEST_GATEWAY_KEY", KEY_ENV)
    cfg = config_for(fake_provider.base_url, models=[], keys=[
        # With a catch-all, a key may name aliases that are not listed in `models`.
        {"name": "dyn", "key": "${HAPAX_TEST_GATEWAY_KEY}", "models": ["team-model"]}])
    cfg["models"]["*"] = {"targets": [{"provider": "fake", "model": "fallback-model"}]}
    gw = hapax_gateway(cfg)
    with client(gw, KEY_ENV) as c:
        resp = c.chat.completions.create(model="team-model", messages=HELLO)
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model="other-model", messages=HELLO)
    assert resp.choices[0].message.content == "Fake answer to: hello"
    assert [r.json["model"] for r in fake_provider.requests] == ["fallback-model"]


def test_open_gateway_accepts_any_or_no_key(fake_provider: FakeProvider,
                                            hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url, models=["m"]))
    with client(gw, "sk-whatever-the-client-has") as c:
        c.chat.completions.create(model="m", messages=HELLO)
        c.chat.completions.create(model="m", messages=HELLO, extra_headers=NO_AUTH)
        c.chat.completions.create(model="m", messages=HELLO,
                                  extra_headers={**NO_AUTH, "x-api-key": "junk"})
        c.chat.completions.create(model="m", messages=HELLO,
                                  extra_headers={"Authorization": "Basic Zm9vOmJhcg=="})
        assert [m.id for m in c.models.list(extra_headers=NO_AUTH)] == ["m"]
        with pytest.raises(openai.NotFoundError):  # routing still applies
            c.chat.completions.create(model="not-m", messages=HELLO)
    assert len(fake_provider.requests) == 4
