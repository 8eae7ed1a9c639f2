"""Processes: `--workers N` under the supervisor, restarts, SIGTERM, graceful drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc import ROOT, HapaxProcess, get, pid_alive

pytestmark = pytest.mark.slow

QUICKSTART = ROOT / "examples" / "quickstart.yaml"
PROMPT = "please count slowly to ten"


def healthz_pid(url: str) -> int:
    status, _, body = get(url, "/healthz")
    assert status == 200
    return int(json.loads(body)["pid"])


def pids_seen(url: str, want: int, *, tries: int = 200) -> set[int]:
    """Worker pids answering /healthz, one new connection per request (SO_REUSEPORT
    spreads connections by their address), until ``want`` were seen."""
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(healthz_pid(url))
        if len(seen) >= want:
            break
    return seen


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        time.sleep(0.02)


# -- the supervisor -------------------------------------------------------------------


@pytest.fixture
def two_workers() -> Iterator[HapaxProcess]:
    """A supervisor with two workers, both answering; killed (workers too) afterwards."""
    with HapaxProcess(QUICKSTART, "--workers", "2") as hp:
        hp.wait_ready(workers=2)
        yield hp


def test_both_workers_serve(two_workers: HapaxProcess) -> None:
    hp = two_workers
    workers = set(hp.children())
    assert len(workers) == 2
    assert hp.pid not in workers
    assert pids_seen(hp.url, 2) == workers
    assert "(2 workers, supervisor pid" in hp.stderr
    assert hp.stop() == 0


def test_killed_worker_is_restarted(two_workers: HapaxProcess) -> None:
    hp = two_workers
    before = set(hp.children())
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel hands to a listener while its process dies are reset
    # (SO_REUSEPORT: each worker has its own accept queue); count from the moment
    # the supervisor saw the death.
    hp.wait_stderr(rf"worker \d \(pid {victim}\) exited with signal 9; restarting")
    wait_gone(victim)
    # The survivor keeps answering while the supervisor replaces the dead worker.
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while not (seen - before) and time.monotonic() < deadline:
        seen.add(healthz_pid(hp.url))
    (new,) = seen - before
    assert victim not in seen
    assert set(hp.children()) == before - {victim} | {new}
    # the replacement serves real requests
    for _ in range(20):
        status, _, body = get(hp.url, "/v1/models")
        assert status == 200, body
    assert pids_seen(hp.url, 2) == before - {victim} | {new}
    assert hp.stop() == 0


def test_sigterm_stops_supervisor_and_workers(two_workers: HapaxProcess) -> None:
    hp = two_workers
    workers = hp.children()
    assert hp.stop(signal.SIGTERM) == 0
    for pid in workers:
        wait_gone(pid, timeout=5)
    assert hp.stderr.count("shutting down: draining") == 2
    with pytest.raises(ConnectionRefusedError):
        get(hp.url, "/healthz")


def test_workers_exit_when_the_supervisor_is_killed(two_workers: HapaxProcess) -> None:
    # Orphaned workers would keep the port (and a new supervisor on it would share it
    # with them): they watch their parent and drain away.
    hp = two_workers
    workers = hp.children()
    assert hp.stop(signal.SIGKILL) == -signal.SIGKILL
    for pid in workers:
        wait_gone(pid, timeout=20)
    with pytest.raises(ConnectionRefusedError):
        get(hp.url, "/healthz")
    hp.wait_stderr("is gone: shutting down")
    deadline = time.monotonic() + 10  # both workers' lines, whatever their order
    while hp.stderr.count("is gone: shutting down") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hp.stderr.count("is gone: shutting down") == 2


# -- graceful drain (one worker) -----------------------------------------------------------


def drain_config(tmp_path: Path, *, chunks: int, chunk_delay: str,
                 drain_timeout: str = "30s") -> Path:
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"""\
server: {{host: 127.0.0.1, drain_timeout: {drain_timeout}}}
providers:
  slow: {{kind: mock, chunks: {chunks}, chunk_delay: {chunk_delay}}}
models:
  "*": {{targets: [{{provider: slow}}]}}
""")
    return cfg


class RawStream:
    """A streaming chat request on a raw socket, read a piece at a time."""

    def __init__(self, port: int) -> None:
        body = json.dumps({"model": "m", "stream": True,
                           "messages": [{"role": "user", "content": PROMPT}]}).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                          b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                          % (len(body), body))
        self.data = b""

    def read_until(self, marker: bytes) -> None:
        while marker not in self.data:
            piece = self.sock.recv(65536)
            assert piece, f"connection closed before {marker!r}: {self.data!r}"
            self.data += piece

    def read_to_eof(self) -> None:
        try:
            while piece := self.sock.recv(65536):
                self.data += piece
        except ConnectionResetError:
            pass
        self.sock.close()

    def events(self) -> tuple[bytes, list[bytes]]:
        """The head and the SSE ``data:`` payloads of the (chunked) body received."""
        head, _, rest = self.data.partition(b"\r\n\r\n")
        body = b""
        while rest:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
        return head, [line[len(b"data: "):] for line in body.split(b"\n\n")
                      if line.startswith(b"data: ")]


def content_of(events: list[bytes]) -> str:
    text = ""
    for ev in events:
        if ev != b"[DONE]":
            for choice in json.loads(ev)["choices"]:
                text += choice["delta"].get("content") or ""
    return text


def test_sigterm_lets_a_stream_finish(tmp_path: Path) -> None:
    # 10 chunks 300ms apart: the stream outlives the start of the shutdown by seconds.
    with HapaxProcess(drain_config(tmp_path, chunks=10, chunk_delay="300ms")) as hp:
        hp.wait_ready()
        stream = RawStream(hp.port)
        stream.read_until(b'"content":"')  # a first piece of the answer has arrived
        hp.send_signal(signal.SIGTERM)
        hp.wait_stderr("shutting down: draining for up to 30.0s")
        # While the stream drains: no new connection is taken (a probe that still got in
        # before the listener closed could only have been told "draining").
        refused = False
        while not refused:
            try:
                status, _, _ = get(hp.url, "/readyz", timeout=5)
                assert status == 503
            except (ConnectionRefusedError, ConnectionResetError):
                refused = True
        assert hp.proc is not None and hp.proc.poll() is None, "exited before the stream ended"
        stream.read_to_eof()
        head, events = stream.events()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert events[-1] == b"[DONE]"
        assert content_of(events) == f"Mock answer to: {PROMPT}"
        assert stream.data.endswith(b"0\r\n\r\n")
        assert hp.wait(20) == 0
        (record,) = [r for r in map(json.loads, hp.stdout.splitlines())
                     if r["path"] == "/v1/chat/completions"]
        assert (record["status"], record["stream"]) == (200, True)
        assert "stopped" in hp.stderr


def test_drain_timeout_bounds_the_shutdown(tmp_path: Path) -> None:
    # A 10 x 500ms stream against a 300ms drain: the worker must not wait for it.
    cfg = drain_config(tmp_path, chunks=10, chunk_delay="500ms", drain_timeout="300ms")
    with HapaxProcess(cfg) as hp:
        hp.wait_ready()
        stream = RawStream(hp.port)
        stream.read_until(b'"content":"')
        hp.send_signal(signal.SIGTERM)
        assert hp.wait(20) == 0
        stream.read_to_eof()
        _, events = stream.events()
        assert b"[DONE]" not in events  # cut, and visibly so
        assert not stream.data.endswith(b"0\r\n\r\n")
        assert "drain timeout (0.3s): closing 1 connection(s)" in hp.stderr
        (record,) = [r for r in map(json.loads, hp.stdout.splitlines())
                     if r["path"] == "/v1/chat/completions"]
        assert record["stream"] is True
        assert record["status"] == 499  # the client never got the whole answer


def test_sigterm_with_idle_keepalive_connection_exits_promptly(tmp_path: Path) -> None:
    # An idle keep-alive connection must not hold the drain open.
    cfg = drain_config(tmp_path, chunks=2, chunk_delay="0s")
    with HapaxProcess(cfg) as hp:
        hp.wait_ready()
        sock = socket.create_connection(("127.0.0.1", hp.port), timeout=20)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        hp.send_signal(signal.SIGTERM)
        assert hp.wait(20) == 0
        assert sock.recv(65536) == b""  # closed by the server
        sock.close()
        assert "drain timeout" not in hp.stderr
