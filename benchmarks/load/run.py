"""Issue 6's measuring instrument: one gateway worker beside nginx, in one run.

    python benchmarks/load/run.py [--markdown FILE] [--json FILE] [--skip PHASE ...]

What it does (all traffic to 127.0.0.1; every process it starts is stopped by PID):

1. starts the upstream stub (nginx returning a fixed chat completion, or a fixed SSE body
   when ``Accept: text/event-stream``; benchmarks/load/stub.py without nginx), a second
   nginx as a plain reverse proxy in front of it (upstream keep-alive, no buffering), and
   ``python -m hapax serve`` with a production-like config (gateway key with rate limits,
   dedup): the gateway and the proxy pinned to the first core, stub and generators on
   the other;
2. checks both paths, that a slowly streamed answer arrives event by event through the
   gateway, and warms up;
3. measures (see ``--help`` for each phase's flags and ``--skip``):
   ``latency``  open loop at a fixed rate: direct, via the gateway, via nginx;
   ``ttft``     the same for streamed requests: time to the first SSE event;
   ``max``      max RPS closed loop (wrk), CPU µs per request from /proc, gateway and nginx;
   ``stream``   streaming max RPS through the gateway;
   ``rss``      VmRSS of the gateway up to ``--rss-requests`` requests;
   ``workers``  ``--workers 2`` max RPS against the one-worker figure;
   ``overload`` open loop above saturation against a gateway with a small max_concurrent
               and ``--overload-shed-delay``;
4. prints one table (and the issue's targets, met or not), with ``--markdown FILE`` as
   Markdown with the date, the machine and the command; ``--json FILE`` keeps the raw
   figures (every RSS sample too), and ``--from-json FILE`` prints their table again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import BODY, STREAM_BODY, Load, with_cpu  # noqa: E402
from report import render, table, targets  # noqa: E402
from servers import (  # noqa: E402
    ALIAS,
    SLOW_ALIAS,
    CpuQuota,
    Procs,
    check,
    children,
    event_arrivals,
    gateway_summary,
    proc_cpu_seconds,
    proc_rss_mb,
    start_gateway,
    start_nginx_proxy,
    start_slow_stub,
    start_stub,
)

PHASES = ("latency", "ttft", "max", "stream", "rss", "workers", "overload")
SLOW_DELAY_MS = 20.0


_SUMMED = ("sent", "completed", "errors", "non2xx", "shed")


def _taskset(pid: int, core: int) -> None:
    """Move every thread of ``pid`` to ``core``."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True,
                   capture_output=True)


def _merge_rounds(got: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several open-loop rounds: counts summed, other figures the
    median of the rounds (the rounds' own values kept under ``rounds``)."""
    out: dict[str, Any] = {}
    for k, v in got[0].items():
        if k in _SUMMED:
            out[k] = sum(r[k] for r in got)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = sorted(r[k] for r in got)
            out[k] = vals[len(vals) // 2]
        else:
            out[k] = v
    out["rounds"] = [{"p50_ms": r.get("p50_ms"), "p99_ms": r.get("p99_ms")} for r in got]
    return out


class Run:
    """One measuring run: the processes, the generators and the figures gathered so far."""

    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Procs) -> None:
        self.args, self.tmp, self.procs = args, tmp, procs
        cores = self.cores = sorted(os.sched_getaffinity(0))
        self.gw_core = cores[0] if args.pin else None
        self.other = (cores[1] if len(cores) > 1 else cores[0]) if args.pin else None
        self.res: dict[str, Any] = {"pinned": args.pin, "gateway_core": self.gw_core,
                                    "other_core": self.other, "phases": list(args.phases),
                                    "gateway_config": gateway_summary(10000)}
        self.served = 0  # requests the one-worker gateway has answered so far
        self.rss_samples: list[tuple[int, float]] = []  # (served, VmRSS MiB) samples
        self.gw_pid = 0
        self.quiet = args.quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def track(self, requests: float) -> None:
        """Count requests the gateway answered, and sample its memory."""
        self.served += int(requests)
        self.rss_samples.append((self.served, proc_rss_mb(self.gw_pid)))

    # -- set-up ------------------------------------------------------------------------

    def start(self) -> None:
        a, res = self.args, self.res
        self.stub_port, res["stub"], self.stub_pids = start_stub(
            self.procs, self.tmp, self.other, not a.no_nginx)
        slow_port = start_slow_stub(self.procs, self.other, SLOW_DELAY_MS)
        self.gw, self.gw_port = start_gateway(self.procs, self.tmp, self.gw_core,
                                              self.stub_port, slow_port=slow_port)
        self.gw_pid = self.gw.pid
        self.track(0)
        proxy = None if a.no_nginx_proxy else start_nginx_proxy(
            self.procs, self.tmp, self.gw_core, self.stub_port)
        self.proxy_port, self.proxy_pid = proxy if proxy else (0, 0)
        check(self.gw_port, BODY, stream=False)
        check(self.gw_port, STREAM_BODY, stream=True)
        if self.proxy_port:
            check(self.proxy_port, BODY, stream=False)
            check(self.proxy_port, STREAM_BODY, stream=True)
        self.load = Load(self.procs, self.tmp, self.other, a.connections, not a.no_wrk)
        res["generator"] = self.load.tool

        # "No buffering between upstream chunks": the slow stub waits between events.
        slow = STREAM_BODY.replace(f'"model":"{ALIAS}"', f'"model":"{SLOW_ALIAS}"')
        direct = event_arrivals(slow_port, slow)
        via = event_arrivals(self.gw_port, slow)
        self.track(1)
        gaps = [b - a_ for a_, b in zip(via, via[1:], strict=False)]
        res["unbuffered"] = {"delay_ms": SLOW_DELAY_MS, "events_direct": len(direct),
                             "events_via": len(via),
                             "min_gap_ms": min(gaps) * 1e3 if gaps else math.nan,
                             "span_direct_ms": (direct[-1] - direct[0]) * 1e3,
                             "span_via_ms": (via[-1] - via[0]) * 1e3}

        self.say(f"warm-up: {a.warmup:g}s closed loop through the gateway …")
        self.track(self.load.closed(self.gw_port, a.warmup)["requests"])
        self.track(self.load.closed(self.gw_port, max(1, round(a.warmup / 3)),
                                    stream=True)["requests"])
        if self.proxy_port:
            self.load.closed(self.proxy_port, 1)

    def targets_via(self) -> list[tuple[str, int, int | list[int]]]:
        """(name, port, PIDs whose CPU counts) for direct, the gateway and the proxy."""
        out: list[tuple[str, int, int | list[int]]] = [
            ("direct", self.stub_port, self.stub_pids), ("via", self.gw_port, self.gw_pid)]
        if self.proxy_port:
            out.append(("nginx", self.proxy_port, self.proxy_pid))
        return out

    # -- phases ------------------------------------------------------------------------

    def latency(self) -> None:
        a = self.args
        self.say(f"open loop at {a.rate:g} req/s, {a.rate_rounds} rounds of "
                 f"{a.rate_duration / a.rate_rounds:g}s, taking turns: "
                 f"{', '.join(n for n, _, _ in self.targets_via())} …")
        self._rounds("rate", a.rate_duration, stream=False)
        if a.same_core and self.gw_core is not None and self.other != self.gw_core:
            # The same rounds with the gateway and the proxy moved onto the generator's and
            # the stub's core: no request crosses cores, so no idle core has to be woken
            # (on a VM, an inter-processor wake-up of a halted vCPU costs 0.1 ms or more
            # and varies with the host): what is left is each proxy's own work.
            self.say("… again with the gateway and nginx on the stub's core …")
            pids = [self.gw_pid] + ([self.proxy_pid] if self.proxy_port else [])
            try:
                for pid in pids:
                    _taskset(pid, self.other)
                self._rounds("same", a.rate_duration, stream=False)
            finally:
                for pid in pids:
                    _taskset(pid, self.gw_core)

    def ttft(self) -> None:
        a = self.args
        self.say(f"streamed, open loop at {a.rate:g} req/s, {a.rate_rounds} rounds of "
                 f"{a.ttft_duration / a.rate_rounds:g}s, taking turns …")
        self._rounds("ttft", a.ttft_duration, stream=True)

    def _rounds(self, key: str, duration: float, *, stream: bool) -> None:
        """Open loop at ``--rate`` against each target in turn, ``--rate-rounds`` times:
        the host's idle wake-ups and neighbours move latency at this rate from one
        minute to the next, so the targets share the minutes and each figure is the
        median of its rounds (counts are summed)."""
        a = self.args
        rounds: dict[str, list[dict[str, Any]]] = {}
        for _ in range(a.rate_rounds):
            for name, port, pids in self.targets_via():
                r, cpu = with_cpu(pids, lambda port=port: self.load.openloop(
                    port, ["--rate", f"{a.rate:g}"], duration / a.rate_rounds,
                    a.rate_warmup, stream=stream))
                # The warm-up part of the open-loop run is served too: count it.
                served = r["sent"] - r["errors"]
                r["cpu_us"] = cpu / served * 1e6 if served else math.nan
                rounds.setdefault(name, []).append(r)
                if name == "via":
                    self.track(r["sent"])
        for name, got in rounds.items():
            self.res[f"{key}_{name}"] = _merge_rounds(got)

    def _windows(self, port: int, pids: int | list[int], seconds: float,
                 windows: int, *, track: bool = False, **kw: Any) -> dict[str, Any]:
        """Closed loop cut in windows, each with its own CPU count; the median window.

        On a shared machine a neighbour's burst spoils one window, not the figure.
        ``track``: the one-worker gateway serves it (count its requests, sample memory).
        """
        got = []
        for _ in range(windows):
            w, cpu = with_cpu(pids, lambda: self.load.closed(port, seconds / windows, **kw))
            got.append({**w, "cpu_us": cpu / max(1, w["requests"]) * 1e6,
                        "cpu_util": cpu / w["seconds"]})
            if track:
                self.track(w["requests"])
        got.sort(key=lambda w: w["cpu_us"])
        mid = dict(got[len(got) // 2])
        mid["errors"] = sum(w["errors"] for w in got)
        mid["total"] = sum(w["requests"] for w in got)
        mid["windows"] = [w["cpu_us"] for w in got]
        return mid

    def max(self) -> None:
        a = self.args
        self.say(f"max RPS (closed loop, c={a.connections}) for {a.duration:g}s in "
                 f"{a.windows} windows: gateway …")
        self.res["max_via"] = self._windows(self.gw_port, self.gw_pid, a.duration, a.windows,
                                            track=True)
        if self.proxy_port:
            self.say("… nginx proxy …")
            self.res["max_nginx"] = self._windows(self.proxy_port, self.proxy_pid, a.duration,
                                                  a.windows)
        self.say(f"… the stub alone, {a.stub_duration:g}s …")
        self.res["max_direct"] = self._windows(self.stub_port, self.stub_pids,
                                               a.stub_duration, 1)

    def stream(self) -> None:
        a = self.args
        self.say(f"max RPS, streaming, for {a.stream_duration:g}s …")
        self.res["stream"] = self._windows(self.gw_port, self.gw_pid, a.stream_duration, 1,
                                           track=True, stream=True)

    def rss(self) -> None:
        a = self.args
        self.say(f"memory: closed loop until the gateway has answered {a.rss_requests:,} "
                 f"requests (it has answered {self.served:,}) …")
        while self.served < a.rss_requests:
            if self.gw.poll() is not None:
                raise SystemExit("the gateway died during the memory phase")
            r = self.load.closed(self.gw_port, 3)
            if r["errors"]:
                self.res["rss_errors"] = self.res.get("rss_errors", 0) + r["errors"]
            self.track(r["requests"])
        self.res["rss"] = self.rss_samples

    def workers(self) -> None:
        a = self.args
        self.say(f"--workers 2 (not pinned; wrk not pinned), {a.workers_duration:g}s …")
        gw2, port = start_gateway(self.procs, self.tmp, None, self.stub_port,
                                  name="gateway-2w", workers=2)
        try:
            check(port, BODY, stream=False)
            workers = children(gw2.pid)
            pids = [gw2.pid, *workers]
            self.load.closed(port, 2, core=None)
            self.res["workers2"] = w = self._windows(port, pids, a.workers_duration, 1,
                                                     core=None)
            w["workers"] = len(workers)
            # The one-worker figure under the same conditions (unpinned generator).
            self.res["workers1_unpinned"] = self._windows(
                self.gw_port, self.gw_pid, a.workers_duration, 1, track=True, core=None)
            self._workers_quota(port, workers)
        finally:
            self.procs.stop(gw2)

    def _workers_quota(self, port: int, workers: list[int]) -> None:
        """Two workers against one, each held to the same share of its own core."""
        a = self.args
        quota = CpuQuota()
        why = quota.available() if len(workers) == 2 and len(self.cores) >= 2 else \
            "needs two workers and two cores"
        if why or not a.workers_share:
            self.res["workers_quota_skipped"] = why or "--workers-share 0"
            self.say(f"… no CPU-quota comparison: {self.res['workers_quota_skipped']}")
            return
        share = a.workers_share
        self.say(f"… each worker held to {share:.0%} of its own core (cgroup quota), "
                 f"{a.workers_duration:g}s each …")
        try:
            for core, pid in zip(self.cores, workers, strict=False):
                quota.hold(pid, core, share)
            cpu0 = [proc_cpu_seconds(p) for p in workers]
            two = self._windows(port, workers, a.workers_duration, 1, core=None)
            two["per_worker_cpu_s"] = [proc_cpu_seconds(p) - c for p, c in zip(workers, cpu0,
                                                                                strict=True)]
            quota.release()
            quota.hold(self.gw_pid, self.cores[0], share)
            one = self._windows(self.gw_port, self.gw_pid, a.workers_duration, 1,
                                track=True, core=None)
        finally:
            quota.release()
        self.res["workers_quota"] = {"share": share, "two": two, "one": one}

    def overload(self) -> None:
        a = self.args
        top = self.res.get("max_via", {}).get("rps") or a.overload_rate
        rate = a.overload_rate or top * a.overload_factor
        self.say(f"overload: open loop at {rate:,.0f} req/s for {a.overload_duration:g}s, "
                 f"max_concurrent {a.overload_max_concurrent}, shed_delay "
                 f"{a.overload_shed_delay} …")
        # Control: the same open loop straight at the stub.  The generator shares its core
        # with the stub; if it cannot keep this rate itself, the latencies below say so.
        ctl = self.load.openloop(self.stub_port, ["--rate", f"{rate:g}", "--max-connections",
                                                  "512", "--drain", "10"],
                                 a.overload_duration, 1.0)
        self.res["overload_direct"] = ctl
        gw3, port = start_gateway(self.procs, self.tmp, self.gw_core, self.stub_port,
                                  name="gateway-overload",
                                  max_concurrent=a.overload_max_concurrent,
                                  shed_delay=a.overload_shed_delay)
        try:
            check(port, BODY, stream=False)
            self.load.closed(port, 2)
            t0 = time.monotonic()
            r, cpu = with_cpu(gw3.pid, lambda: self.load.openloop(
                port, ["--rate", f"{rate:g}", "--max-connections", "512", "--drain", "10"],
                a.overload_duration, 1.0))
            # Wall time of the whole generator run (start-up and drain included): the
            # core's use is if anything understated.
            r["cpu_util"] = cpu / (time.monotonic() - t0)
            # Every request sent got an answer (2xx or shed) or counts as an error.
            r["cpu_us_per_answer"] = cpu / max(1, r["sent"] - r["errors"]) * 1e6
            r["target_rate"] = rate
            r["max_concurrent"] = a.overload_max_concurrent
            r["shed_delay"] = a.overload_shed_delay
            self.res["overload"] = r
            if gw3.poll() is not None:
                raise SystemExit("the overloaded gateway died")
        finally:
            self.procs.stop(gw3)

    def run(self) -> dict[str, Any]:
        self.start()
        for phase in PHASES:
            if phase in self.args.phases:
                getattr(self, phase)()
                if self.gw.poll() is not None:
                    raise SystemExit(f"the gateway died during the {phase} phase")
        self.res["rss"] = self.rss_samples
        self.res["served"] = self.served
        return self.res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip", nargs="+", choices=PHASES, default=[], metavar="PHASE",
                   help=f"phases to leave out: {', '.join(PHASES)}")
    p.add_argument("--only", nargs="+", choices=PHASES, metavar="PHASE",
                   help="run only these phases")
    p.add_argument("--duration", type=float, default=15,
                   help="max-RPS time (s), gateway and nginx proxy each")
    p.add_argument("--windows", type=int, default=3,
                   help="max-RPS time is cut in this many windows; the median is shown")
    p.add_argument("--stream-duration", type=float, default=6, help="streaming max RPS (s)")
    p.add_argument("--stub-duration", type=float, default=4, help="stub-alone window (s)")
    p.add_argument("--warmup", type=float, default=4, help="closed-loop warm-up (s)")
    p.add_argument("--connections", type=int, default=64, help="closed-loop concurrency")
    p.add_argument("--rate", type=float, default=500, help="open-loop rate (req/s)")
    p.add_argument("--rate-duration", type=float, default=12,
                   help="open-loop time per target (s), cut in --rate-rounds")
    p.add_argument("--rate-rounds", type=int, default=3,
                   help="open-loop rounds: direct, gateway and nginx take turns this many "
                        "times; the median round is shown")
    p.add_argument("--no-same-core", dest="same_core", action="store_false",
                   help="skip the latency rounds with everything on one core")
    p.add_argument("--rate-warmup", type=float, default=1,
                   help="open-loop warm-up before each round (s)")
    p.add_argument("--ttft-duration", type=float, default=9,
                   help="streamed open-loop time per target (s), cut in --rate-rounds")
    p.add_argument("--rss-requests", type=int, default=1_000_000,
                   help="the memory phase runs until the gateway has answered this many "
                        "requests in the whole run (the earlier phases count; RSS is shown "
                        "at start-up, past 20 %% of it, and at the end)")
    p.add_argument("--workers-duration", type=float, default=8,
                   help="max-RPS window with --workers 2, and again with one worker (s)")
    p.add_argument("--workers-share", type=float, default=0.4,
                   help="also compare 2 workers with 1 with each worker held to this share "
                        "of its own core by a cgroup CPU quota, leaving the rest of both "
                        "cores to the generator and the stub (0: skip; needs root)")
    p.add_argument("--overload-factor", type=float, default=1.5,
                   help="overload rate as a multiple of the measured max RPS")
    p.add_argument("--overload-rate", type=float, default=0,
                   help="overload rate (req/s); overrides --overload-factor")
    p.add_argument("--overload-duration", type=float, default=6, help="overload window (s)")
    p.add_argument("--overload-max-concurrent", type=int, default=32,
                   help="server.limits.max_concurrent of the overloaded gateway")
    p.add_argument("--overload-shed-delay", default="2ms",
                   help="server.limits.shed_delay of the overloaded gateway: new requests "
                        "are refused while its loop runs this late (its default is 500ms)")
    p.add_argument("--no-nginx", action="store_true", help="use the Python stub")
    p.add_argument("--no-nginx-proxy", action="store_true",
                   help="leave out the nginx reverse-proxy baseline")
    p.add_argument("--no-wrk", action="store_true", help="use the Python closed-loop generator")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.add_argument("--from-json", metavar="FILE",
                   help="measure nothing: print the table of a run saved with --json (give "
                        "the same phase-length flags as that run)")
    args = p.parse_args(argv)
    args.phases = [ph for ph in (args.only or PHASES) if ph not in args.skip]
    if "overload" in args.phases and "max" not in args.phases and not args.overload_rate:
        p.error("the overload phase needs the max phase or --overload-rate")

    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        args.phases = res["phases"]
    else:
        procs = Procs()
        tmp = Path(tempfile.mkdtemp(prefix="hapax-load-"))
        try:
            res = Run(args, tmp, procs).run()
        finally:
            procs.stop_all()
            shutil.rmtree(tmp, ignore_errors=True)
        cmd = "python benchmarks/load/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        res["command"] = cmd.strip()
        res["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows, goals = table(res, args), targets(res, args)
    print(render(rows, goals, res, args, markdown=False))
    if args.markdown:
        Path(args.markdown).write_text(render(rows, goals, res, args, markdown=True))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
