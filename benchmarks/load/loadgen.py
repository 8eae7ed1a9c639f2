"""Drive load at a server: ``wrk`` closed loop for maximum throughput, openloop.py for
latency at a fixed rate (and as the closed-loop fallback without ``wrk``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from servers import ALIAS, HERE, HOST, KEY, Procs, pin, proc_cpu_seconds

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

_SAME = object()  # "the generator's own core"


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
    """Runs the generators (pinned to ``core``, each bounded in time) and parses their output."""

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

    def closed(self, port: int, seconds: float, *, stream: bool = False,
               core: Any = _SAME) -> dict[str, float]:
        """Closed loop at ``connections``: requests completed, errors, RPS.

        ``core``: where the generator runs (None: anywhere), if not on its usual core.
        """
        core = self.core if core is _SAME else core
        if self.wrk:
            script = self.tmp / ("stream.lua" if stream else "post.lua")
            out = self.procs.run("wrk", [*pin(core), self.wrk, "-t1",
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
                          stream=stream, core=core)
        return {"requests": r["completed"], "errors": r["errors"] + r["non2xx"], "rps": r["rps"],
                "seconds": seconds,
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}

    def openloop(self, port: int, mode: list[str], seconds: float, warmup: float, *,
                 stream: bool = False, core: Any = _SAME) -> dict[str, Any]:
        """Run openloop.py (``mode``: ``--rate R`` or ``--closed C``, and more flags)."""
        core = self.core if core is _SAME else core
        argv = [*pin(core), sys.executable, str(HERE / "openloop.py"), "--port", str(port),
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
