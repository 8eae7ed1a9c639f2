"""HTTP/3 against HTTP/1.1 over TLS, one gateway worker, in one run.

    python benchmarks/load/http3.py [--markdown FILE] [--requests 1000] ...

What it does (all traffic to 127.0.0.1; the gateway it starts is stopped by PID):

1. writes throw-away certificates (``hapax cert dev``'s code) and starts
   ``python -m hapax serve`` with ``server.tls`` (HTTPS on TCP, HTTP/3 on UDP, same port),
   the built-in ``mock`` provider (no upstream: only the front door differs between the
   two protocols), one gateway key, the access log off; pinned with ``taskset`` to the
   first allowed core, this process (the client) to the other;
2. checks one request over each protocol, warms up, then measures, for a non-streaming
   chat request:

   a. **sequential latency** p50/p99: one request at a time, HTTP/1.1 over TLS on one
      keep-alive connection against HTTP/3 on one QUIC connection;
   b. **gateway CPU per request** with 16 requests in flight: 16 keep-alive TLS
      connections against 4 QUIC connections carrying 4 streams each; the gateway's CPU
      time (user + system, all threads: the scheduler's count in /proc/<pid>/task/*/
      schedstat) divided by the requests, over ``--rounds`` rounds in alternation (the
      median is shown; sequential requests are measured the same way);
   c. **connection set-up**: time to the first response byte on a NEW connection (TCP +
      TLS handshake + request; QUIC 1-RTT handshake + request; QUIC 0-RTT: the request
      sent in early data with the session ticket of the connection before), and the
      gateway CPU per connection (handshake, one request, close).  0-RTT runs when the
      server issues session tickets that allow early data; otherwise the table says
      "0-RTT: not offered by the server" (and measures plain resumption if it issues
      tickets at all).  An early request refused with 425 is sent again once the
      handshake is complete, as clients do, and counted in the table.

The client is Python too (asyncio + ssl for HTTP/1.1, aioquic for HTTP/3) on the other
core: its latencies include the client's own cost, larger for aioquic than for the ssl
module (the table shows the client's CPU per request too); the gateway CPU figures are
the gateway's alone.  Results: docs/performance.md, "HTTP/3 versus HTTP/1.1".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import platform
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aioquic.asyncio.client import connect  # noqa: E402
from aioquic.asyncio.protocol import QuicConnectionProtocol  # noqa: E402
from aioquic.h3.connection import H3Connection  # noqa: E402
from aioquic.h3.events import DataReceived, HeadersReceived  # noqa: E402
from aioquic.quic.configuration import QuicConfiguration  # noqa: E402
from aioquic.quic.events import HandshakeCompleted, QuicEvent  # noqa: E402
from aioquic.tls import SessionTicket  # noqa: E402
from loadgen import BODY  # noqa: E402
from report import cpu_model  # noqa: E402
from servers import ALIAS, HOST, KEY, Procs, pin, proc_cpu_seconds  # noqa: E402

from hapax.server.tls import DevCerts, make_dev_certs  # noqa: E402

PATH = "/v1/chat/completions"
PAYLOAD = BODY.encode()
H1_REQUEST = (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
              f"Authorization: Bearer {KEY}\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n"
              ).encode() + PAYLOAD
H3_HEADERS = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", HOST.encode()),
              (b":path", PATH.encode()), (b"content-type", b"application/json"),
              (b"authorization", f"Bearer {KEY}".encode())]
#: Requests in flight for the CPU measurement, and how HTTP/3 spreads them.
IN_FLIGHT = 16
H3_CONNECTIONS = 4


class BenchError(Exception):
    """A request did not get the expected answer: the figures would mean nothing."""


class TooEarly(BenchError):
    """425: the server refused a request sent in 0-RTT; send it again after the handshake."""


# --- the gateway ----------------------------------------------------------------------


GATEWAY_YAML = """\
server:
  host: {host}
  port: 0
  workers: 1
  access_log: {{format: "off"}}
  tls: {{cert: "{cert}", key: "{key}"}}
providers:
  mock: {{kind: mock}}
models:
  {alias}:
    targets: [{{provider: mock}}]
keys:
  - name: load
    key_sha256: "{digest}"
"""


def start_gateway(procs: Procs, tmp: Path, certs: DevCerts,
                  core: int | None) -> tuple[subprocess.Popen[Any], int]:
    """``hapax serve`` with TLS and HTTP/3 (the other ``server.tls`` settings, 0-RTT's
    among them, at their defaults); returns the process and its port (TCP and UDP)."""
    cfg = tmp / "http3.yaml"
    cfg.write_text(GATEWAY_YAML.format(host=HOST, cert=certs.cert, key=certs.key,
                                       alias=ALIAS,
                                       digest=hashlib.sha256(KEY.encode()).hexdigest()))
    log_path = tmp / "gateway.log"
    env = {**os.environ, "HAPAX_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with open(log_path, "wb") as log:
        proc = procs.start("gateway", [*pin(core), sys.executable, "-m", "hapax", "serve",
                                       str(cfg), "--port", "0", "--log-level", "info"],
                           stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        m = re.search(r"listening on https://[^:]+:(\d+)", text)
        if m and "(UDP: HTTP/3)" in text:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.05)
    raise SystemExit("the gateway did not start HTTPS and HTTP/3 within 30s")


# --- clients ----------------------------------------------------------------------------


class H1:
    """One HTTP/1.1 connection over TLS, requests one after the other (keep-alive)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> H1:
        return cls(*await asyncio.open_connection(HOST, port, ssl=context))

    async def request(self) -> float:
        """Send the chat request; returns when its first response byte arrived
        (``time.perf_counter()``), after reading the whole response."""
        self.writer.write(H1_REQUEST)
        first = await self.reader.readexactly(1)
        t_first = time.perf_counter()
        head = first + await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise BenchError(f"HTTP/1.1: {head[:200]!r}")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        if m is None:
            raise BenchError(f"HTTP/1.1: no content-length in {head[:300]!r}")
        body = await self.reader.readexactly(int(m.group(1)))
        if b'"choices"' not in body:
            raise BenchError(f"HTTP/1.1: unexpected body {body[:200]!r}")
        return t_first

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


class H3(QuicConnectionProtocol):
    """One QUIC connection; any number of requests at once, each on its own stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        #: stream id -> (answer future, [status, body, time of the first byte])
        self.open: dict[int, tuple[asyncio.Future[float], list[Any]]] = {}
        self.handshake: HandshakeCompleted | None = None
        #: Set when the handshake completes (``wait_connected`` of aioquic's protocol only
        #: works when called before it does).
        self.connected = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
            self.connected.set()
        for h3_event in self.h3.handle_event(event):
            if not isinstance(h3_event, (HeadersReceived, DataReceived)):
                continue
            entry = self.open.get(h3_event.stream_id)
            if entry is None:
                continue
            waiter, state = entry
            if isinstance(h3_event, HeadersReceived):
                state[2] = time.perf_counter()
                state[0] = dict(h3_event.headers).get(b":status", b"")
            else:
                state[1] += h3_event.data
            if h3_event.stream_ended:
                del self.open[h3_event.stream_id]
                if state[0] == b"425":
                    waiter.set_exception(TooEarly("HTTP/3: 425 to a 0-RTT request"))
                elif state[0] != b"200" or b'"choices"' not in state[1]:
                    waiter.set_exception(BenchError(f"HTTP/3: {state[0]!r} "
                                                    f"{bytes(state[1][:200])!r}"))
                else:
                    waiter.set_result(state[2])

    async def request(self) -> float:
        """As :meth:`H1.request`, on a new stream."""
        stream_id = self._quic.get_next_available_stream_id()
        waiter: asyncio.Future[float] = self._loop.create_future()
        self.open[stream_id] = (waiter, [b"", bytearray(), 0.0])
        self.h3.send_headers(stream_id, [*H3_HEADERS,
                                         (b"content-length", b"%d" % len(PAYLOAD))])
        self.h3.send_data(stream_id, PAYLOAD, end_stream=True)
        self.transmit()
        return await waiter


class H3Connector:
    """Opens QUIC connections, keeping the newest session ticket the server sent."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port, self.ca = port, ca
        self.ticket: SessionTicket | None = None
        #: Set when a ticket arrives (a ticket's early data is accepted once only).
        self.fresh = asyncio.Event()

    def _keep(self, ticket: SessionTicket) -> None:
        self.ticket = ticket
        self.fresh.set()

    @property
    def early_data_offered(self) -> bool:
        return self.ticket is not None and bool(self.ticket.max_early_data_size)

    def connect(self, *, resume: bool = False) -> Any:
        """``async with connector.connect() as conn`` (an :class:`H3`); ``resume``: offer
        the last ticket (0-RTT when it allows early data)."""
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                   session_ticket=self.ticket if resume else None)
        config.load_verify_locations(cafile=str(self.ca))
        # Not waiting for the handshake: the request goes out as early as the protocol
        # allows (in 0-RTT packets when resuming with early data, else right after it).
        return connect(HOST, self.port, configuration=config, create_protocol=H3,
                       session_ticket_handler=self._keep, wait_connected=False)


# --- measurements ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time ``pid`` used so far, all its threads, user and system: the scheduler's
    nanosecond count (/proc/<pid>/task/*/schedstat) — /proc/<pid>/stat counts in 10 ms
    ticks, too coarse for a few dozen handshakes — or /proc/<pid>/stat without it."""
    try:
        return sum(int(stat.read_text().split()[0])
                   for stat in Path(f"/proc/{pid}/task").glob("*/schedstat")) / 1e9
    except (OSError, ValueError, IndexError):
        return proc_cpu_seconds(pid)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def sequential(one: Callable[[], Awaitable[float]], n: int) -> list[float]:
    """Latency (s) of ``n`` requests sent one after the other."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await one()
        out.append(time.perf_counter() - t0)
    return out


async def concurrently(requesters: list[Callable[[], Awaitable[float]]], total: int) -> None:
    """``total`` requests, one loop per requester, each sending its next request as soon as
    its previous one was answered."""
    left = total

    async def loop(one: Callable[[], Awaitable[float]]) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    await asyncio.gather(*(loop(one) for one in requesters))


class Bench:
    """The measurements, run by this process (the client) against the gateway at
    ``port`` whose CPU time is read from /proc/``gw_pid``."""

    def __init__(self, args: argparse.Namespace, port: int, gw_pid: int, certs: DevCerts):
        self.args, self.port, self.pid = args, port, gw_pid
        self.tls = ssl.create_default_context(cafile=str(certs.ca))
        self.tls.set_alpn_protocols(["http/1.1"])
        self.h3 = H3Connector(port, certs.ca)
        self.say: Callable[..., None] = (lambda *a, **k: None) if args.quiet else print

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    async def run(self) -> dict[str, Any]:
        args = self.args
        res: dict[str, Any] = {}
        h1 = await H1.open(self.port, self.tls)
        async with self.h3.connect() as conn:
            h3: H3 = conn  # type: ignore[assignment]
            await h1.request()
            await h3.request()  # checks: both answered 200 with a completion

            self.say(f"sequential: {args.requests} requests each, after "
                     f"{args.warmup} of warm-up …", flush=True)
            for one in (h1.request, h3.request):
                await sequential(one, args.warmup)
            for name, one in (("h1", h1.request), ("h3", h3.request)):
                c0, own = self.cpu(), time.process_time()
                lat = await sequential(one, args.requests)
                res[f"seq_{name}"] = {
                    "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3,
                    "cpu_us": (self.cpu() - c0) / args.requests * 1e6,
                    "client_us": (time.process_time() - own) / args.requests * 1e6}
        await h1.close()

        self.say(f"{IN_FLIGHT} in flight: {args.rounds} rounds of {args.batch} requests per "
                 f"protocol, alternating …", flush=True)
        rounds: dict[str, list[dict[str, float]]] = {"h1": [], "h3": []}
        for _ in range(args.rounds):
            rounds["h1"].append(await self.busy_h1(args.batch))
            rounds["h3"].append(await self.busy_h3(args.batch))
        for name, runs in rounds.items():
            runs.sort(key=lambda r: r["cpu_us"])
            res[f"busy_{name}"] = {**runs[len(runs) // 2],
                                   "all_cpu_us": [r["cpu_us"] for r in runs]}

        self.say(f"connection set-up: {args.connections} new connections of each kind …",
                 flush=True)
        res["setup_h1"] = await self.setup(self.new_h1, args.connections)
        res["setup_h3"] = await self.setup(lambda: self.new_h3(resume=False),
                                           args.connections)
        res["tickets"] = self.h3.ticket is not None
        res["early_data_offered"] = self.h3.early_data_offered
        if self.h3.ticket is not None:
            res["setup_h3_resumed"] = await self.setup(lambda: self.new_h3(resume=True),
                                                       args.connections)
        return res

    async def busy_h1(self, total: int) -> dict[str, float]:
        """``total`` requests over :data:`IN_FLIGHT` keep-alive TLS connections."""
        conns = [await H1.open(self.port, self.tls) for _ in range(IN_FLIGHT)]
        try:
            for c in conns:
                await c.request()
            return await self._busy([c.request for c in conns], total)
        finally:
            for c in conns:
                await c.close()

    async def busy_h3(self, total: int) -> dict[str, float]:
        """``total`` requests, :data:`IN_FLIGHT` at once over :data:`H3_CONNECTIONS`
        QUIC connections."""
        async with contextlib.AsyncExitStack() as stack:
            conns: list[H3] = [await stack.enter_async_context(self.h3.connect())
                               for _ in range(H3_CONNECTIONS)]
            for c in conns:
                await c.request()
            per = IN_FLIGHT // H3_CONNECTIONS
            return await self._busy([c.request for c in conns for _ in range(per)], total)

    async def _busy(self, requesters: list[Callable[[], Awaitable[float]]],
                    total: int) -> dict[str, float]:
        c0, t0 = self.cpu(), time.perf_counter()
        await concurrently(requesters, total)
        cpu, wall = self.cpu() - c0, time.perf_counter() - t0
        return {"cpu_us": cpu / total * 1e6, "rps": total / wall, "util": cpu / wall}

    async def new_h1(self) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        conn = await H1.open(self.port, self.tls)
        first = await conn.request()
        await conn.close()
        return first - t0, {}

    async def new_h3(self, *, resume: bool) -> tuple[float, dict[str, Any]]:
        """A new QUIC connection, one request: (time to its first response byte, what the
        handshake did).  A 0-RTT request refused with 425 is sent again once the
        handshake is complete, as clients do, and counted."""
        self.h3.fresh.clear()
        refused = False
        t0 = time.perf_counter()
        async with self.h3.connect(resume=resume) as conn:
            try:
                first = await conn.request()  # type: ignore[attr-defined]
            except TooEarly:
                refused = True
                await asyncio.wait_for(conn.connected.wait(), 5)  # type: ignore[attr-defined]
                first = await conn.request()  # type: ignore[attr-defined]
            # Answered in 0-RTT, the handshake may still be running.
            await asyncio.wait_for(conn.connected.wait(), 5)  # type: ignore[attr-defined]
            hs: HandshakeCompleted | None = conn.handshake  # type: ignore[attr-defined]
            if resume:
                # The next connection resumes with this one's ticket, not a used one (a
                # server that sends none on resumed connections gets its 425s counted).
                try:
                    await asyncio.wait_for(self.h3.fresh.wait(), 2)
                except TimeoutError:
                    pass
        return first - t0, {"early": bool(hs and hs.early_data_accepted and not refused),
                            "resumed": bool(hs and hs.session_resumed), "refused": refused}

    async def setup(self, new: Callable[[], Awaitable[tuple[float, dict[str, Any]]]],
                    n: int) -> dict[str, Any]:
        """``n`` new connections one after the other: time to the first response byte,
        and the gateway CPU per connection (handshake, one request, close)."""
        await new()  # warm
        ttfb, early, resumed, refused = [], 0, 0, 0
        await asyncio.sleep(0.2)
        c0 = self.cpu()
        for _ in range(n):
            t, info = await new()
            ttfb.append(t)
            early += info.get("early", False)
            resumed += info.get("resumed", False)
            refused += info.get("refused", False)
        await asyncio.sleep(0.3)  # let the gateway finish closing the last one
        return {"p50_ms": percentile(ttfb, 50) * 1e3, "p90_ms": percentile(ttfb, 90) * 1e3,
                "cpu_us": (self.cpu() - c0) / n * 1e6, "early": early, "resumed": resumed,
                "refused": refused, "n": n}


# --- the run and its table ----------------------------------------------------------------


def measure(args: argparse.Namespace, tmp: Path, procs: Procs) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    nproc = len(cores)
    gw_core = cores[0] if args.pin else None
    other = (cores[1] if len(cores) > 1 else cores[0]) if args.pin else None
    certs = make_dev_certs(tmp / "certs", [HOST])
    gw, port = start_gateway(procs, tmp, certs, gw_core)
    if other is not None:
        os.sched_setaffinity(0, {other})
    try:
        import uvloop
        runner: Any = uvloop.run
        loop_name = f"uvloop {uvloop.__version__}"
    except ImportError:  # pragma: no cover - uvloop is a dependency of Hapax
        runner, loop_name = asyncio.run, "asyncio"
    res = runner(Bench(args, port, gw.pid, certs).run())
    if gw.poll() is not None:
        raise SystemExit("the gateway died during the run")
    import aioquic
    res.update(nproc=nproc, pinned=args.pin, gateway_core=gw_core, other_core=other,
               client=f"Python {platform.python_version()}, {loop_name}; HTTP/1.1: asyncio "
                      f"streams + ssl (OpenSSL {ssl.OPENSSL_VERSION.split()[1]}); HTTP/3: "
                      f"aioquic {aioquic.__version__}")
    return res


def table(res: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}×" if a else "–"

    s1, s3 = res["seq_h1"], res["seq_h3"]
    b1, b3 = res["busy_h1"], res["busy_h3"]
    n1, n3 = res["setup_h1"], res["setup_h3"]
    rows = [
        ("sequential latency p50 (one connection)", f"{s1['p50_ms']:.2f} ms",
         f"{s3['p50_ms']:.2f} ms", ratio(s1["p50_ms"], s3["p50_ms"])),
        ("sequential latency p99", f"{s1['p99_ms']:.2f} ms", f"{s3['p99_ms']:.2f} ms",
         ratio(s1["p99_ms"], s3["p99_ms"])),
        ("gateway CPU per request, sequential", f"{s1['cpu_us']:.0f} µs",
         f"{s3['cpu_us']:.0f} µs", ratio(s1["cpu_us"], s3["cpu_us"])),
        ("client (Python) CPU per request, sequential", f"{s1['client_us']:.0f} µs",
         f"{s3['client_us']:.0f} µs", ratio(s1["client_us"], s3["client_us"])),
        (f"gateway CPU per request, {IN_FLIGHT} in flight (median of {args.rounds})",
         f"{b1['cpu_us']:.0f} µs", f"{b3['cpu_us']:.0f} µs", ratio(b1["cpu_us"], b3["cpu_us"])),
        ("… all rounds", ", ".join(f"{v:.0f}" for v in b1["all_cpu_us"]),
         ", ".join(f"{v:.0f}" for v in b3["all_cpu_us"]), ""),
        (f"requests/s at {IN_FLIGHT} in flight (the client may be the limit)",
         f"{b1['rps']:,.0f} (gateway core {b1['util'] * 100:.0f}%)",
         f"{b3['rps']:,.0f} (gateway core {b3['util'] * 100:.0f}%)", ratio(b1["rps"], b3["rps"])),
        ("new connection: time to first response byte, p50", f"{n1['p50_ms']:.2f} ms",
         f"{n3['p50_ms']:.2f} ms (1-RTT)", ratio(n1["p50_ms"], n3["p50_ms"])),
        ("new connection: p90", f"{n1['p90_ms']:.2f} ms", f"{n3['p90_ms']:.2f} ms (1-RTT)",
         ratio(n1["p90_ms"], n3["p90_ms"])),
        ("gateway CPU per new connection (handshake, 1 request, close)",
         f"{n1['cpu_us']:.0f} µs", f"{n3['cpu_us']:.0f} µs (1-RTT)",
         ratio(n1["cpu_us"], n3["cpu_us"])),
    ]
    r = res.get("setup_h3_resumed")
    if r is None or not res["early_data_offered"]:
        rows.append(("0-RTT", "", "not offered by the server" + (
            " (it issues session tickets without early data)" if res["tickets"] else ""), ""))
    if r is not None:
        kind = "0-RTT" if res["early_data_offered"] else "resumed, 1-RTT"
        rows += [
            (f"new connection, {kind}: time to first response byte, p50",
             f"{n1['p50_ms']:.2f} ms", f"{r['p50_ms']:.2f} ms",
             ratio(n1["p50_ms"], r["p50_ms"])),
            (f"new connection, {kind}: p90", f"{n1['p90_ms']:.2f} ms", f"{r['p90_ms']:.2f} ms",
             ratio(n1["p90_ms"], r["p90_ms"])),
            (f"gateway CPU per new connection, {kind}", f"{n1['cpu_us']:.0f} µs",
             f"{r['cpu_us']:.0f} µs", ratio(n1["cpu_us"], r["cpu_us"])),
            (f"… of {r['n']}: sessions resumed / early requests accepted / refused (425)",
             "", f"{r['resumed']} / {r['early']} / {r['refused']}", ""),
        ]
    return rows


def render(rows: list[tuple[str, str, str, str]], res: dict[str, Any],
           args: argparse.Namespace, markdown: bool) -> str:
    cmd = "python benchmarks/load/http3.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"{os.cpu_count()} CPUs (nproc {res['nproc']}), "
                    f"{cpu_model()}, Linux {platform.release()}"),
        ("command", cmd.strip()),
        ("provider", "the built-in mock (no upstream)"),
        ("client", res["client"]),
        ("pinning", f"gateway on core {res['gateway_core']}, client on core "
                    f"{res['other_core']}" if res["pinned"] else "none"),
    ]
    head = ("", "HTTP/1.1 over TLS", "HTTP/3", "HTTP/3 ÷ HTTP/1.1")
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|---|---|---|---|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out += ["", *[f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in meta]]
        return "\n".join(out) + "\n"
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
           for r in [head, *rows]]
    out += ["", *[f"{k}: {v}" for k, v in meta]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000,
                   help="sequential requests per protocol")
    p.add_argument("--warmup", type=int, default=300, help="sequential warm-up requests")
    p.add_argument("--batch", type=int, default=3000,
                   help=f"requests per round at {IN_FLIGHT} in flight")
    p.add_argument("--rounds", type=int, default=3, help="rounds per protocol, alternating")
    p.add_argument("--connections", type=int, default=60,
                   help="new connections per kind for the set-up time")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    p.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    args = p.parse_args(argv)

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="hapax-h3-"))
    try:
        res = measure(args, tmp, procs)
    except BenchError as exc:
        raise SystemExit(f"wrong answer: {exc}") from None
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = table(res, args)
    print(render(rows, res, args, markdown=False))
    if args.markdown:
        Path(args.markdown).write_text(render(rows, res, args, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
