"""Node-wide /metrics: workers share snapshots, any worker reports the whole node.

The in-process tests drive :class:`hapax.node_metrics.NodeMetrics` directly (two
"workers" sharing a directory); the slow ones run ``hapax serve --workers 2`` and pin
requests to each worker with keep-alive connections, so a worker reporting only
itself would show part of the requests.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc import HapaxProcess, children_of, pid_alive
from prometheus_client.parser import text_string_to_metric_families

from hapax.metrics import OVERHEAD_BUCKETS, Counter, Gauge, Histogram, Metrics
from hapax.node_metrics import NodeMetrics, make_dir, remove_dir

KEY = "hpx-node-metrics-0b1c2d3e4f5a"
CHAT = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


# -- in process -------------------------------------------------------------------------


def worker_metrics() -> Metrics:
    m = Metrics()
    m.add(Gauge("test_in_flight", "per worker", (), lambda: {(): 2.0}))
    m.add(Gauge("test_node_depth", "node-wide already", (), lambda: {(): 5.0}, merge="none"))
    return m


def test_workers_add_up_and_a_successor_carries_on(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = worker_metrics(), worker_metrics()
        na, nb = NodeMetrics(a, str(tmp_path), 0), NodeMetrics(b, str(tmp_path), 1)
        na.start()
        nb.start()
        for i in range(10):
            a.requests.inc(("chat", "gpt", "mock", "200"))
            a.request_duration.observe(("chat",), 0.01 * i)
        b.requests.inc(("chat", "gpt", "mock", "200"), 5)
        b.requests.inc(("chat", "gpt", "mock", "502"))
        b.request_duration.observe(("chat",), 3.0)
        nb.write()  # b's timer would do this within its interval
        s = parse(a.render().decode())
        assert value(s, "hapax_requests_total", route="chat", model="gpt", provider="mock",
                     status="200") == 15
        assert value(s, "hapax_requests_total", route="chat", model="gpt", provider="mock",
                     status="502") == 1
        assert value(s, "hapax_request_duration_seconds_count", route="chat") == 11
        assert value(s, "hapax_request_duration_seconds_bucket", route="chat", le="2.5") == 10
        assert value(s, "hapax_request_duration_seconds_bucket", route="chat", le="+Inf") == 11
        assert value(s, "hapax_request_duration_seconds_sum", route="chat") == \
            pytest.approx(0.45 + 3.0)
        assert value(s, "test_in_flight") == 4  # summed
        assert value(s, "test_node_depth") == 5  # the answering worker's reading
        # b reports the same node (a wrote its snapshot when it answered the scrape)
        assert parse(b.render().decode()) == s
        # a dies and is replaced: the successor continues from a's last snapshot
        na.close()
        a2 = worker_metrics()
        na2 = NodeMetrics(a2, str(tmp_path), 0)
        na2.start()
        assert a2.requests.get(("chat", "gpt", "mock", "200")) == 10
        assert a2.request_duration.count(("chat",)) == 10
        a2.requests.inc(("chat", "gpt", "mock", "200"))
        s2 = parse(b.render().decode())
        assert value(s2, "hapax_requests_total", route="chat", model="gpt", provider="mock",
                     status="200") == 15  # a2's new request is not in its snapshot yet
        na2.write()
        s3 = parse(b.render().decode())
        assert value(s3, "hapax_requests_total", route="chat", model="gpt", provider="mock",
                     status="200") == 16
        na2.close()
        nb.close()
        assert a.peers is None and b.peers is None

    asyncio.run(main())


def test_snapshots_are_written_by_the_timer(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = Metrics(), Metrics()
        na = NodeMetrics(a, str(tmp_path), 0, interval=0.01)
        nb = NodeMetrics(b, str(tmp_path), 1, interval=0.01)
        na.start()
        nb.start()
        b.requests.inc(("models", "", "", "200"), 3)
        for _ in range(500):  # until b's timer has written the new count
            await asyncio.sleep(0.01)
            if total(parse(a.render().decode()), "hapax_requests_total") == 3:
                break
        assert total(parse(a.render().decode()), "hapax_requests_total") == 3
        na.close()
        nb.close()

    asyncio.run(main())


def test_a_single_worker_renders_alone() -> None:
    m = Metrics()
    m.requests.inc(("chat", "gpt", "mock", "200"))
    assert m.peers is None
    assert total(parse(m.render().decode()), "hapax_requests_total") == 1


def test_histogram_bounds_are_exact_boundaries() -> None:
    # any bounds (a plugin's) move to the nearest internal boundary; exact counts there
    h = Histogram("test_seconds", "x", ("k",), (0.001, 0.1, 0.1, 1.0, float("inf")))
    assert h.bounds == (0.0009765625, 0.1015625, 1.0)
    for v in (0.0009765625, 0.000977, 0.1015625, 0.1015626, 1.0, 7.0):
        h.observe(("a",), v)
    assert h.count(("a",)) == 6 and h.count(("b",)) == 0
    fam = next(h.collect())
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.0009765625": 1, "0.1015625": 3, "1.0": 5, "+Inf": 6}
    assert Histogram("o", "x", (), OVERHEAD_BUCKETS).bounds == OVERHEAD_BUCKETS


def test_unmergeable_families_stay_local() -> None:
    m = Metrics()
    m.add(Counter("test_total", "x", ()))
    with pytest.raises(ValueError, match="merge"):
        Gauge("g", "x", (), dict, merge="max")
    exported = m.export()
    assert exported["test_total"] == ["counter", []]
    m.families[-1].inc((), 2)
    # an export from another worker whose family has another kind is ignored
    text = m.render([{"test_total": ["gauge", [[[], 9.0]]]}]).decode()
    assert value(parse(text), "test_total") == 2


def test_a_new_node_sweeps_directories_of_dead_supervisors() -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)  # reaped: no process has this pid now (barring reuse)
    ours = make_dir()
    assert ours is not None
    base = os.path.dirname(ours)
    stale = os.path.join(base, f"hapax-metrics-{dead_pid}-test")
    alive = os.path.join(base, f"hapax-metrics-{os.getppid()}-test")
    for d in (stale, alive):
        os.makedirs(d, exist_ok=True)
        Path(d, "worker-0.json").write_text("{}")
    try:
        again = make_dir()
        assert not os.path.exists(stale)
        assert os.path.exists(alive) and os.path.exists(ours)
        remove_dir(again)
    finally:
        for d in (stale, alive, ours):
            remove_dir(d)


# -- real processes ------------------------------------------------------------------------

pytest_slow = pytest.mark.slow


@pytest.fixture
def node(tmp_path: Path) -> Iterator[HapaxProcess]:
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"""\
server: {{host: 127.0.0.1}}
providers:
  mock: {{kind: mock, latency: 5ms}}
models:
  gpt: {{targets: [{{provider: mock, model: mock-large}}]}}
keys:
  - {{name: test, key: "{KEY}"}}
""")
    # The supervisor announces once both workers listen: no /healthz polling needed
    # (it would add requests this test could not count).
    with HapaxProcess(cfg, "--workers", "2") as hp:
        yield hp


class Pinned:
    """A keep-alive connection, and the pid of the worker that accepted it."""

    def __init__(self, hp: HapaxProcess) -> None:
        self.conn = http.client.HTTPConnection(hp.host, hp.port, timeout=10)
        self.pid = int(json.loads(self.request("GET", "/healthz"))["pid"])

    def request(self, method: str, path: str, body: str | None = None) -> bytes:
        headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return data

    def scrape(self) -> Samples:
        return parse(self.request("GET", "/metrics").decode())


def pin_each_worker(hp: HapaxProcess, workers: set[int]) -> tuple[dict[int, Pinned], int]:
    """One connection per worker (new connections until every worker took one), and the
    number of /healthz requests that took."""
    pinned: dict[int, Pinned] = {}
    asked = 0
    for _ in range(200):
        p = Pinned(hp)
        asked += 1
        if p.pid in pinned:
            p.conn.close()
        else:
            pinned[p.pid] = p
        if set(pinned) == workers:
            return pinned, asked
    raise AssertionError(f"workers {workers} not all reached: {set(pinned)}")


def wait_for_chat(conns: list[Pinned], want: int) -> list[Samples]:
    """Scrape through every connection until each reports ``want`` chat requests (other
    workers' numbers are up to one snapshot interval old); never more than ``want``."""
    deadline = time.monotonic() + 30
    while True:
        scrapes = [c.scrape() for c in conns]
        seen = [total(s, "hapax_requests_total", route="chat") for s in scrapes]
        assert all(n <= want for n in seen), seen
        if all(n == want for n in seen):
            return scrapes
        assert time.monotonic() < deadline, f"chat requests reported: {seen}, want {want}"
        time.sleep(0.1)


@pytest_slow
def test_any_worker_reports_the_whole_node(node: HapaxProcess) -> None:
    hp = node
    workers = set(hp.children())
    assert len(workers) == 2
    pinned, healthz = pin_each_worker(hp, workers)
    first, second = (pinned[pid] for pid in sorted(pinned))
    for _ in range(3):
        first.request("POST", "/v1/chat/completions", CHAT)
    for _ in range(4):
        second.request("POST", "/v1/chat/completions", CHAT)
    m = 7
    for s in wait_for_chat([first, second], m):
        assert value(s, "hapax_requests_total", route="chat", model="gpt", provider="mock",
                     status="200") == m
        assert total(s, "hapax_requests_total", route="healthz") == healthz
        assert value(s, "hapax_request_duration_seconds_count", route="chat") == m
        assert value(s, "hapax_request_duration_seconds_bucket", route="chat", le="+Inf") == m
        assert value(s, "hapax_upstream_latency_seconds_count", provider="mock") == m
        assert value(s, "hapax_gateway_overhead_seconds_count", route="chat") == m
        buckets = [v for (n, lab), v in s.items()
                   if n == "hapax_upstream_latency_seconds_bucket"]
        assert buckets == sorted(buckets) and buckets[-1] == m
        # mock latency is 5 ms: no upstream call took longer than 5 s
        assert value(s, "hapax_upstream_latency_seconds_bucket", provider="mock",
                     le="5.0") == m

    # A worker dies: its successor carries its counts forward, nothing goes back.
    victim = first.pid
    first.conn.close()
    os.kill(victim, signal.SIGKILL)
    hp.wait_stderr(rf"worker \d \(pid {victim}\) exited with signal 9; restarting")
    deadline = time.monotonic() + 30
    while len(set(children_of(hp.pid)) - {victim}) < 2:
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.05)
    hp.wait_stderr(r"carried forward the metrics of its predecessor")
    successor = (set(hp.children()) - {victim, second.pid}).pop()
    pinned2, _ = pin_each_worker(hp, {successor, second.pid})
    for s in wait_for_chat([pinned2[successor], second], m):
        assert value(s, "hapax_upstream_latency_seconds_count", provider="mock") == m
    pinned2[successor].request("POST", "/v1/chat/completions", CHAT)
    wait_for_chat([pinned2[successor], second], m + 1)
    for p in (*pinned2.values(), second):
        p.conn.close()
    assert hp.stop() == 0


@pytest_slow
def test_the_metrics_directory_is_removed_on_exit(node: HapaxProcess) -> None:
    hp = node
    dirs = [d for d in os.listdir(shm_or_tmp()) if d.startswith(f"hapax-metrics-{hp.pid}-")]
    assert len(dirs) == 1
    files = sorted(os.listdir(os.path.join(shm_or_tmp(), dirs[0])))
    assert files == ["worker-0.json", "worker-1.json"]
    assert hp.stop() == 0
    assert not os.path.exists(os.path.join(shm_or_tmp(), dirs[0]))


def shm_or_tmp() -> str:
    import tempfile

    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


@pytest_slow
def test_workers_of_a_killed_supervisor_remove_the_directory(node: HapaxProcess) -> None:
    hp = node
    workers = set(hp.children())
    dirs = [d for d in os.listdir(shm_or_tmp()) if d.startswith(f"hapax-metrics-{hp.pid}-")]
    assert len(dirs) == 1
    hp.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in workers):
        assert time.monotonic() < deadline, "the workers outlived their supervisor"
        time.sleep(0.05)
    assert not os.path.exists(os.path.join(shm_or_tmp(), dirs[0]))
