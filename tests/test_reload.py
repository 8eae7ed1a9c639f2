"""Configuration reload: SIGHUP (and `hapax reload`) on real `hapax serve` processes.

A valid new pipeline.yaml serves new requests while requests and streams already running
finish on the old one; an invalid one is refused with `hapax check`'s errors and the old
one keeps serving; limiter state and metrics survive; a worker restarted after a reload
runs the new configuration.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from proc import ROOT, HapaxProcess, get, pid_alive
from prometheus_client.parser import text_string_to_metric_families

from hapax.config import load
from hapax.node import NodeState
from hapax.pipeline.gateway import Gateway
from hapax.testing import GatewayThread
from hapax.testing.fake_provider import FakeProvider, Reply

pytestmark = pytest.mark.slow

KEY = "sk-reload-test-0123456789"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    """Two upstreams, ``a`` and ``b``: a reload moves a target from one to the other."""
    with FakeProvider() as a, FakeProvider() as b:
        yield a, b


def write_config(path: Path, fakes: tuple[FakeProvider, FakeProvider], *,
                 target: str = "a", aliases: tuple[str, ...] = (),
                 limits: dict[str, int] | None = None,
                 model_limits: dict[str, dict[str, int]] | None = None) -> None:
    """``m`` (and every alias in ``aliases``) routed to provider ``target``; the key
    has ``limits``, aliases the ``model_limits`` named after them."""
    a, b = fakes
    key: dict[str, Any] = {"name": "tester", "key": KEY}
    if limits:
        key["limits"] = limits
    cfg = {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"},
                   "drain_timeout": 10},
        # A max_concurrent gives each provider a node-wide queue (slots and per-process
        # rows in the node state) for reloads to carry over.
        "providers": {"a": {"kind": "openai", "base_url": a.base_url, "max_concurrent": 64},
                      "b": {"kind": "openai", "base_url": b.base_url, "max_concurrent": 64}},
        "models": {alias: {"targets": [{"provider": target}], "retries": 0}
                   for alias in ("m", *aliases)},
        "keys": [key],
    }
    for alias, lim in (model_limits or {}).items():
        cfg["models"][alias]["limits"] = lim
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML


def client(hp: HapaxProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=hp.base_url, api_key=KEY, max_retries=0, timeout=20)


def provider_of(hp: HapaxProcess, model: str = "m") -> str:
    """The provider that answered a fresh request for ``model``."""
    with client(hp) as c:
        raw = c.chat.completions.with_raw_response.create(model=model, messages=HELLO)
        return raw.headers["x-hapax-provider"]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(hp: HapaxProcess) -> Samples:
    status, _, body = get(hp.url, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def wait_metric(hp: HapaxProcess, key: tuple[str, tuple[tuple[str, str], ...]],
                want: float, timeout: float = 5.0) -> Samples:
    """Scrape until ``key`` reads ``want``: under ``--workers`` another worker's numbers
    may be a snapshot interval (1 s) old.  Returns the last scrape."""
    deadline = time.monotonic() + timeout
    while (metrics := samples(hp)).get(key, 0.0) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics.get(key) == want, key
    return metrics


def count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def wait_count(hp: HapaxProcess, pattern: str, want: int, timeout: float = 20.0) -> None:
    """Wait until ``pattern`` occurs ``want`` times on the server's stderr."""
    deadline = time.monotonic() + timeout
    while count(hp.stderr, pattern) < want:
        assert time.monotonic() < deadline, \
            f"{pattern!r} seen {count(hp.stderr, pattern)} times, not {want}:\n{hp.stderr}"
        time.sleep(0.02)


def reload(hp: HapaxProcess, generation: int, workers: int) -> None:
    """SIGHUP, then wait until every worker says it runs ``generation``."""
    hp.send_signal(signal.SIGHUP)
    wait_count(hp, rf"reloaded \S+ \(generation {generation}\)", workers)


def serve(config: Path, workers: int, *extra: str) -> HapaxProcess:
    args = ("--workers", str(workers)) if workers > 1 else ()
    hp = HapaxProcess(config, *args, *extra).start()
    hp.wait_ready(workers=workers)
    return hp


# -- (a) reloads under load -----------------------------------------------------------


class Load:
    """Client threads sending chats (plain and streamed) to ``m`` until stopped."""

    def __init__(self, hp: HapaxProcess, threads: int = 3) -> None:
        self.hp = hp
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, index: int) -> None:
        with client(self.hp) as c:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    if (n + index) % 2:
                        text = "".join(ch.choices[0].delta.content or ""
                                       for ch in c.chat.completions.create(
                                           model="m", messages=HELLO, stream=True)
                                       if ch.choices)
                    else:
                        reply = c.chat.completions.create(model="m", messages=HELLO)
                        text = reply.choices[0].message.content or ""
                    if "hello" not in text:
                        raise AssertionError(f"unexpected answer {text!r}")
                    with self._lock:
                        self.ok += 1
                except Exception as exc:  # every failure is reported, none hidden
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("workers", [1, 2])
def test_five_reloads_under_load_fail_no_request(
        workers: int, tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes)
    with serve(config, workers) as hp, client(hp) as kept:
        assert provider_of(hp) == "a"
        with Load(hp) as load:
            aliases: tuple[str, ...] = ()
            for generation in range(2, 7):
                time.sleep(0.8)
                target = "b" if generation % 2 == 0 else "a"
                aliases += (f"new-{generation}",)
                write_config(config, fakes, target=target, aliases=aliases)
                reload(hp, generation, workers)
                # New requests (new connections and the load's kept-alive ones alike)
                # see the new configuration: the new alias, the moved target.
                assert provider_of(hp) == target
                assert provider_of(hp, f"new-{generation}") == target
                raw = kept.chat.completions.with_raw_response.create(model="m",
                                                                     messages=HELLO)
                assert raw.headers["x-hapax-provider"] == target  # a kept-alive connection
            time.sleep(0.5)
        assert load.failures == []
        assert load.ok > 20
        metrics = wait_metric(hp, ("hapax_config_reloads_total", (("result", "ok"),)),
                              5 * workers)
        assert metrics[("hapax_config_generation", ())] == 6
        assert metrics[("hapax_config_reloads_total", (("result", "error"),))] == 0
        assert "Traceback" not in hp.stderr


# -- (b) a stream started before the reload -------------------------------------------


def test_a_running_stream_finishes_on_the_old_configuration(
        tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    a, b = fakes
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes, target="a")
    with serve(config, 1) as hp:
        a.queue(Reply(stream=True, chunks=6, chunk_delay=0.3))
        before_a, before_b = len(a.requests), len(b.requests)
        conn = http.client.HTTPConnection(hp.host, hp.port, timeout=20)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(
                {"model": "m", "messages": HELLO, "stream": True}),
                {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("x-hapax-provider") == "a"
            assert resp.readline().startswith(b"data: ")  # the stream is under way
            write_config(config, fakes, target="b")
            reload(hp, 2, 1)
            assert provider_of(hp) == "b"  # new requests: the new configuration
            rest = resp.read()  # the old stream goes on, to its end
        finally:
            conn.close()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in rest
        assert len(a.requests) == before_a + 1  # the stream, and nothing after the reload
        assert len(b.requests) == before_b + 1


# -- (c) an invalid configuration, (e) metrics that do not reset ------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_an_invalid_configuration_is_refused_and_the_old_one_serves(
        workers: int, tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes)
    with serve(config, workers) as hp:
        for _ in range(3):
            assert provider_of(hp) == "a"
        bad = json.loads(config.read_text())
        bad["models"]["m"]["retries"] = "many"
        bad["server"]["drain_timeout"] = "soon"
        config.write_text(json.dumps(bad))
        hp.send_signal(signal.SIGHUP)
        # The same lines as `hapax check`: file, key path, what was expected.
        check = subprocess.run([sys.executable, "-m", "hapax", "check", str(config)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert check.returncode == 1
        problems = check.stderr.strip().splitlines()
        assert len(problems) == 2
        assert any(": models.m.retries: " in p for p in problems)
        assert any("server.drain_timeout" in p for p in problems)
        hp.wait_stderr(r"reload of \S+ rejected")
        time.sleep(0.3)  # all the lines of the report
        for line in problems:
            assert line in hp.stderr
        assert provider_of(hp) == "a"  # still serving the old configuration
        served_by_a = ("hapax_requests_total", (
            ("model", "m"), ("provider", "a"), ("route", "chat"), ("status", "200")))
        wait_metric(hp, served_by_a, 4)
        # Then a valid one applies, and the counters carry on from where they were.
        write_config(config, fakes, target="b")
        reload(hp, 2, workers)
        assert provider_of(hp) == "b"
        metrics = samples(hp)
        assert metrics[served_by_a] == 4  # not reset by the reload
        assert metrics[("hapax_config_generation", ())] == 2
        if workers == 1:
            assert metrics[("hapax_config_reloads_total", (("result", "error"),))] == 1
        else:  # the supervisor refused it: no worker ever tried
            assert "hapax.supervisor" in re.search(r".*reload of \S+ rejected.*",
                                                   hp.stderr).group(0)  # type: ignore[union-attr]
            assert metrics[("hapax_config_reloads_total", (("result", "error"),))] == 0
            assert count(hp.stderr, r"hapax\.server\[\d+\]: reload of") == 0


# -- (d) limiter state ----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_rate_limit_state_survives_a_reload(
        workers: int, tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes, limits={"rpm": 3})
    with serve(config, workers) as hp, client(hp) as c:
        for _ in range(3):
            c.chat.completions.create(model="m", messages=HELLO)
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="m", messages=HELLO)
        write_config(config, fakes, limits={"rpm": 3}, aliases=("another",))
        reload(hp, 2, workers)
        for _ in range(4):  # on new connections: whichever worker answers
            with client(hp) as fresh, pytest.raises(openai.RateLimitError):
                fresh.chat.completions.create(model="another", messages=HELLO)


@pytest.mark.parametrize("workers", [1, 2])
def test_signals_in_a_burst_are_serialized(
        workers: int, tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes)
    with serve(config, workers) as hp:
        write_config(config, fakes, target="b")
        for _ in range(5):
            hp.send_signal(signal.SIGHUP)
        wait_count(hp, r"reloaded \S+ \(generation 2\)", workers)
        time.sleep(1.5)  # what was queued behind it
        assert provider_of(hp) == "b"
        # Each worker reloaded one after the other: one reload, plus at most one queued
        # behind it for all the signals that arrived meanwhile.
        per_worker: dict[str, list[int]] = {}
        for pid, gen in re.findall(r"\[(\d+)\]: reloaded \S+ \(generation (\d+)\)",
                                   hp.stderr):
            per_worker.setdefault(pid, []).append(int(gen))
        assert len(per_worker) == workers
        for generations in per_worker.values():
            assert generations in ([2], [2, 3])
        assert count(hp.stderr, r"rejected|failed|Traceback") == 0
        assert all(pid_alive(pid) for pid in hp.children())


# -- (f) `hapax reload` ------------------------------------------------------------------------


def hapax(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hapax", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_hapax_reload_command(tmp_path: Path,
                              fakes: tuple[FakeProvider, FakeProvider]) -> None:
    config = tmp_path / "pipeline.yaml"
    pid_file = tmp_path / "hapax.pid"
    write_config(config, fakes)
    with serve(config, 1, "--pid-file", str(pid_file)) as hp:
        assert int(pid_file.read_text()) == hp.pid
        # An invalid file: the errors of `hapax check`, exit 2, and no signal sent.
        bad = tmp_path / "bad.yaml"
        bad.write_text(config.read_text().replace('"provider": "a"', '"provider": "zzz"'))
        done = hapax("reload", "--pid-file", str(pid_file), "--config", str(bad))
        assert done.returncode == 2
        assert f"{bad}: models.m.targets[0].provider" in done.stderr
        # A valid one: signalled.  Its new server.backlog takes a restart: a warning.
        write_config(config, fakes, target="b")
        cfg = json.loads(config.read_text())
        cfg["server"]["backlog"] = 77
        config.write_text(json.dumps(cfg))
        done = hapax("reload", "--pid-file", str(pid_file), "--config", str(config))
        assert done.returncode == 0, done.stderr
        wait_count(hp, r"reloaded \S+ \(generation 2\)", 1)
        assert provider_of(hp) == "b"
        assert count(hp.stderr, r"SIGHUP|rejected") == 0  # the invalid one never arrived
        assert count(hp.stderr, r"WARNING .*reload of \S+: server\.backlog changed; that "
                                r"takes a restart") == 1
        assert hp.stop() == 0
    assert not pid_file.exists()
    done = hapax("reload", "--pid-file", str(pid_file))
    assert done.returncode == 1
    assert hapax("reload").returncode == 2  # --pid or --pid-file is required


# -- (g) a worker restarted after a reload ----------------------------------------------------


def test_a_worker_restarted_after_a_reload_runs_the_new_configuration(
        tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes)
    with serve(config, 2) as hp:
        # Generation 2 limits alias x, generation 3 replaces it with y: y's limiter slot
        # comes after x's in the running workers, and a restarted worker must find it
        # there too (the supervisor replays the allocations).
        write_config(config, fakes, aliases=("x",), model_limits={"x": {"rpm": 50}})
        reload(hp, 2, 2)
        write_config(config, fakes, target="b", aliases=("y",),
                     model_limits={"y": {"rpm": 2}})
        reload(hp, 3, 2)
        with client(hp) as c:
            for _ in range(2):
                c.chat.completions.create(model="y", messages=HELLO)
        victim = hp.children()[0]
        os.kill(victim, signal.SIGKILL)
        hp.wait_stderr(rf"worker \d \(pid {victim}\) exited with signal 9; restarting")
        while pid_alive(victim):
            time.sleep(0.02)
        hp.wait_ready(workers=2)
        assert len(set(hp.children()) - {victim}) == 2
        for _ in range(10):  # new connections reach both workers
            assert provider_of(hp) == "b"
            assert samples(hp)[("hapax_config_generation", ())] == 3
            with client(hp) as c, pytest.raises(openai.RateLimitError):
                c.chat.completions.create(model="y", messages=HELLO)
        assert "Traceback" not in hp.stderr


# -- the node state across gateways, in process ------------------------------------------


def test_reloads_keep_the_slots_and_the_planner_claims_nothing(
        tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes, limits={"rpm": 5})
    first = load(config)
    write_config(config, fakes, limits={"rpm": 5}, aliases=("x",),
                 model_limits={"x": {"rpm": 9}})
    second = load(config)
    # The supervisor's replay: the allocation table fills, the live counters stay zero.
    node = NodeState(workers=2)
    Gateway(first, node=node.planner())
    assert node.allocated > 0
    assert not any(node.counters.load(i) for i in range(node.allocated))
    planned = node.allocated
    # A worker: the start-up gateway finds every name where the planner put it, and a
    # chain of reloads keeps counting in the same queue rows (none used up).
    gateway = Gateway(first, node=node)
    assert node.allocated == planned
    rows = {name: q._row for name, q in gateway.queues.items()}
    assert set(rows) == {"a", "b"}
    for _ in range(10):
        gateway = Gateway(second, node=node, previous=gateway)
        assert {name: q._row for name, q in gateway.queues.items()} == rows
    claimed = [i for i in range(node.allocated) if node.counters.load(i) == os.getpid()]
    assert sorted(claimed) == sorted(rows.values())
    # The replay of the second configuration matches what the worker allocated.
    twin = NodeState(workers=2)
    Gateway(first, node=twin.planner())
    Gateway(second, node=twin.planner())
    assert twin._table.names == node._table.names


def test_the_replaced_gateway_closes_once_done_and_is_freed(
        tmp_path: Path, fakes: tuple[FakeProvider, FakeProvider]) -> None:
    a, _ = fakes
    config = tmp_path / "pipeline.yaml"
    write_config(config, fakes, target="a")
    first = load(config)
    write_config(config, fakes, target="b")
    second = load(config)
    with GatewayThread(first) as gw, openai.OpenAI(base_url=gw.base_url, api_key=KEY,
                                                   max_retries=0) as c:
        old = gw.server.gateway
        a.queue(Reply(stream=True, chunks=4, chunk_delay=0.2))
        stream = c.chat.completions.create(model="m", messages=HELLO, stream=True)
        pieces = [next(iter(stream))]
        gw.call(gw.server.reload(second))
        # The stream holds the old gateway open: it is retiring, not closed.
        assert old.in_flight == 1 and gw.server._retiring
        pieces += list(stream)
        assert pieces[-1].choices[0].finish_reason == "stop"
        deadline = time.monotonic() + 10
        while gw.server._retiring:
            assert time.monotonic() < deadline, "the old gateway did not close"
            time.sleep(0.02)
        assert old.in_flight == 0
        assert all(p.stats().get("open", 0) == 0 for p in old.providers.values())
        ref = weakref.ref(old)
        del old
        gw.gateway = None  # GatewayThread's handle on the gateway it started with
        gw.call(_collect())
        assert ref() is None, "the replaced gateway is still referenced"
        assert gw.server.generation == 2


async def _collect() -> None:
    gc.collect()
