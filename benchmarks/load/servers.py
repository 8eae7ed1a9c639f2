"""The processes a load run starts: the upstream stub, the nginx proxy and the gateway.

Everything listens on 127.0.0.1 and is started through :class:`Procs`, which stops each
process by PID (SIGTERM, then SIGKILL).  Helpers read CPU time and resident memory from
/proc, so the figures are the processes' own, not the load generator's view.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stub import COMPLETION, SSE_BODY  # noqa: E402

HOST = "127.0.0.1"
KEY = "sk-hapax-load-0123456789abcdef"
ALIAS = "bench-model"
#: A second alias whose upstream waits between SSE events (the no-buffering check).
SLOW_ALIAS = "bench-slow"


class Procs:
    """Every process this run starts, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []

    def start(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(argv, **kw)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            self.stop(proc)

    def run(self, name: str, argv: list[str], timeout: float) -> str:
        """Run to completion (bounded), return stdout."""
        proc = self.start(name, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise SystemExit(f"{name} did not finish within {timeout:.0f}s") from None
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed ({proc.returncode}): "
                             f"{(err.strip() or out.strip())[-2000:]}")
        return out


# --- machine --------------------------------------------------------------------------


def pin(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (seconds), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of ``pid`` in MiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Child PIDs of ``pid`` (nginx's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} during start-up")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {HOST}:{port} within {timeout:.0f}s")


# --- the upstream stub ------------------------------------------------------------------


def _nginx_string(data: bytes) -> str:
    text = data.decode()
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


NGINX_CONF = """\
{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_buffer_size 64k;
    server {{
        listen {host}:{port} backlog=4096;
        location = /v1/chat/completions {{
            if ($http_accept ~* "event-stream") {{ rewrite ^ /_sse last; }}
            default_type application/json;
            return 200 {completion};
        }}
        location = /_sse {{
            internal;
            default_type text/event-stream;
            return 200 {sse};
        }}
        location / {{ return 404; }}
    }}
}}
"""


def start_stub(procs: Procs, tmp: Path, core: int | None,
               use_nginx: bool) -> tuple[int, str, list[int]]:
    """Start the stub; return its port, its name and the PIDs that serve (for CPU)."""
    nginx = nginx_binary()
    if use_nginx and nginx:
        port = free_port()
        conf = tmp / "nginx.conf"
        # As root, nginx would run its worker as another user, who cannot enter ``tmp``.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, host=HOST, port=port,
                                          completion=_nginx_string(COMPLETION),
                                          sse=_nginx_string(SSE_BODY)))
        log = open(tmp / "nginx.out", "wb")
        proc = procs.start("nginx", [*pin(core), nginx, "-p", str(tmp), "-e",
                                           str(tmp / "nginx-error.log"), "-c", str(conf)],
                           stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, proc, "nginx")
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        return port, version.replace("nginx version: ", ""), children(proc.pid) or [proc.pid]
    proc = procs.start("stub", [*pin(core), sys.executable, str(HERE / "stub.py"), "--port", "0"],
                       stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        raise SystemExit(f"the Python stub did not start: {line!r}")
    return int(line.split()[1]), "benchmarks/load/stub.py (uvloop + httptools)", [proc.pid]


NGINX_PROXY_CONF = """\
{user}daemon off;
worker_processes 1;
pid {tmp}/proxy.pid;
error_log {tmp}/proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/proxy-body;
    proxy_temp_path {tmp}/proxy-proxy;
    fastcgi_temp_path {tmp}/proxy-fastcgi;
    uwsgi_temp_path {tmp}/proxy-uwsgi;
    scgi_temp_path {tmp}/proxy-scgi;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_buffer_size 64k;
    upstream stub {{
        server {host}:{stub_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                     else None)


def start_nginx_proxy(procs: Procs, tmp: Path, core: int | None,
                      stub_port: int) -> tuple[int, int] | None:
    """nginx as a plain reverse proxy (upstream keep-alive, no buffering) to the stub.

    One worker, pinned like the gateway.  Returns its port and its worker's PID (the
    master only supervises: the worker's CPU time is the cost of proxying), or None
    without nginx.
    """
    nginx = nginx_binary()
    if nginx is None:
        return None
    port = free_port()
    conf = tmp / "proxy.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_PROXY_CONF.format(user=user, tmp=tmp, host=HOST, port=port,
                                            stub_port=stub_port))
    log = open(tmp / "proxy.out", "wb")
    proc = procs.start("nginx-proxy", [*pin(core), nginx, "-p", str(tmp), "-e",
                                       str(tmp / "proxy-error.log"), "-c", str(conf)],
                       stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc, "the nginx proxy")
    deadline = time.monotonic() + 5
    while len(workers := children(proc.pid)) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the master listens before it has forked its worker
    if len(workers) != 1:
        raise SystemExit(f"expected one nginx proxy worker, found {workers}")
    return port, workers[0]


# --- the gateway ----------------------------------------------------------------------


GATEWAY_YAML = """\
server:
  host: {host}
  port: 0
  workers: 1
  access_log: {{format: "off"}}
  limits: {{max_concurrent: {max_concurrent}{shed_delay}}}
providers:
  stub:
    kind: openai
    base_url: http://{host}:{stub_port}/v1
    api_key: sk-upstream-load-key
    timeouts: {{connect: 5s, first_byte: 30s, idle: 30s}}
    pool: {{max_connections: 256, idle_timeout: 30s}}
{slow_provider}models:
  {alias}:
    targets: [{{provider: stub, model: bench-upstream}}]
    dedup: deterministic
{slow_model}keys:
  - name: load
    key_sha256: "{digest}"
    limits: {{rpm: {rpm}, tpm: {tpm}}}
"""

#: Per-key limits high enough never to trigger, so the run pays for the check only.
RPM = 10_000_000
TPM = 1_000_000_000


def gateway_summary(max_concurrent: int) -> str:
    """One line that says what the generated gateway config turns on."""
    return (f"1 gateway key (sha256) with rpm {RPM:,} / tpm {TPM:,} (never reached), "
            f"dedup deterministic (the bench body has temperature 0.2: checked, not "
            f"coalesced), access log off, max_concurrent {max_concurrent}, "
            f"alias {ALIAS} -> openai provider (model rewritten), upstream pool 256")


def start_gateway(procs: Procs, tmp: Path, core: int | None, stub_port: int, *,
                  name: str = "gateway", workers: int = 1, max_concurrent: int = 10000,
                  slow_port: int | None = None, shed_delay: str | None = None,
                  source: Path | None = None) -> tuple[subprocess.Popen[Any], int]:
    """Start ``hapax serve`` on a generated config; return the process and its port.

    ``slow_port``: also route :data:`SLOW_ALIAS` to a stub there (the no-buffering check).
    ``shed_delay``: ``server.limits.shed_delay`` (None: the gateway's default).
    ``source``: run the ``hapax`` package of that checkout (its core built in place)
    instead of the installed one (benchmarks/load/compare.py).
    """
    slow_provider = slow_model = ""
    if slow_port is not None:
        slow_provider = (f"  slow:\n    kind: openai\n    base_url: http://{HOST}:{slow_port}/v1\n"
                         f"    api_key: sk-upstream-load-key\n")
        slow_model = f"  {SLOW_ALIAS}:\n    targets: [{{provider: slow, model: bench-upstream}}]\n"
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(GATEWAY_YAML.format(
        host=HOST, stub_port=stub_port, alias=ALIAS, max_concurrent=max_concurrent,
        shed_delay="" if shed_delay is None else f", shed_delay: {shed_delay}",
        slow_provider=slow_provider, slow_model=slow_model, rpm=RPM, tpm=TPM,
        digest=hashlib.sha256(KEY.encode()).hexdigest()))
    log_path = tmp / f"{name}.log"
    log = open(log_path, "wb")
    env = {**os.environ, "HAPAX_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source),
                                                          env.get("PYTHONPATH")]))
    port = ["--port", "0"] if workers == 1 else ["--port", str(free_port()),
                                                 "--workers", str(workers)]
    proc = procs.start(name, [*pin(core), sys.executable, "-m", "hapax", "serve", str(cfg),
                              *port, "--log-level", "info"],
                       stdout=log, stderr=subprocess.STDOUT, env=env,
                       # ``-m`` puts the working directory first on sys.path: make sure
                       # it is not a checkout that would shadow ``source``.
                       cwd=tmp if source is not None else None)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"listening on http://[^:]+:(\d+)", log_path.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode}):\n"
                             f"{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    raise SystemExit("the gateway did not start within 30s")


def check(port: int, body: str, *, stream: bool) -> None:
    """One request through the gateway (or the proxy), checked, before anything is measured.

    Streamed requests say ``Accept: text/event-stream`` as the load does: the nginx stub
    chooses its answer by it, and the nginx proxy passes the client's header on.
    """
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}
    if stream:
        headers["accept"] = "text/event-stream"
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    ok = resp.status == 200 and ((b"[DONE]" in data) if stream else b'"choices"' in data)
    if not ok:
        raise SystemExit(f"sanity check failed ({'stream' if stream else 'json'}): "
                         f"{resp.status} {data[:300]!r}")




def start_slow_stub(procs: Procs, core: int | None, delay_ms: float) -> int:
    """The Python stub, waiting ``delay_ms`` between SSE events; returns its port."""
    proc = procs.start("slow-stub", [*pin(core), sys.executable, str(HERE / "stub.py"),
                                     "--port", "0", "--sse-delay", f"{delay_ms:g}"],
                       stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        raise SystemExit(f"the slow stub did not start: {line!r}")
    return int(line.split()[1])


def event_arrivals(port: int, body: str) -> list[float]:
    """Send one streamed request; return when each SSE event arrived (s after sending)."""
    sock = socket.create_connection((HOST, port), timeout=30)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {HOST}:{port}\r\n"
            f"content-type: application/json\r\naccept: text/event-stream\r\n"
            f"authorization: Bearer {KEY}\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n")
    arrivals: list[float] = []
    buf = b""
    try:
        t0 = time.perf_counter()
        sock.sendall(head.encode() + body.encode())
        while chunk := sock.recv(65536):
            now = time.perf_counter() - t0
            buf += chunk
            # Count event ends as they arrive (the chunked framing does not split "\n\n").
            n = buf.count(b"\n\n") - len(arrivals)
            arrivals += [now] * max(0, n)
            if b"[DONE]" in buf:
                break
    finally:
        sock.close()
    if b" 200 " not in buf.split(b"\r\n", 1)[0]:
        raise SystemExit(f"the unbuffered check got {buf[:300]!r}")
    return arrivals


# --- CPU quotas (the --workers 2 phase) ----------------------------------------------


class CpuQuota:
    """Hold processes to a share of one core each: a CPU cgroup per process (CFS quota),
    plus ``taskset`` to its own core.

    On a machine with as many cores as gateway workers, the load generator and the stub
    have no core of their own, so "two workers on two cores" cannot be measured as is.
    Holding each worker to the same share of its own core (e.g. 40 %) and comparing one
    worker with two keeps the question — does a second worker on a second core double
    the throughput? — while leaving the rest of both cores to the generator and the stub.

    Needs a writable cgroup ``cpu`` controller (v1 at /sys/fs/cgroup/cpu, or v2 with
    ``cpu`` enabled at /sys/fs/cgroup): usually root.  :meth:`available` says why not.
    """

    PERIOD_US = 10_000  # a short period: the quota is spread evenly over time

    def __init__(self) -> None:
        self.groups: list[Path] = []
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.root, self.v2 = v1, False
        elif "cpu" in _read(v2 / "cgroup.controllers").split():
            self.root, self.v2 = v2, True
        else:
            self.root, self.v2 = v1, False

    def available(self) -> str | None:
        """None if quotas can be set here, else the reason."""
        if not self.root.exists():
            return "no cgroup cpu controller"
        probe = self.root / f"hapax-load-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            return f"cannot create a cgroup under {self.root} ({exc.strerror})"
        if not shutil.which("taskset"):
            return "no taskset"
        return None

    def hold(self, pid: int, core: int, share: float) -> None:
        """Pin ``pid`` (all its threads) to ``core`` and cap it at ``share`` of a core."""
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True,
                       capture_output=True)
        group = self.root / f"hapax-load-{pid}"
        group.mkdir(exist_ok=True)
        quota = max(1000, round(share * self.PERIOD_US))
        if self.v2:
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
        self.groups.append(group)

    def release(self) -> None:
        """Move every held process back to the root group and remove the groups (the
        cores they were pinned to stay as they were)."""
        for group in self.groups:
            for pid in _read(group / "cgroup.procs").split():
                try:
                    (self.root / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # it has exited
            try:
                group.rmdir()
            except OSError:
                pass
        self.groups = []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
