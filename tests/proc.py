"""Run `hapax serve` as a real process for tests (CLI, workers, drain, access log).

:class:`HapaxProcess` starts ``python -m hapax serve CONFIG --port 0 ...`` with its own
environment, waits (with a deadline) for the ``hapax listening on http://HOST:PORT``
line on stderr, and collects stdout (the access log) and stderr in background threads.
It is stopped by PID — a signal, then a bounded wait — and always killed in teardown,
its worker processes included, so a failing test never leaves a gateway behind.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["HapaxProcess", "ROOT", "get", "pid_alive", "children_of"]

ROOT = Path(__file__).resolve().parent.parent

_LISTENING = re.compile(r"hapax listening on https?://(\[[^\]]+\]|[^\s:]+):(\d+)")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            continue
    return out


def get(url: str, path: str, *, timeout: float = 10.0,
        headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: ``(status, headers, body)``."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


class _Collector:
    """Reads one pipe line by line in a thread; lets a test wait for a line."""

    def __init__(self, pipe: Any, name: str) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._read, args=(pipe,), name=name, daemon=True)
        self.thread.start()

    def _read(self, pipe: Any) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                with self.cond:
                    self.lines.append(raw.decode("utf-8", "replace"))
                    self.cond.notify_all()
        finally:
            pipe.close()
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    @property
    def text(self) -> str:
        with self.cond:
            return "".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    m = pattern.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self.cond.wait(left)


class HapaxProcess:
    """``with HapaxProcess("pipeline.yaml", "--workers", "2") as hp: get(hp.url, "/healthz")``

    ``config`` is a path (or None for the built-in default); ``env`` replaces the
    process environment (default: a copy of ours, so ``HAPAX_NO_EXTENSIONS`` carries
    over); ``extra_env`` is added on top.
    """

    def __init__(self, config: str | Path | None, *args: str,
                 env: Mapping[str, str] | None = None,
                 extra_env: Mapping[str, str] | None = None,
                 cwd: str | Path = ROOT, startup_timeout: float = 30.0) -> None:
        self.argv = [sys.executable, "-m", "hapax", "serve"]
        if config is not None:
            self.argv.append(str(config))
        self.argv += ["--port", "0", *args]
        self.env = dict(os.environ if env is None else env)
        self.env.update(extra_env or {})
        # Pipes to a test are not terminals: make sure log lines are not held back.
        self.env["PYTHONUNBUFFERED"] = "1"
        self.cwd = str(cwd)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0
        self._out: _Collector | None = None
        self._err: _Collector | None = None
        self._known_children: set[int] = set()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> HapaxProcess:
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self._out = _Collector(self.proc.stdout, "hapax-stdout")
        self._err = _Collector(self.proc.stderr, "hapax-stderr")
        m = self._err.wait_for(_LISTENING, self.startup_timeout)
        if m is None:
            self.kill()
            raise RuntimeError(f"hapax did not report listening within {self.startup_timeout}s "
                               f"(exit code {self.proc.poll()}); stderr:\n{self.stderr}")
        self.host, self.port = m.group(1), int(m.group(2))
        return self

    def __enter__(self) -> HapaxProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI SDK takes as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def stdout(self) -> str:
        return self._out.text if self._out else ""

    @property
    def stderr(self) -> str:
        return self._err.text if self._err else ""

    def children(self) -> list[int]:
        """Worker pids (with ``--workers N``); remembered so teardown can kill them."""
        kids = children_of(self.pid)
        self._known_children.update(kids)
        return kids

    def wait_ready(self, timeout: float = 20.0, workers: int = 1) -> None:
        """Poll /readyz on new connections until it answers 200 (``workers`` distinct
        pids seen on /healthz, for a supervisor whose workers start after its banner)."""
        deadline = time.monotonic() + timeout
        pids: set[int] = set()
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, _, _ = get(self.url, "/readyz", timeout=2)
                if status == 200:
                    pids.add(json.loads(get(self.url, "/healthz", timeout=2)[2])["pid"])
                    if len(pids) >= workers:
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.02)
        raise TimeoutError(f"{self.url} not ready within {timeout}s (last error: {last}, "
                           f"worker pids seen: {sorted(pids)}); stderr:\n{self.stderr}")

    def wait_stderr(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        assert self._err is not None
        m = self._err.wait_for(re.compile(pattern), timeout)
        if m is None:
            raise TimeoutError(f"no stderr line matching {pattern!r} within {timeout}s; "
                               f"stderr:\n{self.stderr}")
        return m

    def wait_stdout(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        assert self._out is not None
        m = self._out.wait_for(re.compile(pattern), timeout)
        if m is None:
            raise TimeoutError(f"no stdout line matching {pattern!r} within {timeout}s; "
                               f"stdout:\n{self.stdout}")
        return m

    def access_log(self, min_lines: int = 0, timeout: float = 10.0, *,
                   probes: bool = False) -> list[dict[str, Any]]:
        """The JSON access-log lines on stdout, without those of /readyz and /healthz
        (:meth:`wait_ready`'s probes) unless ``probes``; waits until at least
        ``min_lines`` arrived (the log is written after each response, off its path)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [json.loads(line) for line in self.stdout.splitlines() if line.strip()]
            if not probes:
                lines = [r for r in lines if r.get("path") not in ("/readyz", "/healthz")]
            if len(lines) >= min_lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.children()  # note the workers before the supervisor may stop reporting them
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit; return the exit code (``subprocess.TimeoutExpired`` if not)."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        for c in (self._out, self._err):
            if c is not None:
                c.thread.join(5)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait for it; kill it if it outlives ``timeout``."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the process and every worker it started (by pid); idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.children()
            self.proc.kill()
        self.proc.wait(10)
        _kill_all(self._known_children)
        for c in (self._out, self._err):
            if c is not None:
                c.thread.join(5)


def _kill_all(pids: Iterable[int], timeout: float = 10.0) -> None:
    killed = []
    for pid in pids:
        # A pid we saw as a worker may have exited (and, in theory, been reused): only
        # kill one that still runs python.
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"python" not in f.read():
                    continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)  # SIGKILL is asynchronous: leave no worker holding the port
