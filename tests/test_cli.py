"""The `hapax` command: --version, check, plugins, serve (with the built-in default)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from proc import ROOT, HapaxProcess, get

import hapax
import hapax._core
from hapax.cli import main

QUICKSTART = ROOT / "examples" / "quickstart.yaml"
OPENAI_EXAMPLE = ROOT / "examples" / "openai.yaml"


def hapax_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process."""
    return subprocess.run([sys.executable, "-m", "hapax", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_version_prints_the_package_version() -> None:
    done = hapax_cmd("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"hapax {hapax.__version__}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("hapax")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"hapax {hapax.__version__}"


def test_no_command_is_a_usage_error() -> None:
    done = hapax_cmd()
    assert done.returncode == 2
    assert "usage: hapax" in done.stderr


def test_check_quickstart_passes() -> None:
    done = hapax_cmd("check", str(QUICKSTART))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{QUICKSTART}: OK")
    assert "1 provider(s), 3 model alias(es), open (no keys)" in done.stdout
    assert done.stderr == ""


BROKEN = """\
server:
  limts: {max_body: 1MiB}
providers:
  mock: {kind: mock, chunk_delay: soon}
  oa: {kind: openai}
models:
  gpt:
    targets: [{provider: mock}, {provider: 7}]
keys:
  - {name: web, key: k, models: gpt}
"""


def test_check_broken_file_prints_one_line_per_problem(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [
        f"{path}: server.limts: unknown key; did you mean 'limits'? (expected one of: host, "
        "port, workers, backlog, limits, drain_timeout, access_log, tls)",
        f"{path}: providers.mock.chunk_delay: expected a duration such as 250ms, 30s or 10m, "
        "got 'soon'",
        f"{path}: models.gpt.targets[1].provider: expected a non-empty string, got an "
        "integer 7",
        f"{path}: keys[0].models: expected a list, got a string",
    ]


def test_check_reports_cross_references_with_their_key_path(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("server: {limts: {}}\nproviders: {mock: {kind: mock}}\n"
                    "models: {gpt: {targets: [{provider: openai}]}}\n")
    done = hapax_cmd("check", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}: server.limts: unknown key; did you mean 'limits'? (expected one of: host, "
        "port, workers, backlog, limits, drain_timeout, access_log, tls)",
        f"{path}: models.gpt.targets[0].provider: unknown provider 'openai' (providers: mock)",
    ]


def test_check_unknown_provider_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("providers: {x: {kind: bedrock}}\n")
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: providers.x.kind: unknown provider kind 'bedrock' "
        f"(known: anthropic, mock, openai)\n")


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    assert main(["check", str(path)]) == 1
    assert capsys.readouterr().err == f"{path}: cannot read the file: No such file or directory\n"


def test_check_invalid_yaml_names_line_and_column(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("server:\n  host: 127.0.0.1\n   port: 8080\n")
    assert main(["check", str(path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: line 3, column 8: invalid YAML: ")
    assert "mapping values are not allowed here" in line


def test_plugins_lists_builtins_and_their_hooks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    listing: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("    "):
            listing[current].append(line.strip())
        else:
            current, _, source = line.partition("  ")
            listing[current] = []
            assert source == "[builtin]" or not current.startswith("hapax.builtins."), line
    assert listing["hapax.builtins.providers"] == ["hapax_register_providers"]
    assert set(listing["hapax.builtins.auth"]) == {"hapax_configure", "hapax_authenticate",
                                                   "hapax_authorize"}
    assert "hapax_route" in listing["hapax.builtins.routing"]
    assert "hapax_after_response" in listing["hapax.builtins.accesslog"]
    assert "hapax_after_response" in listing["hapax.builtins.metrics"]


def _env_without_openai_key() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}


def test_openai_example_passes_with_the_key_set() -> None:
    key = "sk-test-7d1e0c9b8a7f6e5d4c3b2a19"
    done = hapax_cmd("check", str(OPENAI_EXAMPLE),
                     env={**_env_without_openai_key(), "OPENAI_API_KEY": key})
    assert done.returncode == 0, done.stderr
    assert f"{OPENAI_EXAMPLE}: OK" in done.stdout
    assert key not in done.stdout + done.stderr


def test_openai_example_without_the_key_names_the_key_and_the_variable() -> None:
    done = hapax_cmd("check", str(OPENAI_EXAMPLE), env=_env_without_openai_key())
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"{OPENAI_EXAMPLE}: providers.openai.api_key: ")
    assert "environment variable OPENAI_API_KEY is not set" in line


def test_openai_example_with_an_empty_key_never_prints_a_value() -> None:
    # Set, but empty: still a problem, and the message shows no value at all.
    done = hapax_cmd("check", str(OPENAI_EXAMPLE),
                     env={**_env_without_openai_key(), "OPENAI_API_KEY": ""})
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"{OPENAI_EXAMPLE}: providers.openai.api_key: expected a non-empty "
                           "string")


def test_serve_without_config_uses_the_builtin_mock() -> None:
    with HapaxProcess(None) as hp:
        hp.wait_ready()
        with openai.OpenAI(base_url=hp.base_url, api_key="unused", max_retries=0) as client:
            reply = client.chat.completions.with_raw_response.create(
                model="anything", messages=[{"role": "user", "content": "ping"}])
        completion = reply.parse()
        assert completion.choices[0].message.content == "Mock answer to: ping"
        assert reply.headers["x-hapax-provider"] == "mock"
        assert hp.stop() == 0
    assert "shutting down" in hp.stderr


def test_serve_with_a_broken_config_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("server: {prot: 1}\n")
    done = hapax_cmd("serve", str(path), "--port", "0")
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{path}: server.prot: unknown key; did you mean 'port'? "
                                   "(expected one of: host, port, workers, backlog, limits, "
                                   "drain_timeout, access_log, tls)")


def test_serve_reports_a_port_in_use() -> None:
    with HapaxProcess(QUICKSTART) as first:
        done = hapax_cmd("serve", str(QUICKSTART), "--port", str(first.port))
        assert done.returncode == 1
        assert f"cannot listen on 127.0.0.1:{first.port}" in done.stderr
        assert first.stop() == 0


def limited(soft: int, hard: int) -> HapaxProcess:
    """``hapax serve`` (built-in default) started with this open-files limit."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if ours != resource.RLIM_INFINITY and ours < hard:
        pytest.skip(f"the hard open-files limit here is {ours}")
    hp = HapaxProcess(None)
    hp.argv = [prlimit, f"--nofile={soft}:{hard}", *hp.argv]  # prlimit execs: same pid
    return hp.start()


def max_open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


def test_serve_lifts_a_low_open_files_limit_and_serves_more_clients_than_it() -> None:
    """Started with the soft limit at 256 (hard 4096), the gateway raises it to 4096 and
    serves 300 clients at once (each holding a connection), with no warning."""
    with limited(256, 4096) as hp:
        hp.wait_ready()
        assert max_open_files(hp.pid) == (4096, 4096)
        socks = []
        try:
            for _ in range(300):
                s = socket.create_connection((hp.host, hp.port), timeout=10)
                socks.append(s)
            body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
            for s in socks:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                          b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(body), body))
            for s in socks:
                head = s.recv(65536)
                assert head.startswith(b"HTTP/1.1 200 "), head[:100]
        finally:
            for s in socks:
                s.close()
        assert hp.stop() == 0
    assert "open-files limit" not in hp.stderr


def test_serve_warns_when_the_open_files_limit_stays_low() -> None:
    with limited(256, 512) as hp:
        assert max_open_files(hp.pid) == (512, 512)
        assert hp.stop() == 0
    assert "the open-files limit is 512 (hard limit 512)" in hp.stderr
    assert "about 256 clients at once" in hp.stderr


# A sitecustomize that makes the compiled units of the core unimportable, as in a build
# without a C compiler or a source checkout run without build_ext.
NO_COMPILED_CORE = '''
import importlib.abc, re, sys

class _NoCompiledCore(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if re.fullmatch(r"hapax\\._core\\._\\w+_c", name):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, _NoCompiledCore())
'''


def healthz(hp: HapaxProcess) -> dict[str, object]:
    status, _, body = get(hp.url, "/healthz")
    assert status == 200
    return json.loads(body)  # type: ignore[no-any-return]


def test_serve_warns_when_the_compiled_core_is_missing(tmp_path: Path) -> None:
    """The pure twins still serve, but the operator is told, with the fix."""
    (tmp_path / "sitecustomize.py").write_text(NO_COMPILED_CORE)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    with HapaxProcess(None, extra_env={"PYTHONPATH": path, "HAPAX_NO_EXTENSIONS": "0"}) as hp:
        hp.wait_ready()
        assert healthz(hp)["core"] == "py"
        with openai.OpenAI(base_url=hp.base_url, api_key="unused", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="anything", messages=[{"role": "user", "content": "ping"}])
        assert reply.choices[0].message.content == "Mock answer to: ping"
        assert hp.stop() == 0
    assert "the compiled core is not in use (No module named 'hapax._core._" in hp.stderr
    assert "hidden by the test" in hp.stderr
    assert "pip install ." in hp.stderr and "build_ext --inplace" in hp.stderr


def test_serve_notes_the_pure_core_when_asked_for_it() -> None:
    with HapaxProcess(None, extra_env={"HAPAX_NO_EXTENSIONS": "1"}) as hp:
        hp.wait_ready()
        assert healthz(hp)["core"] == "py"
        assert hp.stop() == 0
    assert "running the pure-Python core: HAPAX_NO_EXTENSIONS is set" in hp.stderr
    assert "compiled core is not in use" not in hp.stderr


@pytest.mark.skipif(hapax._core.NO_EXTENSIONS, reason="HAPAX_NO_EXTENSIONS is set")
def test_serve_runs_the_compiled_core_by_default() -> None:
    with HapaxProcess(None, extra_env={"HAPAX_NO_EXTENSIONS": ""}) as hp:
        hp.wait_ready()
        assert healthz(hp)["core"] == "c"
        assert hp.stop() == 0
    assert "compiled core is not in use" not in hp.stderr
    assert "pure-Python core" not in hp.stderr
