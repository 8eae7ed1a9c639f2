"""The documentation cannot rot: every fact in it that code can check is checked here.

Links resolve; every metric family, CLI command, option, environment variable, endpoint and
error code of the code is documented, and every one documented exists; the README's SDK
and plugin examples run against a real gateway; the README's commands are CI's; the YAML
examples are valid configurations.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import re
import types
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

import hapax.errors
from hapax._schema import Ctx
from hapax.cli import build_parser, main
from hapax.config import Limits, ServerConfig, load, loads
from hapax.errors import ConfigError
from hapax.metrics import Metrics
from hapax.testing import GatewayThread

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
ALL_MARKDOWN = [README, *sorted(DOCS.rglob("*.md"))]
# The pages written with this test in mind (other pages have their own tests).
OWN_PAGES = [README] + [DOCS / p for p in (
    "index.md", "how-to/deploy.md", "how-to/configure.md", "how-to/performance-tuning.md",
    "reference/endpoints.md", "reference/errors.md", "reference/metrics.md",
    "reference/cli.md", "explanation/architecture.md")]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- Markdown helpers --------------------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(info string, code)`` of every fenced block, indented ones (in lists) included."""
    blocks: list[tuple[str, str]] = []
    info: str | None = None
    indent, lines = 0, list[str]()
    for line in text.splitlines():
        stripped = line.lstrip()
        if info is None:
            if stripped.startswith("```"):
                info, indent, lines = stripped[3:].strip(), len(line) - len(stripped), []
        elif stripped.startswith("```"):
            blocks.append((info, "\n".join(lines) + "\n"))
            info = None
        else:
            lines.append(line[indent:] if not line[:indent].strip() else line.lstrip())
    return blocks


def prose(text: str) -> str:
    """The text without fenced blocks and inline code (where links are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def section(text: str, heading: str) -> str:
    """The body of the section whose heading line is ``heading``, up to the next heading
    of the same or a higher level (a ``#`` line inside a fenced block is no heading)."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines(keepends=True)
    start = lines.index(heading + "\n") + 1
    fenced = False
    for end in range(start, len(lines)):
        if lines[end].lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(f"#{{1,{level}}} ", lines[end]):
            break
    else:
        end = len(lines)
    return "".join(lines[start:end])


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to dashes, -N for
    repeats."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def table_rows(text: str) -> Iterator[list[str]]:
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"\|\s*-", line):
            yield [cell.strip() for cell in line.strip().strip("|").split("|")]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- (a) links ---------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", re.M)


def links(text: str) -> list[str]:
    body = prose(text)
    return _LINK.findall(body) + _REFDEF.findall(body)


@pytest.mark.parametrize("page", ALL_MARKDOWN, ids=rel)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in links(text):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in dest.parents and dest != ROOT:
            broken.append(f"{target} (outside the repository)")
        elif not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and \
                anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading with id #{anchor})")
    assert not broken, f"{rel(page)}: broken links: {broken}"


def test_link_checker_sees_links() -> None:
    # Guard the guard: a regex that matched nothing would pass every page.
    sample = ("[a](x.md) ![i](img.png) [b](y.md#h \"t\") `[c](no.md)`\n[d]: z.md\n"
              "```\n[e](no2.md)\n```\n")
    assert sorted(links(sample)) == ["img.png", "x.md", "y.md#h", "z.md"]
    assert anchors("# A `b`: c\n## A `b`: c\n## x_y (z)\n") == {"a-b-c", "a-b-c-1", "x_y-z"}


# -- (b) metrics -----------------------------------------------------------------------

METRICS_MD = DOCS / "reference" / "metrics.md"


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    text = section(METRICS_MD.read_text(encoding="utf-8"), "## Metric families")
    out = {}
    for row in table_rows(text):
        names = ticked(row[0])
        if names and names[0].startswith("hapax_"):
            out[names[0]] = (row[1], set(ticked(row[2])))
    return out


@pytest.fixture
def quickstart_gateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatewayThread]:
    # Only Hapax's own plugins: an installed third-party plugin documents its own metrics.
    monkeypatch.setenv("HAPAX_DISABLE_PLUGIN_AUTOLOAD", "1")
    with GatewayThread(load(QUICKSTART)) as gw:
        yield gw


def test_every_metric_family_is_documented(quickstart_gateway: GatewayThread) -> None:
    with urllib.request.urlopen(quickstart_gateway.url + "/metrics", timeout=10) as resp:
        scraped = resp.read().decode()
    exposed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", scraped, re.M))
    assert {f.name for f in Metrics().families} <= exposed.keys()
    documented = documented_metrics()
    assert exposed.keys() - documented.keys() == set(), "exposed but not documented"
    assert documented.keys() - exposed.keys() == set(), "documented but not exposed"
    labels = {f.name: set(f.labels) for f in quickstart_gateway.gateway.metrics.families}
    for name, (kind, doc_labels) in documented.items():
        assert kind == exposed[name], name
        assert doc_labels == labels[name], name


def test_metric_label_values_are_documented(quickstart_gateway: GatewayThread) -> None:
    rows = {ticked(r[0])[0]: set(ticked(r[1])) for r in
            table_rows(section(METRICS_MD.read_text(encoding="utf-8"), "## Labels"))
            if ticked(r[0])}
    routes = {entry[2] for entry in quickstart_gateway.gateway._routes.values()} | {"other"}
    assert rows["route"] == routes
    upstream = {c.code for c in vars(hapax.errors).values() if isinstance(c, type)
                and issubclass(c, hapax.errors.UpstreamError)}
    assert rows["kind"] == upstream


# -- (c) the command line ------------------------------------------------------------------

CLI_MD = DOCS / "reference" / "cli.md"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("hapax has no subcommands?")


def test_every_cli_command_and_option_is_documented() -> None:
    text = CLI_MD.read_text(encoding="utf-8")
    commands = subcommands()
    assert {"serve", "check", "plugins", "config-reference"} <= commands.keys()
    documented = set(re.findall(r"^## `hapax ([\w-]+)`$", text, re.M))
    assert documented == commands.keys()
    for name, sub in commands.items():
        body = section(text, f"## `hapax {name}`")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for word in action.option_strings or [action.dest]:
                assert f"`{word}" in body, f"hapax {name}: {word} is not documented"
    assert "--version" in text


@pytest.mark.parametrize("command", [["check", "examples/quickstart.yaml"], ["plugins"]])
def test_cli_sample_output_is_real(command: list[str], capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAPAX_DISABLE_PLUGIN_AUTOLOAD", "1")  # as on a fresh install
    monkeypatch.chdir(ROOT)
    assert main(command) == 0
    out = capsys.readouterr().out
    body = section(CLI_MD.read_text(encoding="utf-8"), f"## `hapax {command[0]}`")
    samples = [code for info, code in fenced_blocks(body) if info == "text"][1:]
    assert samples, "no sample output in the section"
    for sample in samples:
        assert sample in out


def test_every_environment_variable_is_documented() -> None:
    sources = [*ROOT.glob("hapax/**/*.py"), *ROOT.glob("hapax/**/*.pyx"), ROOT / "setup.py"]
    used = {v for p in sources for v in re.findall(r"\bHAPAX_[A-Z_]+\b", p.read_text())}
    assert "HAPAX_NO_EXTENSIONS" in used
    table = section(CLI_MD.read_text(encoding="utf-8"), "## Environment variables")
    documented = {t.partition("=")[0] for row in table_rows(table) for t in ticked(row[0])}
    assert used == documented


# -- (d) errors ---------------------------------------------------------------------------

ERRORS_MD = DOCS / "reference" / "errors.md"


def _status_of(name: str) -> int | None:
    cls = getattr(hapax.errors, name, None)
    if isinstance(cls, type) and issubclass(cls, hapax.errors.RequestError):
        return cls.status
    return None


def error_codes_in_source() -> set[tuple[Any, str]]:
    """``(status, code)`` of every error code string in hapax/, found in the syntax tree:
    ``code = "…"`` in error classes, ``code="…"`` arguments, and the positional codes of
    ``Denial(status, msg, type, code)`` and the listener's ``_fail(status, msg, code)``."""
    found: set[tuple[Any, str]] = set()
    for path in ROOT.glob("hapax/**/*.py"):
        if "testing" in path.parts:
            continue  # the fake provider imitates providers, it is not the gateway
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) \
                            and any(isinstance(t, ast.Name) and t.id == "code"
                                    for t in stmt.targets) and isinstance(stmt.value.value, str):
                        found.add((_status_of(node.name), stmt.value.value))
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args: list[Any] = [a.value if isinstance(a, ast.Constant) else None
                               for a in node.args]
            kw: dict[str | None, Any] = {k.arg: k.value.value for k in node.keywords
                                         if isinstance(k.value, ast.Constant)}
            if isinstance(kw.get("code"), str):
                found.add((kw.get("status") or _status_of(name), kw["code"]))
            elif name in ("_fail", "_ParseFailure") and len(args) == 3 and \
                    isinstance(args[2], str):
                found.add((args[0], args[2]))
            elif name == "Denial" and len(args) >= 4 and isinstance(args[3], str):
                found.add((args[0], args[3]))
    return found


def documented_errors() -> list[tuple[int, str, str]]:
    text = section(ERRORS_MD.read_text(encoding="utf-8"), "## Every status Hapax produces")
    return [(int(row[0]), (ticked(row[1]) or ["—"])[0], (ticked(row[2]) or ["—"])[0])
            for row in table_rows(text) if row[0].isdigit()]


def test_every_error_code_is_documented_and_exists() -> None:
    in_source = error_codes_in_source()
    assert len({code for _, code in in_source}) >= 15  # the collector works
    rows = documented_errors()
    documented = {code for _, _, code in rows if code not in ("null", "—")}
    assert {code for _, code in in_source} - documented == set(), "not documented"
    assert documented - {code for _, code in in_source} == set(), "documented, not in hapax/"
    for status, code in in_source:
        if status is not None:
            assert (status, code) in {(s, c) for s, _, c in rows}, (status, code)


def test_error_classes_match_their_rows() -> None:
    rows = set(documented_errors())
    for cls in vars(hapax.errors).values():
        if isinstance(cls, type) and issubclass(cls, hapax.errors.RequestError) and cls.code:
            assert (cls.status, cls.type, cls.code) in rows, cls.__name__
    statuses = {s for s, _, _ in rows}
    assert {400, 401, 403, 404, 405, 408, 413, 431, 499, 500, 502, 503, 504} <= statuses


def test_every_endpoint_is_documented(quickstart_gateway: GatewayThread) -> None:
    text = (DOCS / "reference" / "endpoints.md").read_text(encoding="utf-8")
    rows = list(table_rows(text[:text.index("\n## ")]))  # the table at the top
    for path, (methods, *_) in quickstart_gateway.gateway._routes.items():
        if not path.startswith("/v1") and f"/v1{path}" in quickstart_gateway.gateway._routes:
            continue  # the unprefixed twin of a /v1 path
        row = next((r for r in rows if len(r) > 1 and f"`{path}`" in r[1]), None)
        assert row is not None, f"{path} is not in the endpoint table"
        assert set(ticked(row[0])) == set(methods), path


# -- (e) the README's examples run ---------------------------------------------------------

BASE_URL = "http://127.0.0.1:8080/v1"


def readme_section(heading: str) -> str:
    return section(README.read_text(encoding="utf-8"), heading)


def test_readme_sdk_examples_run(capfd: pytest.CaptureFixture[str]) -> None:
    blocks = [code for info, code in fenced_blocks(readme_section("## A 30-second tour"))
              if info == "python"]
    assert len(blocks) == 2 and BASE_URL in blocks[0]
    namespace: dict[str, Any] = {}
    with GatewayThread(load(QUICKSTART)) as gw:
        try:
            for code in blocks:
                exec(compile(code.replace(BASE_URL, gw.base_url), "README.md", "exec"),
                     namespace)
        finally:
            namespace["client"].close()
    out = capfd.readouterr().out
    # Once whole, once put together from the streamed pieces.
    assert out.count("Mock answer to: Say hello") == 2, out
    # The quick start writes its JSON access log to standard output: one line per request,
    # with exactly the fields the deploy guide documents.  (The log writes to the file
    # descriptor directly, so a line may land right after the SDK's unfinished line.)
    records = [json.loads(line) for line in re.findall(r'(\{"time".*)$', out, re.M)]
    assert [(r["path"], r["status"], r["stream"]) for r in records] == [
        ("/v1/chat/completions", 200, False), ("/v1/chat/completions", 200, True)]
    assert records[1]["tokens_out"] == 5  # include_usage made the stream report usage
    table = section((DOCS / "how-to" / "deploy.md").read_text(encoding="utf-8"),
                    "## Shipping the access log")
    fields = [ticked(row[0])[0] for row in table_rows(table) if ticked(row[0])]
    assert fields == list(records[0])


def test_readme_plugin_example_runs() -> None:
    blocks = [code for info, code in fenced_blocks(readme_section("## Plugins"))
              if info == "python"]
    assert len(blocks) == 1
    module = types.ModuleType("require_user")
    exec(compile(blocks[0], "README.md", "exec"), module.__dict__)
    with GatewayThread(load(QUICKSTART), plugins=[("require_user", module)]) as gw, \
            openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
        hello: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=hello)
        assert info.value.code == "missing_user"
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=hello,
                                               user="alice")
        assert reply.choices[0].message.content == "Mock answer to: hi"
        # Only chat requests need it.
        client.embeddings.create(model="text-embedding-3-small", input="hi")


class _AnyEnv(Mapping[str, str]):
    """An environment in which every variable is set: ``*_URL`` to a URL, the others to
    their own name."""

    def __getitem__(self, key: str) -> str:
        return "http://127.0.0.1:8000/v1" if key.endswith("_URL") else key

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def get(self, key: str, default: Any = None) -> str:  # type: ignore[override]
        return self[key]


@pytest.mark.parametrize("page", OWN_PAGES, ids=rel)
def test_yaml_examples_are_valid_configs(page: Path) -> None:
    # A ```yaml block is a pipeline.yaml (or a part of one, which is a valid file too);
    # other YAML says so in its info string ("```yaml kubernetes").
    for info, code in fenced_blocks(page.read_text(encoding="utf-8")):
        if info == "yaml":
            loads(code, f"{rel(page)} example", env=_AnyEnv())


@pytest.mark.parametrize("heading, cls", [("## `server`: where to listen", ServerConfig),
                                           ("## Limits", Limits)])
def test_configure_guide_defaults_match_the_code(heading: str, cls: type) -> None:
    text = section((DOCS / "how-to" / "configure.md").read_text(encoding="utf-8"), heading)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = 0
    for row in table_rows(text):
        key, default = ticked(row[0]), ticked(row[1])
        if not key or key[0] not in fields or not default:
            continue
        # Read the documented default as pipeline.yaml would read it.
        field = fields[key[0]]
        value = field.metadata["conv"](yaml.safe_load(default[0]), key[0], Ctx())
        assert value == field.default, f"{heading}: {key[0]}"
        checked += 1
    assert checked >= 5


def test_configure_guide_shows_real_check_errors() -> None:
    text = section((DOCS / "how-to" / "configure.md").read_text(encoding="utf-8"),
                   "## Check a file before you use it")
    sample = [code for info, code in fenced_blocks(text) if info == "text"][0]
    broken = """
server: {host: 127.0.0.1, prot: 8080}
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1"}
  local: {kind: mock}
models:
  gpt-4o: {targets: [{provider: opneai}]}
"""
    with pytest.raises(ConfigError) as info:
        loads(broken, "pipeline.yaml")
    assert str(info.value) + "\n" == sample


@pytest.mark.parametrize("page", OWN_PAGES, ids=rel)
def test_example_key_hashes_match_their_keys(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    keys = {hashlib.sha256(k.encode()).hexdigest() for k in re.findall(r"\bhpx-[\w-]+", text)}
    for digest in re.findall(r"\b[0-9a-f]{64}\b", text):
        assert digest in keys, f"{rel(page)}: {digest} is the hash of no example key"


# -- (f) the README's commands are the ones CI runs ----------------------------------------


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    title, first_block = text.split("\n", 1)
    assert title.startswith("# ") and first_block.lstrip("\n").startswith("```sh\n")
    info, code = fenced_blocks(text)[0]
    commands = [line for line in code.splitlines() if line.strip() and
                not line.startswith("#")]
    assert len(commands) == 2
    serve, test = commands

    venv = "python3 -m venv .venv && . .venv/bin/activate && "
    assert serve == venv + "pip install . && hapax serve examples/quickstart.yaml"
    args = build_parser().parse_args(serve.rsplit("&& ", 1)[1].split()[1:])
    assert args.command == "serve" and (ROOT / args.config).is_file()

    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, line in enumerate(ci) if "test command, verbatim from here" in line)
    ci_command = ci[marker + 1].strip()
    # pip's -q only quiets CI's log; everything else must be the same, character for
    # character.
    ci_command = re.sub(r"^pip install -q ", "pip install ", ci_command)
    assert test == venv + ci_command
    assert test == (venv + 'pip install -e ".[test]" ./plugins/hapax-redact && '
                    "python -m pytest -q")
