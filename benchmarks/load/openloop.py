"""HTTP/1.1 load generator: open-loop at a fixed rate, or closed-loop at a concurrency.

Open loop (``--rate R``): request *i* is due at ``start + i / R`` whether or not earlier
answers have come back, and its latency is measured from that scheduled time.  A slow
server therefore cannot slow the generator down and hide its own queueing (the
"coordinated omission" of closed-loop tools).  A due request takes an idle keep-alive
connection, or opens a new one (up to ``--max-connections``), or waits in line — that
wait counts in its latency.

Closed loop (``--closed C``): C keep-alive connections, each sending its next request
when the previous answer is complete: the fallback for maximum throughput when ``wrk``
is not installed.

Besides the latency to the complete answer it records the time to the first body bytes
(``ttft_*``: for a streamed request, the first SSE event), the latency of 2xx answers
alone (``ok_*``) and of shed ones (``shed_*``: 429 and 503), and a count per status.

uvloop + httptools, raw sockets.  Prints one JSON object (latencies in ms).  Bounded: it
stops after ``--warmup`` + ``--duration`` seconds plus at most ``--drain`` seconds of
waiting for late answers (those count as errors).

Run: ``python benchmarks/load/openloop.py --port P --rate 500 --duration 10 \\
--body-file body.json --header "authorization: Bearer KEY"``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from typing import Any

import httptools

__all__ = ["Generator", "main"]

_now = time.perf_counter  # uvloop's loop.time() is cached per iteration at 1 ms: too coarse


class _Conn(asyncio.Protocol):
    __slots__ = ("gen", "transport", "parser", "due", "status", "busy", "first")

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.status = 0
        self.busy = False
        self.first = 0.0  # when the first body bytes of the current answer arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.failed(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = _now()

    def on_message_complete(self) -> None:
        self.gen.completed(self, self.parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)

    def send(self, due: float, data: bytes) -> None:
        self.due = due
        self.status = 0
        self.first = 0.0
        self.busy = True
        assert self.transport is not None
        self.transport.write(data)


class Generator:
    """Sends ``request`` to ``host:port``; records latencies of measured requests."""

    def __init__(self, host: str, port: int, request: bytes, *, max_connections: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.max_connections = max_connections
        self.idle: list[_Conn] = []
        self.waiting: deque[float] = deque()  # due requests with no connection
        self.conns: set[_Conn] = set()
        self.opening = 0
        self.opened = 0
        self.latencies: list[float] = []
        self.ok_latencies: list[float] = []  # 2xx answers only
        self.shed_latencies: list[float] = []  # 429 and 503: load shedding
        self.ttft: list[float] = []  # due time to first body bytes
        self.statuses: dict[int, int] = {}
        self.measure_from = float("inf")  # requests due before this are warm-up
        self.errors = 0
        self.non2xx = 0
        self.sent = 0
        self.outstanding = 0
        self.send_lag: list[float] = []  # how late the generator itself fired
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- dispatch ------------------------------------------------------------------------

    def fire(self, due: float) -> None:
        self.sent += 1
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(due, self.request)
            return
        self.waiting.append(due)
        if len(self.conns) + self.opening < self.max_connections:
            self._open()

    def _open(self) -> None:
        self.opening += 1
        task = self.loop.create_task(self._connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.opening -= 1
            if self.waiting:  # the request that wanted this connection fails
                self._finish_error(self.waiting.popleft())
            return
        self.opening -= 1
        self.opened += 1
        self.conns.add(conn)
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        if self.waiting:
            conn.send(self.waiting.popleft(), self.request)
        else:
            conn.busy = False
            self.idle.append(conn)

    # -- outcomes ------------------------------------------------------------------------

    def completed(self, conn: _Conn, keep_alive: bool) -> None:
        t = _now()
        conn.busy = False
        self.outstanding -= 1
        if conn.due >= self.measure_from:
            self.latencies.append(t - conn.due)
            self.statuses[conn.status] = self.statuses.get(conn.status, 0) + 1
            if 200 <= conn.status < 300:
                self.ok_latencies.append(t - conn.due)
                if conn.first:
                    self.ttft.append(conn.first - conn.due)
            else:
                self.non2xx += 1
                if conn.status in (429, 503):
                    self.shed_latencies.append(t - conn.due)
        if keep_alive:
            self._next(conn)
        else:
            assert conn.transport is not None
            conn.transport.close()

    def failed(self, conn: _Conn) -> None:
        assert conn.transport is not None
        conn.transport.abort()

    def lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        if conn.busy:
            conn.busy = False
            self._finish_error(conn.due)
        if self.waiting and len(self.conns) + self.opening < self.max_connections:
            self._open()

    def _finish_error(self, due: float) -> None:
        self.outstanding -= 1
        if due >= self.measure_from:
            self.errors += 1

    def close(self) -> None:
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[idx]


def summary(lat: list[float], prefix: str = "") -> dict[str, float]:
    s = sorted(lat)
    out = {f"{prefix}p{q:g}_ms": _percentile(s, q) * 1e3 for q in (50, 90, 99, 99.9)}
    out[f"{prefix}max_ms"] = s[-1] * 1e3 if s else float("nan")
    out[f"{prefix}mean_ms"] = sum(s) / len(s) * 1e3 if s else float("nan")
    return out


def details(gen: Generator) -> dict[str, Any]:
    """Statuses, and the percentiles of 2xx answers, shed answers and first bytes."""
    return {"statuses": {str(k): v for k, v in sorted(gen.statuses.items())},
            "ok": len(gen.ok_latencies), "shed": len(gen.shed_latencies),
            **summary(gen.ok_latencies, "ok_"), **summary(gen.shed_latencies, "shed_"),
            **summary(gen.ttft, "ttft_")}


async def open_loop(gen: Generator, rate: float, warmup: float, duration: float,
                    drain: float) -> dict[str, Any]:
    interval = 1.0 / rate
    total = int((warmup + duration) * rate)
    start = _now() + 0.05
    gen.measure_from = start + int(warmup * rate) * interval
    i = 0
    while i < total:
        now = _now()
        while i < total and start + i * interval <= now:
            due = start + i * interval
            if due >= gen.measure_from:
                gen.send_lag.append(now - due)
            gen.fire(due)
            i += 1
        if i < total:
            # Wake at the next due time; uvloop's timers are ms-grained, so a request
            # may go out up to ~1 ms late: that lateness counts in its latency.
            await asyncio.sleep(max(0.0, start + i * interval - _now()))
    deadline = _now() + drain
    while gen.outstanding > 0 and _now() < deadline:
        await asyncio.sleep(0.005)
    late = max(0, gen.outstanding)
    measured = len(gen.latencies)
    return {"mode": "open", "rate": rate, "duration_s": duration, "sent": gen.sent,
            "completed": measured, "errors": gen.errors + late, "late": late,
            "non2xx": gen.non2xx, "connections": gen.opened,
            "achieved_rps": measured / duration if duration else 0.0,
            "send_lag_p99_ms": _percentile(sorted(gen.send_lag), 99) * 1e3,
            **summary(gen.latencies), **details(gen)}


async def closed_loop(gen: Generator, concurrency: int, warmup: float,
                      duration: float) -> dict[str, Any]:
    # Each connection sends its next request as soon as the previous one completes:
    # keep ``concurrency`` requests permanently queued for the generator to hand out.
    stop_at = _now() + warmup + duration
    gen.measure_from = _now() + warmup
    gen.max_connections = concurrency

    def refill() -> None:
        while gen.outstanding < concurrency and _now() < stop_at:
            gen.fire(_now())

    orig = gen.completed

    def completed(conn: _Conn, keep_alive: bool) -> None:
        orig(conn, keep_alive)
        refill()

    gen.completed = completed  # type: ignore[method-assign]
    refill()
    while _now() < stop_at:
        await asyncio.sleep(0.05)
        refill()
    t_end = _now()
    while gen.outstanding > 0 and _now() < t_end + 5:
        await asyncio.sleep(0.005)
    return {"mode": "closed", "concurrency": concurrency, "duration_s": duration,
            "completed": len(gen.latencies), "errors": gen.errors + max(0, gen.outstanding),
            "non2xx": gen.non2xx, "rps": len(gen.latencies) / duration,
            **summary(gen.latencies), **details(gen)}


def build_request(host: str, port: int, path: str, body: bytes, headers: list[str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", "content-type: application/json",
             *headers, f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Open-loop (fixed rate) or closed-loop HTTP load.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--body-file", required=True)
    p.add_argument("--header", action="append", default=[], help="'name: value' (repeatable)")
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--closed", type=int, help="closed loop: concurrent connections")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--drain", type=float, default=5.0, help="max wait for late answers")
    p.add_argument("--max-connections", type=int, default=256)
    args = p.parse_args(argv)
    if (args.rate is None) == (args.closed is None):
        p.error("give exactly one of --rate or --closed")
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        p.error("load is only ever sent to this machine (127.0.0.1, ::1, localhost)")
    with open(args.body_file, "rb") as f:
        body = f.read()
    request = build_request(args.host, args.port, args.path, body, args.header)

    async def run() -> dict[str, Any]:
        gen = Generator(args.host, args.port, request, max_connections=args.max_connections)
        try:
            if args.rate is not None:
                return await open_loop(gen, args.rate, args.warmup, args.duration, args.drain)
            return await closed_loop(gen, args.closed, args.warmup, args.duration)
        finally:
            gen.close()

    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(run())
    finally:
        loop.close()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
