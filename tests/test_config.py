"""pipeline.yaml -> Config: parsing, every kind of problem, secrets, the generated reference."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hapax._schema import parse_duration, parse_size
from hapax.config import Config, from_dict, loads
from hapax.docgen import config_reference
from hapax.errors import ConfigError
from hapax.pipeline.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent

MOCK = {"providers": {"mock": {"kind": "mock"}}, "models": {"gpt": {"targets": [
    {"provider": "mock"}]}}}


def problems(raw: Any, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The (path, message) problems of an invalid config dict."""
    with pytest.raises(ConfigError) as info:
        from_dict(raw, "pipeline.yaml", env=env or {})
    return info.value.problems


def only_problem(raw: Any, env: dict[str, str] | None = None) -> tuple[str, str]:
    found = problems(raw, env)
    assert len(found) == 1, found
    return found[0]


# -- durations and sizes --------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("3s", 3.0), ("10m", 600.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), ("0s", 0.0), (" 2s ", 2.0), (2, 2.0), (0.5, 0.5),
])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    cfg = from_dict({"server": {"drain_timeout": text}}, env={})
    assert cfg.server.drain_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["10", "ten seconds", "-1s", "", "ms", "1d", "3s10", True, -5,
                                 [1], {"s": 1}])
def test_bad_durations_name_the_key_and_the_format(bad: Any) -> None:
    path, message = only_problem({"server": {"limits": {"header_timeout": bad}}})
    assert path == "server.limits.header_timeout"
    assert "expected a duration such as 250ms" in message
    assert repr(bad) in message


@pytest.mark.parametrize(("text", "size"), [
    ("64KiB", 64 * 1024), ("4MiB", 4 * 1024**2), ("1GiB", 1024**3), ("1MB", 10**6),
    ("2kb", 2000), ("1.5KiB", 1536), ("4 MiB", 4 * 1024**2), ("100B", 100), ("1000", 1000),
    (1000, 1000), (0, 0), ("16k", 16 * 1024),
])
def test_sizes(text: Any, size: int) -> None:
    assert parse_size(text) == size
    assert from_dict({"server": {"limits": {"max_body": text}}}, env={}).server.limits.max_body \
        == size


@pytest.mark.parametrize("bad", ["4 MiBs", "-1", "lots", "MiB", "", True, -1, 1.5, None, ["1"]])
def test_bad_sizes_name_the_key_and_the_format(bad: Any) -> None:
    path, message = only_problem({"server": {"limits": {"max_header": bad}}})
    assert path == "server.limits.max_header"
    assert "expected a size such as 64KiB" in message


def test_numeric_strings_from_env_become_integers() -> None:
    # Interpolation yields strings: port: "${PORT}" must still work.
    cfg = from_dict({"server": {"port": "${PORT}", "workers": " 2 "}}, env={"PORT": "9090"})
    assert (cfg.server.port, cfg.server.workers) == (9090, 2)


def test_upstream_header_values_are_not_shown() -> None:
    cfg = from_dict({"providers": {"p": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1",
                                         "headers": {"X-Api-Token": "tok-s3cret"}}}})
    assert cfg.providers["p"].headers["X-Api-Token"] == "tok-s3cret"
    assert "tok-s3cret" not in repr(cfg)


@pytest.mark.parametrize(("raw", "path", "expected"), [
    ({"server": {"port": 70000}}, "server.port", "expected an integer <= 65535, got 70000"),
    ({"server": {"port": "80x"}}, "server.port", "expected an integer, got a string '80x'"),
    ({"server": {"workers": 0}}, "server.workers", "expected an integer >= 1, got 0"),
    ({"server": {"access_log": {"format": "xml"}}}, "server.access_log.format",
     "expected one of json, text, off; got 'xml'"),
    ({"server": []}, "server", "expected a mapping, got a list"),
    ({"providers": {"p": {"kind": "openai", "base_url": "api.openai.com"}}},
     "providers.p.base_url", "an http:// or https:// URL"),
    ({"providers": {"p": {"kind": "openai"}}}, "providers.p.base_url", "is required"),
    ({"providers": {"p": {"base_url": "http://x"}}}, "providers.p.kind", "is required"),
    ({"providers": {"p": {"kind": "mock", "verify_tls": "yes"}}}, "providers.p.verify_tls",
     "expected true or false"),
    ({"models": {"m": {"targets": []}}, "providers": {}}, "models.m.targets",
     "expected at least 1 item(s)"),
    (["server"], "(top level)", "expected a mapping, got a list"),
])
def test_type_errors_name_the_key_and_what_was_expected(raw: Any, path: str,
                                                        expected: str) -> None:
    got_path, message = only_problem(raw)
    assert got_path == path
    assert expected in message


# -- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "path", "hint"), [
    ({"sever": {}}, "sever", "server"),
    ({"server": {"limts": {}}}, "server.limts", "limits"),
    ({"server": {"limits": {"max_bodyy": "1MiB"}}}, "server.limits.max_bodyy", "max_body"),
    ({"server": {"access_log": {"fromat": "json"}}}, "server.access_log.fromat", "format"),
    ({"providers": {"mock": {"kind": "mock", "chunk": 3}}}, "providers.mock.chunk", "chunks"),
    ({"providers": {"mock": {"kind": "mock", "timeouts": {"conect": "1s"}}}},
     "providers.mock.timeouts.conect", "connect"),
    ({"providers": {"mock": {"kind": "mock", "pool": {"max_connection": 2}}}},
     "providers.mock.pool.max_connection", "max_connections"),
    ({**MOCK, "models": {"gpt": {"targets": [{"provider": "mock"}], "target": []}}},
     "models.gpt.target", "targets"),
    ({**MOCK, "models": {"gpt": {"targets": [{"provider": "mock", "modle": "x"}]}}},
     "models.gpt.targets[0].modle", "model"),
    ({**MOCK, "keys": [{"name": "a", "key": "k", "model": ["gpt"]}]}, "keys[0].model",
     "models"),
])
def test_unknown_keys_at_every_level(raw: dict[str, Any], path: str, hint: str) -> None:
    got_path, message = only_problem(raw)
    assert got_path == path
    assert message.startswith(f"unknown key; did you mean '{hint}'?")


def test_unknown_key_without_a_close_match_lists_the_known_keys() -> None:
    path, message = only_problem({"server": {"zzz": 1}})
    assert path == "server.zzz"
    assert "did you mean" not in message
    assert "expected one of: host, port, workers" in message


def test_all_problems_are_reported_at_once() -> None:
    found = problems({
        "server": {"limts": {}, "port": -1, "drain_timeout": "soon"},
        "providers": {"mock": {"kind": "mock", "chunks": 0}},
    })
    assert [p for p, _ in found] == ["server.limts", "server.port", "server.drain_timeout",
                                     "providers.mock.chunks"]


def test_cross_checks_run_alongside_unknown_keys() -> None:
    found = problems({**MOCK, "server": {"limts": {}},
                      "models": {"gpt": {"targets": [{"provider": "nope"}]}}})
    assert [p for p, _ in found] == ["server.limts", "models.gpt.targets[0].provider"]


def test_rendered_error_has_one_line_per_problem_with_file_and_path() -> None:
    with pytest.raises(ConfigError) as info:
        loads("server:\n  limts: {}\n  port: x\n", "conf/pipeline.yaml", env={})
    assert str(info.value).splitlines() == [
        "conf/pipeline.yaml: server.limts: unknown key; did you mean 'limits'? (expected one "
        "of: host, port, workers, backlog, limits, drain_timeout, access_log, tls)",
        "conf/pipeline.yaml: server.port: expected an integer, got a string 'x'",
    ]


def test_invalid_yaml_reports_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        loads("server:\n  port: 8080\n  host: [a, b\n", "p.yaml", env={})
    (path, message), = info.value.problems
    assert path == ""
    assert message.startswith("line 4, column 1: invalid YAML:")
    assert str(info.value).startswith("p.yaml: line 4, column 1: invalid YAML")


# -- ${ENV} interpolation -------------------------------------------------------------------


def _provider_headers(text: str, env: dict[str, str]) -> dict[str, str]:
    cfg = from_dict({"providers": {"p": {"kind": "mock", "headers": {"x": text}}}}, env=env)
    return cfg.providers["p"].headers


@pytest.mark.parametrize(("text", "env", "value"), [
    ("${A}", {"A": "alpha"}, "alpha"),
    ("pre-${A}-post", {"A": "alpha"}, "pre-alpha-post"),
    ("${A}${B}", {"A": "1", "B": "2"}, "12"),
    ("${A:-fallback}", {}, "fallback"),
    ("${A:-fallback}", {"A": ""}, "fallback"),  # set but empty takes the default too
    ("${A:-fallback}", {"A": "set"}, "set"),
    ("${A:-}x", {}, "x"),
    ("${A:-x y z}", {}, "x y z"),
    ("$$", {}, "$"),
    ("cost: $$5", {}, "cost: $5"),
    ("$${A}", {"A": "alpha"}, "${A}"),  # $$ escapes the interpolation itself
    ("$$${A}", {"A": "alpha"}, "$alpha"),
    ("a $ b", {}, "a $ b"),  # a lone $ is left alone
])
def test_env_interpolation(text: str, env: dict[str, str], value: str) -> None:
    assert _provider_headers(text, env) == {"x": value}


def test_interpolation_reaches_lists_and_nested_sections() -> None:
    cfg = from_dict({**MOCK, "keys": [{"name": "${NAME}", "key": "${KEY}", "models": ["${M}"]}]},
                    env={"NAME": "web", "KEY": "s3cret", "M": "gpt"})
    (key,) = cfg.keys or ()
    assert (key.name, key.key.reveal() if key.key else None, key.models) == \
        ("web", "s3cret", ("gpt",))


def test_missing_variable_names_the_key_and_the_variable() -> None:
    path, message = only_problem({"providers": {"p": {"kind": "mock", "headers": {
        "x": "${NOT_SET_ANYWHERE}"}}}})
    assert path == "providers.p.headers.x"
    assert "environment variable NOT_SET_ANYWHERE is not set" in message
    assert "${NOT_SET_ANYWHERE:-default}" in message


def test_interpolation_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAPAX_TEST_HOST", "127.0.0.2")
    assert from_dict({"server": {"host": "${HAPAX_TEST_HOST}"}}).server.host == "127.0.0.2"


# -- secrets ------------------------------------------------------------------------------

PROVIDER_KEY = "sk-provider-3f9a8b7c6d5e4f3a2b1c"
GATEWAY_KEY = "hpx-gateway-0a1b2c3d4e5f6a7b8c9d"


def _secret_config(**extra: Any) -> dict[str, Any]:
    return {
        "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                             "api_key": "${UP_KEY}"}},
        "models": {"gpt": {"targets": [{"provider": "up"}]}},
        "keys": [{"name": "web-app", "key": "${GW_KEY}"}],
        **extra,
    }


SECRET_ENV = {"UP_KEY": PROVIDER_KEY, "GW_KEY": GATEWAY_KEY}


def test_secrets_do_not_appear_in_repr_or_str() -> None:
    cfg = from_dict(_secret_config(), env=SECRET_ENV)
    assert cfg.providers["up"].api_key is not None
    assert cfg.providers["up"].api_key.reveal() == PROVIDER_KEY
    assert cfg.keys is not None and cfg.keys[0].key is not None
    assert cfg.keys[0].key.reveal() == GATEWAY_KEY
    for text in (repr(cfg), str(cfg), repr(cfg.providers), repr(cfg.keys), str(cfg.keys[0])):
        assert PROVIDER_KEY not in text
        assert GATEWAY_KEY not in text
    assert "web-app" in repr(cfg.keys)


@pytest.mark.parametrize("raw", [
    # a secret in a field of the wrong type
    {"providers": {"up": {"kind": "openai", "base_url": "http://h/v1",
                          "api_key": [PROVIDER_KEY]}}},
    {"providers": {"up": {"kind": "openai", "base_url": "http://h/v1",
                          "api_key": {"k": PROVIDER_KEY}}}},
    {"keys": [{"name": "a", "key": [GATEWAY_KEY]}]},
    # a key in clear where its hash belongs
    {"keys": [{"name": "a", "key_sha256": GATEWAY_KEY}]},
    # both forms, or the same key twice
    {"keys": [{"name": "a", "key": GATEWAY_KEY,
               "key_sha256": hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()}]},
    {"keys": [{"name": "a", "key": GATEWAY_KEY}, {"name": "b", "key": GATEWAY_KEY}]},
    # a valid secret next to problems in the same section
    {"providers": {"up": {"kind": "openai", "base_url": "nope", "api_key": PROVIDER_KEY,
                          "api_kye": 1}}},
    {"keys": [{"name": "bad name!", "key": GATEWAY_KEY, "models": ["unknown"]}]},
])
def test_secrets_never_appear_in_config_errors(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(raw, "pipeline.yaml", env={})
    text = str(info.value) + repr(info.value) + repr(info.value.problems)
    assert PROVIDER_KEY not in text
    assert GATEWAY_KEY not in text
    # and the hex digest of a clear key (usable to check guesses) is not shown either
    assert hashlib.sha256(GATEWAY_KEY.encode()).hexdigest() not in text


def test_secrets_never_appear_in_logs(hapax_gateway: Any, fake_provider: Any,
                                      tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    monkeypatch.setenv("HAPAX_TRACE_PLUGINS", "1")  # the chattiest logging there is
    access = tmp_path / "access.log"
    raw = _secret_config(server={"host": "127.0.0.1", "port": 0,
                                 "access_log": {"format": "json", "path": str(access)}})
    raw["providers"]["up"]["base_url"] = fake_provider.base_url
    caplog.set_level(logging.DEBUG)
    gw = hapax_gateway(from_dict(raw, env=SECRET_ENV))
    with openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0) as good:
        reply = good.chat.completions.create(model="gpt",
                                             messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    with openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY + "x", max_retries=0) as bad, \
            pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    assert GATEWAY_KEY not in str(info.value)
    gw.stop()
    # The provider did get its key, so the secret really was on the request path.
    sent = {k.lower(): v for k, v in fake_provider.requests[-1].headers.items()}
    assert sent["authorization"] == f"Bearer {PROVIDER_KEY}"
    # (the SDK's own debug log is the client's business: look at what Hapax logged)
    ours = [r for r in caplog.records if r.name.startswith("hapax")]
    logged = "\n".join(r.getMessage() for r in ours) + access.read_text()
    assert '"key":"web-app"' in logged
    assert "hapax_authenticate" in logged  # the trace was on
    assert PROVIDER_KEY not in logged
    assert GATEWAY_KEY not in logged


# -- keys ---------------------------------------------------------------------------------


def test_key_needs_exactly_one_of_key_or_key_sha256() -> None:
    digest = hashlib.sha256(b"k").hexdigest()
    assert only_problem({"keys": [{"name": "a"}]}) == \
        ("keys[0]", "give exactly one of `key` or `key_sha256`")
    assert only_problem({"keys": [{"name": "a", "key": "k", "key_sha256": digest}]}) == \
        ("keys[0]", "give exactly one of `key` or `key_sha256`")
    by_hash = from_dict({"keys": [{"name": "a", "key_sha256": digest.upper()}]}, env={})
    by_clear = from_dict({"keys": [{"name": "a", "key": "k"}]}, env={})
    assert by_hash.keys is not None and by_clear.keys is not None
    assert by_hash.keys[0].digest == by_clear.keys[0].digest == hashlib.sha256(b"k").digest()


def test_key_sha256_must_be_64_hex_digits() -> None:
    path, message = only_problem({"keys": [{"name": "a", "key_sha256": "abc123"}]})
    assert path == "keys[0].key_sha256"
    assert "64 hex digits" in message


def test_keys_section_absent_means_open_and_empty_list_means_closed() -> None:
    assert from_dict({}, env={}).keys is None
    assert from_dict({"keys": []}, env={}).keys == ()


def test_key_model_allow_list_names_known_aliases() -> None:
    path, message = only_problem({**MOCK, "keys": [{"name": "a", "key": "k",
                                                    "models": ["gpt", "nope"]}]})
    assert (path, message) == ("keys[0].models[1]", "unknown model alias 'nope'")
    # a catch-all route makes every alias possible
    star = {**MOCK, "models": {"*": {"targets": [{"provider": "mock"}]}}}
    assert from_dict({**star, "keys": [{"name": "a", "key": "k", "models": ["any"]}]}, env={})


# -- names --------------------------------------------------------------------------------


def test_duplicate_key_names() -> None:
    found = problems({"keys": [{"name": "a", "key": "k1"}, {"name": "a", "key": "k2"}]})
    assert found == [("keys[1].name", "duplicate key name 'a'")]


def test_same_key_under_two_names() -> None:
    found = problems({"keys": [{"name": "a", "key": "k1"}, {"name": "b", "key": "k1"}]})
    assert found == [("keys[1]", "same key as 'a'")]


@pytest.mark.parametrize("section", ["providers", "models"])
def test_duplicate_names_in_yaml_are_refused(section: str) -> None:
    text = ("providers:\n  mock: {kind: mock}\n  mock: {kind: mock, chunks: 2}\n"
            "models:\n  gpt: {targets: [{provider: mock}]}\n")
    if section == "models":
        text = ("providers:\n  mock: {kind: mock}\nmodels:\n  gpt: {targets: [{provider: mock}]}"
                "\n  gpt: {targets: [{provider: mock}]}\n")
    with pytest.raises(ConfigError) as info:
        loads(text, "p.yaml", env={})
    (_, message), = info.value.problems
    line = 3 if section == "providers" else 5
    assert message.startswith(f"line {line}, column 3: invalid YAML: duplicate key ")


def test_yaml_merge_keys_may_be_overridden() -> None:
    text = ("providers:\n  a: &base {kind: mock, chunks: 2}\n  b: {<<: *base, chunks: 3}\n")
    cfg = loads(text, env={})
    assert (cfg.providers["a"].chunks, cfg.providers["b"].chunks) == (2, 3)


@pytest.mark.parametrize("name", ["bad name", "-dash", "a/b", ""])
def test_provider_names_are_checked(name: str) -> None:
    path, message = only_problem({"providers": {name: {"kind": "mock"}}})
    assert path == f"providers.{name}"
    assert "expected a provider name" in message


def test_target_naming_an_unknown_provider() -> None:
    found = problems({"providers": {"mock": {"kind": "mock"}, "other": {"kind": "mock"}},
                      "models": {"gpt": {"targets": [{"provider": "mock"},
                                                     {"provider": "nope"}]}}})
    assert found == [("models.gpt.targets[1].provider",
                      "unknown provider 'nope' (providers: mock, other)")]


def test_unknown_provider_kind_is_found_when_the_gateway_is_built() -> None:
    cfg = from_dict({"providers": {"x": {"kind": "bedrock"}, "m": {"kind": "mock"}}},
                    "pipeline.yaml", env={})  # plugins may register kinds: not a schema error
    with pytest.raises(ConfigError) as info:
        Gateway(cfg)
    assert info.value.problems == [
        ("providers.x.kind", "unknown provider kind 'bedrock' (known: anthropic, mock, "
                             "openai)")]
    assert str(info.value).startswith("pipeline.yaml: providers.x.kind: ")


def test_defaults() -> None:
    cfg = from_dict({}, env={})
    assert isinstance(cfg, Config)
    assert (cfg.server.host, cfg.server.port, cfg.server.workers) == ("127.0.0.1", 8080, 1)
    assert cfg.server.limits.max_body == 4 * 1024 * 1024
    assert cfg.server.drain_timeout == 30.0
    assert (cfg.server.access_log.format, cfg.server.access_log.path) == ("json", "-")
    assert (cfg.providers, cfg.models, cfg.keys, cfg.plugins) == ({}, {}, None, {})


def test_config_is_frozen() -> None:
    cfg = from_dict(MOCK, env={})
    with pytest.raises(AttributeError):
        cfg.server.port = 1  # type: ignore[misc]


# -- the generated reference ------------------------------------------------------------------


def test_config_reference_doc_is_up_to_date() -> None:
    doc = ROOT / "docs" / "reference" / "config.md"
    assert doc.read_text(encoding="utf-8") == config_reference(), (
        "docs/reference/config.md is out of date: regenerate it with "
        "`hapax config-reference > docs/reference/config.md`")


def test_config_reference_command_prints_the_reference() -> None:
    out = subprocess.run([sys.executable, "-m", "hapax", "config-reference"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out == config_reference()


def test_config_reference_documents_every_key() -> None:
    text = config_reference()
    for path in ("server.limits.max_body", "server.access_log.format", "server.drain_timeout",
                 "providers.<name>.api_key", "providers.<name>.timeouts.connect",
                 "models.<alias>.targets", "models.<alias>.targets[].provider", "keys[].key_sha256",
                 "plugins"):
        assert f"| `{path}` |" in text, path


def test_access_log_off_may_be_written_bare() -> None:
    # YAML 1.1 reads a bare `off` as false; the user meant the format "off".
    assert loads("server: {access_log: {format: off}}", env={}).server.access_log.format == "off"
    path, message = only_problem({"server": {"access_log": {"format": True}}})
    assert path == "server.access_log.format"
