"""Before/after on the whole gateway: two checkouts, alternated in one run.

    python benchmarks/load/compare.py --before /path/to/old/checkout [--after DIR]
        [--rounds 4] [--seconds 8] [--stream]
    python benchmarks/load/compare.py --before DIR --overload 8000 [--max-concurrent 32]
        [--shed-delay 5ms]

Each checkout must have its core built in place (``python setup.py build_ext
--inplace``); ``git worktree add /tmp/before REV`` makes one of any commit.  Both gateways
run the load tool's production-like config against the same nginx stub, pinned to the
same core, and are loaded in turn (A B B A …) with wrk at c=64 for ``--seconds`` each, so
that a neighbour's burst lands on both; CPU per request is read from /proc.  Prints each
round and the medians, and the after/before ratios.

With ``--overload RATE`` each round is instead an open loop at that rate (above the
gateways' maximum) against gateways with ``server.limits.max_concurrent``
``--max-concurrent``: requests accepted and shed, the accepted ones' p50/p99 and the shed
ones' p99.  ``--shed-delay`` sets ``server.limits.shed_delay`` on the after side only (a
checkout older than that setting would refuse it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import BODY, STREAM_BODY, Load, with_cpu  # noqa: E402
from servers import Procs, check, start_gateway, start_stub  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True, help="the checkout to compare with")
    p.add_argument("--after", type=Path, default=ROOT, help="default: this checkout")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8, help="wrk time per round and side")
    p.add_argument("--stream", action="store_true", help="streamed requests (11 events)")
    p.add_argument("--overload", type=float, default=0, metavar="RATE",
                   help="open loop at RATE req/s instead of wrk (see above)")
    p.add_argument("--max-concurrent", type=int, default=32,
                   help="server.limits.max_concurrent of both gateways with --overload")
    p.add_argument("--shed-delay", help="server.limits.shed_delay of the after side")
    args = p.parse_args(argv)
    if args.overload and args.stream:
        p.error("--overload measures non-streamed requests")
    for side in (args.before, args.after):
        if not (side / "hapax" / "__init__.py").exists():
            p.error(f"{side}: not a Hapax checkout")
    cores = sorted(os.sched_getaffinity(0))
    gw_core, other = cores[0], cores[-1]
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="hapax-compare-"))
    try:
        stub_port, stub, _ = start_stub(procs, tmp, other, True)
        load = Load(procs, tmp, other, 64, True)
        sides: dict[str, Any] = {}
        for name, source in (("before", args.before), ("after", args.after)):
            limits: dict[str, Any] = {}
            if args.overload:
                limits["max_concurrent"] = args.max_concurrent
                if name == "after" and args.shed_delay:
                    limits["shed_delay"] = args.shed_delay
            proc, port = start_gateway(procs, tmp, gw_core, stub_port, name=f"gw-{name}",
                                       source=source.resolve(), **limits)
            check(port, STREAM_BODY if args.stream else BODY, stream=args.stream)
            load.closed(port, 2, stream=args.stream)  # warm-up
            sides[name] = {"pid": proc.pid, "port": port, "rounds": []}
        print(f"stub: {stub}; gateways on core {gw_core}, wrk on core {other}; "
              f"{'streamed' if args.stream else 'non-streamed'} requests", flush=True)
        if args.overload:
            return _overload(args, load, sides)
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for name in order:
                side = sides[name]
                w, cpu = with_cpu(side["pid"], lambda s=side: load.closed(
                    s["port"], args.seconds, stream=args.stream))
                cpu_us = cpu / max(1, w["requests"]) * 1e6
                side["rounds"].append((cpu_us, w["rps"], w["errors"]))
                print(f"round {r + 1} {name:6s}: {cpu_us:6.1f} µs CPU per request, "
                      f"{w['rps']:9,.0f} req/s, {w['errors']} errors", flush=True)
        med = {n: (statistics.median(c for c, _, _ in s["rounds"]),
                   statistics.median(q for _, q, _ in s["rounds"])) for n, s in sides.items()}
        print(f"median before: {med['before'][0]:.1f} µs, {med['before'][1]:,.0f} req/s")
        print(f"median after:  {med['after'][0]:.1f} µs, {med['after'][1]:,.0f} req/s")
        print(f"after/before: CPU per request {med['after'][0] / med['before'][0]:.3f}, "
              f"req/s {med['after'][1] / med['before'][1]:.3f}")
        errors = sum(e for s in sides.values() for _, _, e in s["rounds"])
        return 1 if errors else 0
    finally:
        procs.stop_all()


def _overload(args: argparse.Namespace, load: Load, sides: dict[str, Any]) -> int:
    errors = 0
    for r in range(args.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            side = sides[name]
            o = load.openloop(side["port"], ["--rate", f"{args.overload:g}",
                                             "--max-connections", "512", "--drain", "10"],
                              args.seconds, 1.0)
            other = o["errors"] + o["non2xx"] - o["shed"]
            errors += other
            side["rounds"].append((o["ok"], o["ok_p99_ms"]))
            print(f"round {r + 1} {name:6s}: {o['ok']:,} accepted, {o['shed']:,} shed, "
                  f"{other} other errors; accepted p50 {o['ok_p50_ms']:.1f} ms, p99 "
                  f"{o['ok_p99_ms']:.1f} ms; shed p99 {o['shed_p99_ms']:.1f} ms", flush=True)
    for name, side in sides.items():
        print(f"median {name}: {statistics.median(a for a, _ in side['rounds']):,.0f} "
              f"accepted, accepted p99 "
              f"{statistics.median(q for _, q in side['rounds']):.1f} ms")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
