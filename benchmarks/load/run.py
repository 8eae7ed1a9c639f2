"""Load-test one gateway worker against a fast local upstream stub, in one run.

    python benchmarks/load/run.py [--markdown docs/load-results.md] [--duration 15] ...

What it does (all traffic to 127.0.0.1; every process it starts is stopped by PID):

1. starts the upstream stub: nginx (returning a fixed chat completion, or a fixed SSE
   body when ``Accept: text/event-stream``) if installed, else benchmarks/load/stub.py;
2. starts ``python -m hapax serve <generated config> --port 0``: one worker, access log
   off, gateway keys on, the stub as an ``openai`` provider; pinned with ``taskset`` to
   the first allowed core, with the stub and the load generators on the other;
3. warms up, then measures
   a. max RPS through the gateway, closed loop at ``--connections`` (``wrk`` with a Lua
      script; a Python closed-loop generator if ``wrk`` is missing), non-streaming and
      streaming, and the stub's own max RPS (direct) for scale;
   b. the gateway's CPU µs per request: utime+stime from /proc/<pid>/stat over the
      window, divided by the requests completed in it;
   c. latency p50/p99 at a fixed rate (open loop: benchmarks/load/openloop.py, its own
      process), directly against the stub and through the gateway; the difference is
      the latency the gateway adds;
4. prints one table, and with ``--markdown FILE`` writes it as Markdown with the date,
   the machine and the command.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stub import COMPLETION, SSE_BODY  # noqa: E402

HOST = "127.0.0.1"
KEY = "sk-hapax-load-0123456789abcdef"
ALIAS = "bench-model"
BODY = json.dumps({
    "model": ALIAS,
    "messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence "
                                      "and do not repeat the question."},
        {"role": "user", "content": "Summarise in one line why a gateway between an "
                                    "application and its LLM providers should add as little "
                                    "latency as possible to each request."},
    ],
    "temperature": 0.2, "max_tokens": 64, "user": "bench-user-42",
}, separators=(",", ":"))
STREAM_BODY = BODY[:-1] + ',"stream":true}'


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


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pin(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (seconds), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
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


# --- the gateway ----------------------------------------------------------------------


GATEWAY_YAML = """\
server:
  host: {host}
  port: 0
  workers: 1
  access_log: {{format: "off"}}
providers:
  stub:
    kind: openai
    base_url: http://{host}:{stub_port}/v1
    api_key: sk-upstream-load-key
    timeouts: {{connect: 5s, first_byte: 30s, idle: 30s}}
    pool: {{max_connections: 256, idle_timeout: 30s}}
models:
  {alias}:
    targets: [{{provider: stub, model: bench-upstream}}]
keys:
  - name: load
    key_sha256: "{digest}"
"""


def start_gateway(procs: Procs, tmp: Path, core: int | None,
                  stub_port: int) -> tuple[subprocess.Popen[Any], int]:
    cfg = tmp / "pipeline.yaml"
    cfg.write_text(GATEWAY_YAML.format(host=HOST, stub_port=stub_port, alias=ALIAS,
                                       digest=hashlib.sha256(KEY.encode()).hexdigest()))
    log_path = tmp / "gateway.log"
    log = open(log_path, "wb")
    env = {**os.environ, "HAPAX_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = procs.start("gateway", [*pin(core), sys.executable, "-m", "hapax", "serve", str(cfg),
                                   "--port", "0", "--log-level", "info"],
                       stdout=log, stderr=subprocess.STDOUT, env=env)
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
    """One request through the gateway, checked, before anything is measured."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json",
                              "authorization": f"Bearer {KEY}"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    ok = resp.status == 200 and ((b"[DONE]" in data) if stream else b'"choices"' in data)
    if not ok:
        raise SystemExit(f"sanity check failed ({'stream' if stream else 'json'}): "
                         f"{resp.status} {data[:300]!r}")


# --- load generators ---------------------------------------------------------------------


WRK_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
{extra}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRKJSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class Load:
    def __init__(self, procs: Procs, tmp: Path, core: int | None, connections: int,
                 use_wrk: bool) -> None:
        self.procs, self.tmp, self.core, self.connections = procs, tmp, core, connections
        self.wrk = shutil.which("wrk") if use_wrk else None
        for name, body in (("body.json", BODY), ("stream.json", STREAM_BODY)):
            (tmp / name).write_text(body)
        for name, body, extra in (("post.lua", BODY, ""), ("stream.lua", STREAM_BODY,
                                  'wrk.headers["Accept"] = "text/event-stream"')):
            (tmp / name).write_text(WRK_LUA.format(body=body, key=KEY, extra=extra))

    @property
    def tool(self) -> str:
        if self.wrk:
            v = subprocess.run([self.wrk, "--version"], capture_output=True, text=True)
            return (v.stdout or v.stderr).split("[")[0].strip() + f" (1 thread, "\
                f"c={self.connections})"
        return f"benchmarks/load/openloop.py --closed {self.connections}"

    def closed(self, port: int, seconds: float, *, stream: bool = False) -> dict[str, float]:
        """Closed loop at ``connections``: requests completed, errors, RPS."""
        if self.wrk:
            script = self.tmp / ("stream.lua" if stream else "post.lua")
            out = self.procs.run("wrk", [*pin(self.core), self.wrk, "-t1",
                                         f"-c{self.connections}",
                                         f"-d{max(1, round(seconds))}s",  # whole seconds only
                                         "--timeout", "10s", "-s", str(script),
                                         f"http://{HOST}:{port}/v1/chat/completions"],
                                 timeout=seconds + 30)
            m = re.search(r"WRKJSON (\{.*\})", out)
            if not m:
                raise SystemExit(f"could not read wrk's output:\n{out}")
            r = json.loads(m.group(1))
            errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            dur = r["duration_us"] / 1e6
            return {"requests": r["requests"], "errors": errors, "rps": r["requests"] / dur,
                    "seconds": dur,
                    "p50_ms": r["p50_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3}
        r = self.openloop(port, ["--closed", str(self.connections)], seconds, 0.0,
                          stream=stream)
        return {"requests": r["completed"], "errors": r["errors"] + r["non2xx"], "rps": r["rps"],
                "seconds": seconds,
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}

    def openloop(self, port: int, mode: list[str], seconds: float, warmup: float, *,
                 stream: bool = False) -> dict[str, Any]:
        argv = [*pin(self.core), sys.executable, str(HERE / "openloop.py"), "--port", str(port),
                "--body-file", str(self.tmp / ("stream.json" if stream else "body.json")),
                "--header", f"authorization: Bearer {KEY}", *mode,
                "--duration", f"{seconds:g}", "--warmup", f"{warmup:g}"]
        if stream:
            argv += ["--header", "accept: text/event-stream"]
        out = self.procs.run("openloop", argv, timeout=warmup + seconds + 60)
        return json.loads(out)


def with_cpu(pid: int | list[int], fn: Any) -> tuple[Any, float]:
    """``fn()`` and the CPU seconds that ``pid`` (or all of a list of PIDs) used meanwhile."""
    pids = pid if isinstance(pid, list) else [pid]
    c0 = sum(proc_cpu_seconds(p) for p in pids)
    result = fn()
    return result, sum(proc_cpu_seconds(p) for p in pids) - c0


# --- the run ----------------------------------------------------------------------------


def measure(args: argparse.Namespace, tmp: Path, procs: Procs) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    gw_core = cores[0] if args.pin else None
    other = (cores[1] if len(cores) > 1 else cores[0]) if args.pin else None
    stub_port, stub_name, stub_pids = start_stub(procs, tmp, other, not args.no_nginx)
    gw, gw_port = start_gateway(procs, tmp, gw_core, stub_port)
    check(gw_port, BODY, stream=False)
    check(gw_port, STREAM_BODY, stream=True)
    load = Load(procs, tmp, other, args.connections, not args.no_wrk)
    res: dict[str, Any] = {"stub": stub_name, "generator": load.tool, "pinned": args.pin,
                           "gateway_core": gw_core, "other_core": other}
    say = print if not args.quiet else (lambda *a, **k: None)

    say(f"warm-up: {args.warmup:g}s closed loop through the gateway …", flush=True)
    load.closed(gw_port, args.warmup)
    load.closed(gw_port, max(1, round(args.warmup / 3)), stream=True)

    say(f"open loop at {args.rate:g} req/s for {args.rate_duration:g}s: direct …", flush=True)
    res["direct"], cpu = with_cpu(stub_pids, lambda: load.openloop(
        stub_port, ["--rate", f"{args.rate:g}"], args.rate_duration, args.rate_warmup))
    # For scale: what the stub itself (a trivial server) costs per request at this rate.
    res["stub_cpu_us_at_rate"] = cpu / res["direct"]["sent"] * 1e6
    say("open loop via the gateway …", flush=True)
    res["via"], cpu = with_cpu(gw.pid, lambda: load.openloop(
        gw_port, ["--rate", f"{args.rate:g}"], args.rate_duration, args.rate_warmup))
    # The warm-up part of the open-loop run is served too: count it in the CPU division.
    served = res["via"]["sent"] - res["via"]["errors"]
    res["cpu_us_at_rate"] = cpu / served * 1e6 if served else float("nan")

    say(f"max RPS (closed loop, c={args.connections}) for {args.duration:g}s in "
        f"{args.windows} windows …", flush=True)
    # Several windows, each with its own CPU count: on a shared machine a neighbour's
    # burst spoils one window, not the figure (the median of the windows is reported).
    windows = []
    for _ in range(args.windows):
        w, cpu = with_cpu(gw.pid, lambda: load.closed(gw_port, args.duration / args.windows))
        windows.append({**w, "cpu_us": cpu / w["requests"] * 1e6, "cpu_util": cpu / w["seconds"]})
    windows.sort(key=lambda w: w["cpu_us"])
    res["max_windows"] = windows
    res["max"] = mid = windows[len(windows) // 2]
    res["max"]["errors"] = sum(w["errors"] for w in windows)
    res["cpu_us_at_max"] = mid["cpu_us"]
    res["cpu_util_at_max"] = mid["cpu_util"]

    if args.stream_duration > 0:
        say(f"max RPS, streaming, for {args.stream_duration:g}s …", flush=True)
        res["stream"], cpu = with_cpu(gw.pid, lambda: load.closed(
            gw_port, args.stream_duration, stream=True))
        res["cpu_us_stream"] = cpu / res["stream"]["requests"] * 1e6

    say(f"stub alone, max RPS for {args.stub_duration:g}s …", flush=True)
    res["stub_max"], cpu = with_cpu(stub_pids, lambda: load.closed(stub_port,
                                                                   args.stub_duration))
    res["stub_cpu_us_at_max"] = cpu / res["stub_max"]["requests"] * 1e6
    if gw.poll() is not None:
        raise SystemExit("the gateway died during the run")
    return res


def table(res: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str]]:
    d, v = res["direct"], res["via"]
    errors = (res["max"]["errors"] + v["errors"] + v["non2xx"]
              + res.get("stream", {}).get("errors", 0))
    rows = [
        ("max RPS via gateway (non-streaming)", f"{res['max']['rps']:,.0f} req/s "
         f"(gateway core at {res['cpu_util_at_max'] * 100:.0f}%)"),
        ("the stub alone, same generator (for scale)", f"{res['stub_max']['rps']:,.0f} req/s "
         f"({res['stub_cpu_us_at_max']:.0f} µs CPU per request)"),
        ("gateway CPU per request at max RPS", f"{res['cpu_us_at_max']:.0f} µs "
         f"(windows: {', '.join(format(w['cpu_us'], '.0f') for w in res['max_windows'])}; "
         f"= {1e6 / res['cpu_us_at_max']:,.0f} req/s on a core of its own)"),
        (f"gateway CPU per request at {args.rate:g} req/s", f"{res['cpu_us_at_rate']:.0f} µs "
         f"(the stub: {res['stub_cpu_us_at_rate']:.0f} µs)"),
    ]
    if "stream" in res:
        rows += [("max RPS via gateway (streaming, 11 events)",
                  f"{res['stream']['rps']:,.0f} req/s"),
                 ("gateway CPU per streamed request", f"{res['cpu_us_stream']:.0f} µs")]
    rows += [
        (f"latency p50 at {args.rate:g} req/s: direct / via gateway",
         f"{d['p50_ms']:.2f} ms / {v['p50_ms']:.2f} ms"),
        (f"latency p99 at {args.rate:g} req/s: direct / via gateway",
         f"{d['p99_ms']:.2f} ms / {v['p99_ms']:.2f} ms"),
        ("added latency p50 / p99", f"{v['p50_ms'] - d['p50_ms']:+.2f} ms / "
                                    f"{v['p99_ms'] - d['p99_ms']:+.2f} ms"),
        ("errors (all gateway runs)", f"{errors}"),
    ]
    return rows


def render(rows: list[tuple[str, str]], res: dict[str, Any], args: argparse.Namespace,
           markdown: bool) -> str:
    cmd = "python benchmarks/load/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
                    f"{cpu_model()}, Linux {platform.release()}, Python "
                    f"{platform.python_version()}"),
        ("command", cmd.strip()),
        ("upstream stub", res["stub"]),
        ("closed-loop generator", res["generator"]),
        ("open-loop generator", f"benchmarks/load/openloop.py, {args.rate:g} req/s, "
                                f"{args.rate_duration:g}s after {args.rate_warmup:g}s warm-up"),
        ("pinning", f"gateway on core {res['gateway_core']}, stub and generators on core "
                    f"{res['other_core']}" if res["pinned"] else "none"),
    ]
    if markdown:
        out = ["| | |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in rows]
        out += ["", *[f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in meta]]
        return "\n".join(out) + "\n"
    width = max(len(k) for k, _ in rows)
    out = [f"{k:<{width}}  {v}" for k, v in rows]
    out += ["", *[f"{k}: {v}" for k, v in meta]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15, help="max-RPS time (s)")
    p.add_argument("--windows", type=int, default=3,
                   help="max-RPS time is cut in this many windows; the median is shown")
    p.add_argument("--stream-duration", type=float, default=6,
                   help="streaming max-RPS window (s); 0 skips it")
    p.add_argument("--stub-duration", type=float, default=4, help="stub-alone window (s)")
    p.add_argument("--warmup", type=float, default=4, help="closed-loop warm-up (s)")
    p.add_argument("--connections", type=int, default=64, help="closed-loop concurrency")
    p.add_argument("--rate", type=float, default=500, help="open-loop rate (req/s)")
    p.add_argument("--rate-duration", type=float, default=10, help="open-loop window (s)")
    p.add_argument("--rate-warmup", type=float, default=2, help="open-loop warm-up (s)")
    p.add_argument("--no-nginx", action="store_true", help="use the Python stub")
    p.add_argument("--no-wrk", action="store_true", help="use the Python closed-loop generator")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    args = p.parse_args(argv)

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="hapax-load-"))
    try:
        res = measure(args, tmp, procs)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = table(res, args)
    print(render(rows, res, args, markdown=False))
    if args.markdown:
        Path(args.markdown).write_text(render(rows, res, args, markdown=True))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
