"""HTTP/3 listener: QUIC datagrams in (aioquic), Exchange out, HEADERS and DATA frames back.

It feeds the same :meth:`Gateway.handle` as the HTTP/1.1 listener — authentication,
routing, limits and streaming are not re-implemented here — and shares its
:class:`~hapax.server.http11.ListenerState` (so a reload reaches both at once).

State is grouped by lifetime: :class:`H3Listener` (the UDP socket), :class:`H3Protocol`
(one QUIC connection) and :class:`_Request` (one request stream: the head and body as
they arrive, then the task answering it).

Bounds: QUIC's stream limit caps the requests in flight per connection
(``server.tls.max_streams``); a request body beyond ``limits.max_body`` is refused
(413) and its stream stopped, as is one that pauses longer than ``limits.body_timeout``
(408); a connection silent for ``limits.keepalive`` is dropped.
Streamed responses are not buffered: each batch of events goes out as a DATA frame,
and a stream whose unacknowledged data exceeds :data:`HIGH_WATER` (a slow reader: QUIC
flow control holds the bytes back) waits for acknowledgements before reading more
from upstream — other streams of the connection go on.  A reader stalled longer than
``limits.send_timeout`` gets its stream reset.

Shutdown (:meth:`H3Listener.shutdown`): every connection is sent GOAWAY, so clients
open no new requests on it; requests already accepted finish, then the connection
closes with ``H3_NO_ERROR``.

0-RTT (``server.tls.early_data``, RFC 8470): each handshake issues a session ticket,
kept in the listener's bounded :class:`TicketStore`.  A client resuming with one may send
requests in 0-RTT packets before the handshake completes; such "early" requests can be
replayed by anyone who captured them, so a request any of whose STREAM frames came in a
0-RTT packet is answered 425 ``too_early`` (the client retries it once the handshake is
done) unless the mode accepts it: ``on`` always, ``safe`` only on the first connection
that uses the ticket's early data — the mark lives with the ticket in the store, and a
forgotten ticket cannot resume, so no early data is ever accepted twice.
"""

from __future__ import annotations

import asyncio
import email.utils
import gc
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection, encode_frame
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import Epoch, SessionTicket

from hapax.errors import RequestError
from hapax.pipeline.exchange import Exchange, header_safe_id, new_request_id
from hapax.pipeline.gateway import error_response
from hapax.server.h3_metrics import h3_counters
from hapax.server.tls import H3_ALPN, quic_configuration

if TYPE_CHECKING:
    from aioquic.buffer import Buffer
    from aioquic.quic.connection import QuicConnection, QuicReceiveContext

    from hapax.config import TLSConfig
    from hapax.server.http11 import ListenerState
    from hapax.types import Response, StreamResponse

__all__ = ["H3Listener", "H3Protocol", "HIGH_WATER", "TicketStore"]

log = logging.getLogger("hapax.server")

#: Unacknowledged bytes a response stream may have queued before its writer waits.
HIGH_WATER = 256 * 1024
#: ... and the level the queue must fall to before the writer goes on.
LOW_WATER = 64 * 1024
#: Socket buffers asked of the kernel (capped by net.core.rmem_max / wmem_max): a burst of
#: datagrams larger than the default (~200 KiB) would otherwise be dropped.
_SOCKET_BUFFER = 4 * 1024 * 1024

# HTTP/1.1 connection headers have no meaning in HTTP/3 and make a response malformed
# (RFC 9114 §4.2).
_CONNECTION_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                 b"transfer-encoding", b"upgrade"})
#: QUIC STREAM frame types (RFC 9000 §19.8: 0x08 plus the OFF, LEN and FIN bits).
_STREAM_FRAMES = range(0x08, 0x10)


class TicketStore:
    """The session tickets this listener issued, by ticket identity: bounded (the least
    recently issued or used goes first) and aged (``lifetime`` seconds), with the
    anti-replay mark of each ticket's early data.

    aioquic's tickets are opaque random identities naming a resumption secret kept
    here, so nothing else needs rotating: a secret dies with its ticket (expired,
    evicted, or the whole store dropped by a reload or restart)."""

    def __init__(self, size: int, lifetime: float) -> None:
        self.size = size
        self.lifetime = timedelta(seconds=lifetime)
        #: identity -> [ticket, whether its early data was accepted already]
        self._tickets: OrderedDict[bytes, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, ticket: SessionTicket) -> None:
        """Remember a ticket just issued (aioquic's ``session_ticket_handler``), valid for
        this store's lifetime; evict the oldest beyond ``size``."""
        ticket.not_valid_after = ticket.not_valid_before + self.lifetime
        self._tickets[ticket.ticket] = [ticket, False]
        while len(self._tickets) > self.size:
            self._tickets.popitem(last=False)

    def get(self, identity: bytes) -> SessionTicket | None:
        """The ticket a client resumes with (aioquic's ``session_ticket_fetcher``), or
        None — unknown, forgotten or expired: a full handshake, without early data."""
        entry = self._tickets.get(identity)
        if entry is None:
            return None
        if not entry[0].is_valid:
            del self._tickets[identity]
            return None
        self._tickets.move_to_end(identity)
        return entry[0]

    def claim_early_data(self, identity: bytes) -> bool:
        """True the first time only: the ticket's early data may be accepted.  False for
        every later connection with it (a replay), and for a ticket no longer here."""
        entry = self._tickets.get(identity)
        if entry is None or entry[1] or not entry[0].is_valid:
            return False
        entry[1] = True
        return True


def _hook_quic(quic: QuicConnection, protocol: H3Protocol) -> None:
    """Attach the 0-RTT machinery to a server connection before its first datagram.

    Relies on aioquic internals (written against aioquic 1.7; the range is pinned in
    pyproject.toml, and tests/test_http3_0rtt.py fails if they change):

    - the per-connection ``session_ticket_fetcher``/``_handler`` attributes, replaced so
      the protocol learns which ticket the client resumed with;
    - ``_initialize``, wrapped to drop the early-data offer from tickets when
      ``early_data`` is ``off`` (aioquic always offers it);
    - the STREAM entries of the connection's frame-handler table, wrapped to note the
      stream ids carried by 0-RTT packets (the packet's epoch): "the handshake is not
      complete yet" is no proof, as 1-RTT packets may arrive before it completes.
    """
    store = protocol.listener.tickets
    if store.size:
        quic._session_ticket_handler = store.add
        quic._session_ticket_fetcher = protocol.fetch_ticket
    else:
        quic._session_ticket_handler = quic._session_ticket_fetcher = None
    if protocol.listener.early_data == "off":
        initialize = quic._initialize

        def no_early_data_offer(peer_cid: bytes) -> None:
            initialize(peer_cid)
            quic.tls._max_early_data = None  # tickets issued say: no early data

        quic._initialize = no_early_data_offer  # type: ignore[method-assign]
    handlers = quic._QuicConnection__frame_handlers  # type: ignore[attr-defined]
    for frame_type in _STREAM_FRAMES:
        handler, epochs = handlers[frame_type]
        handlers[frame_type] = (partial(_note_early, handler, protocol.early_streams),
                                epochs)


#: Ended QUIC connections between two garbage collections (H3Protocol._terminated).
_COLLECT_EVERY = 64


def _ignore(*args: Any) -> None:
    """A callback that does nothing (what a terminated connection's callbacks become)."""


def _note_early(handler: Callable[..., None], early: set[int],
                context: QuicReceiveContext, frame_type: int, buf: Buffer) -> None:
    """A STREAM frame: note its stream id if it came in a 0-RTT packet, then handle it."""
    if context.epoch == Epoch.ZERO_RTT:
        start = buf.tell()
        early.add(buf.pull_uint_var())
        buf.seek(start)
    handler(context, frame_type, buf)


class H3Listener:
    """The UDP endpoint: its QUIC server and the connections it accepted."""

    def __init__(self, state: ListenerState, tls: TLSConfig) -> None:
        self.s = state
        self.max_streams = tls.max_streams
        self.max_connections = tls.max_connections
        self.configuration = quic_configuration(tls, idle_timeout=state.limits.keepalive)
        self.early_data = tls.early_data
        self.tickets = TicketStore(tls.session_tickets, tls.ticket_lifetime)
        # Get-or-create: the Server registered them already (so that they show at 0
        # without HTTP/3); the metrics are carried over by reloads.
        counters = h3_counters(state.gateway.metrics)
        self.early_data_total = counters.early_data
        self.handshakes_total = counters.handshakes
        self.migrations_total = counters.migrations
        self.stream_resets_total = counters.stream_resets
        self.refused_total = counters.refused
        self.connections: set[H3Protocol] = set()
        #: Connections ended since the last collection (see H3Protocol._terminated).
        self.ended = 0
        self.draining = False
        self._server: QuicServer | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._date_sec = -1
        self._date = b""

    async def start(self, host: str, port: int) -> None:
        """Listen on UDP ``host``:``port`` (not shared with other processes: see
        docs/how-to/http3.md on workers)."""
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=self.configuration, create_protocol=self._accept),
            local_addr=(host, port))
        self._server = server
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
                except OSError:  # pragma: no cover - the kernel caps it; never refuses
                    pass
        self._transport = transport

    def _accept(self, quic: QuicConnection, stream_handler: Any = None) -> H3Protocol:
        protocol = H3Protocol(quic, self)
        if len(self.connections) > self.max_connections:
            protocol.refused = True  # closed once its first packet has been read
        return protocol

    @property
    def sockets(self) -> list[Any]:
        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return [sock] if sock is not None else []

    def use(self, tls: TLSConfig, *, idle_timeout: float) -> None:
        """Connections from now on: ``tls``'s (renewed) certificate, its stream limit,
        0-RTT settings and ``idle_timeout``; established connections keep what they
        negotiated.  Every session ticket is forgotten (their secrets rotated out): the
        next connection of each client takes a full handshake."""
        self.configuration.load_cert_chain(tls.cert, tls.key)
        self.configuration.idle_timeout = idle_timeout
        self.max_streams = tls.max_streams
        self.max_connections = tls.max_connections
        self.early_data = tls.early_data
        self.tickets = TicketStore(tls.session_tickets, tls.ticket_lifetime)

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_sec:
            self._date_sec = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return self._date

    # -- shutdown -----------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Take no new requests: GOAWAY to every connection; idle ones close now."""
        self.draining = True
        for conn in list(self.connections):
            conn.goaway()

    @property
    def busy(self) -> bool:
        """Requests are still being received or answered."""
        return any(conn.requests for conn in self.connections)

    def close(self) -> None:
        """Close every connection (requests still running are abandoned) and the socket."""
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            self._server.close()
            self._server = self._transport = None


class _Request:
    """One request stream: its head and body as they arrive, then the answering task."""

    __slots__ = ("headers", "body", "size", "task", "timer", "last_read")

    def __init__(self, headers: list[tuple[bytes, bytes]], now: float) -> None:
        self.headers = headers
        self.body: list[bytes] = []
        self.size = 0
        self.task: asyncio.Task[None] | None = None
        #: While the body arrives: fires ``limits.body_timeout`` after the last data.
        self.timer: asyncio.TimerHandle | None = None
        self.last_read = now

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class H3Protocol(QuicConnectionProtocol):
    """One QUIC connection carrying HTTP/3 requests, each on its own stream."""

    def __init__(self, quic: QuicConnection, listener: H3Listener) -> None:
        super().__init__(quic)
        self.listener = listener
        self.h3: H3Connection | None = None
        #: Streams being received or answered, by stream id.
        self.requests: dict[int, _Request] = {}
        #: Streams waiting for their queued data to be acknowledged (see _drain).
        self.writers: dict[int, asyncio.Future[None]] = {}
        self.last_stream = -4
        self.goaway_id: int | None = None
        self.closed = False
        self._flush_handle: asyncio.Handle | None = None
        # Advertised in the handshake (initial_max_streams_bidi) and raised by one as
        # each stream finishes: the bound on concurrent requests of this connection.
        # (aioquic has no setting for it: set the limit's initial value and what it
        # counts as already advertised, before the handshake sends it.)
        limit = quic._local_max_streams_bidi
        limit.value = limit.sent = listener.max_streams
        #: Request streams any of whose frames came in 0-RTT packets (early data).
        self.early_streams: set[int] = set()
        #: The identity of the session ticket the client resumed with, if it did.
        self.ticket: bytes | None = None
        #: Whether this connection's early data is accepted (decided at its first early
        #: request: ``safe`` claims the ticket's single use then).
        self.early_ok: bool | None = None
        #: The client's address on the connection's active path (to count migrations).
        self.peer: Any = None
        #: Accepted beyond ``server.tls.max_connections``: refused at its first packet.
        self.refused = False
        _hook_quic(quic, self)
        listener.connections.add(self)

    def fetch_ticket(self, identity: bytes) -> SessionTicket | None:
        """aioquic's ``session_ticket_fetcher`` for this connection: note the ticket."""
        ticket = self.listener.tickets.get(identity)
        if ticket is not None:
            self.ticket = identity
        return ticket

    # -- QUIC and HTTP/3 events -----------------------------------------------------------

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.refused:
            # Over server.tls.max_connections: read the client's Initial packet (it
            # carries the keys to answer with) but send only CONNECTION_REFUSED, before
            # any of the handshake: the client falls back to HTTP/1.1 over TCP.
            if not self.closed:
                self.closed = True
                self.listener.refused_total.inc(())
                assert isinstance(data, bytes)  # a datagram socket delivers bytes
                self._quic.receive_datagram(data, addr, now=self._loop.time())
                self._quic.close(error_code=QuicErrorCode.CONNECTION_REFUSED,
                                 reason_phrase="too many connections")
                self.transmit()
            return
        super().datagram_received(data, addr)
        paths = self._quic._network_paths
        if paths and paths[0].addr != self.peer:  # the validated path moved: a migration
            if self.peer is not None:
                self.listener.migrations_total.inc(())
            self.peer = paths[0].addr
        if self.writers:  # acknowledgements may have freed room for waiting streams
            for stream_id, waiter in list(self.writers.items()):
                if not waiter.done() and self._queued(stream_id) <= LOW_WATER:
                    waiter.set_result(None)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self.h3 = H3Connection(self._quic)
                if self.listener.draining:
                    self.goaway()  # accepted during shutdown: nothing to serve on it
        elif isinstance(event, (StreamReset, StopSendingReceived)):
            if event.stream_id in self.requests:
                self.listener.stream_resets_total.inc(("client",))
            self._abandon(event.stream_id)
        elif isinstance(event, HandshakeCompleted):
            self.listener.handshakes_total.inc(
                ("resumed" if event.session_resumed else "new",))
        elif isinstance(event, ConnectionTerminated):
            self._terminated()
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            stream_id = event.stream_id
            req = self.requests.get(stream_id)
            if req is None:
                if self.goaway_id is not None and stream_id >= self.goaway_id:
                    # Opened after our GOAWAY: never processed, so the client may retry
                    # it on a new connection (RFC 9114 §5.2).
                    self._reset(stream_id, ErrorCode.H3_REQUEST_REJECTED)
                    return
                self.last_stream = max(self.last_stream, stream_id)
                req = self.requests[stream_id] = _Request(event.headers, self._loop.time())
                limit = self.listener.s.limits.max_header
                if sum(len(n) + len(v) + 32 for n, v in event.headers) > limit:
                    self._refuse(stream_id, 431, f"request head larger than {limit} bytes",
                                 "header_too_large")
                    return
            # else: trailers, which carry nothing the gateway uses
            if event.stream_ended and req.task is None:
                self._start(stream_id, req)
            elif req.timer is None and req.task is None:
                req.timer = self._loop.call_later(self.listener.s.limits.body_timeout,
                                                  self._body_timeout, stream_id)
        elif isinstance(event, DataReceived):
            req = self.requests.get(event.stream_id)
            if req is None or req.task is not None:
                return  # refused already, or data after the end
            req.size += len(event.data)
            limit = self.listener.s.limits.max_body
            if req.size > limit:
                self._refuse(event.stream_id, 413, f"request body larger than {limit} bytes",
                             "request_too_large")
                return
            if event.data:
                req.body.append(event.data)
                req.last_read = self._loop.time()
            if event.stream_ended:
                self._start(event.stream_id, req)

    def _body_timeout(self, stream_id: int) -> None:
        req = self.requests.get(stream_id)
        if req is None or req.task is not None:
            return
        req.timer = None
        # Re-armed lazily: data arriving moves last_read, not the timer.
        remaining = req.last_read + self.listener.s.limits.body_timeout - self._loop.time()
        if remaining > 0.001:
            req.timer = self._loop.call_later(remaining, self._body_timeout, stream_id)
            return
        self._refuse(stream_id, 408, "timed out waiting for the request body",
                     "request_timeout")

    # -- requests ---------------------------------------------------------------------------

    def _start(self, stream_id: int, req: _Request) -> None:
        req.disarm()
        method = path = authority = ""
        headers: dict[str, str] = {}
        for name, value in req.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value.decode("ascii", "replace")
                elif name == b":path":
                    path = value.decode("latin-1")
                elif name == b":authority":
                    authority = value.decode("latin-1")
                continue
            key = name.decode("latin-1")
            val = value.decode("latin-1")
            prev = headers.get(key)
            headers[key] = val if prev is None else f"{prev}, {val}"
        if authority and "host" not in headers:
            headers["host"] = authority
        path, _, query = path.partition("?")
        body = req.body[0] if len(req.body) == 1 else b"".join(req.body)
        req.body = []
        addr = self._quic._network_paths[0].addr if self._quic._network_paths else None
        client = (str(addr[0]), int(addr[1])) if addr else None
        ex = Exchange(method, path or "/", headers, body, query=query or None,
                      client=client, protocol="h3")
        ex.keep_alive = not self.listener.draining
        if stream_id in self.early_streams and not self._accept_early(stream_id, ex):
            return
        task = req.task = self._loop.create_task(self._serve(stream_id, ex))
        task.add_done_callback(lambda t: self._done(stream_id, t))

    def _accept_early(self, stream_id: int, ex: Exchange) -> bool:
        """A request that came (at least partly) in 0-RTT: accept it as ``early_data``
        says, or answer 425 so that the client sends it again after the handshake
        (RFC 8470 §5.2) — it never reaches the pipeline, let alone a provider."""
        if self.early_ok is None:
            mode = self.listener.early_data
            self.early_ok = mode == "on" or (
                mode == "safe" and self.ticket is not None
                and self.listener.tickets.claim_early_data(self.ticket))
        counter = self.listener.early_data_total
        if self.early_ok:
            counter.inc(("accepted",))
            return True
        counter.inc(("refused",))
        route = self.listener.s.gateway._routes.get(ex.path)
        if route is not None:
            ex.api = route[3]  # the error in the front door's format
        resp = error_response(ex, RequestError(
            "request sent in TLS early data (0-RTT), which could be a replay: send it "
            "again now that the handshake is complete", status=425,
            type="invalid_request_error", code="too_early"))
        self.requests.pop(stream_id, None)
        self.early_streams.discard(stream_id)
        self._send(stream_id, ex, resp)
        return False

    async def _serve(self, stream_id: int, ex: Exchange) -> None:
        gateway = self.listener.s.gateway  # per request: a reload swaps it
        try:
            resp = await gateway.handle(ex)
            if resp.streaming:
                await self._send_stream(stream_id, ex, resp)  # type: ignore[arg-type]
            else:
                self._send(stream_id, ex, resp)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            ex.disconnected = True
            if not ex.status or ex.status < 400:
                ex.status = 499
        finally:
            gateway.finish(ex)

    def _done(self, stream_id: int, task: asyncio.Task[None]) -> None:
        self.requests.pop(stream_id, None)
        self.writers.pop(stream_id, None)
        self.early_streams.discard(stream_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("HTTP/3 request on stream %d failed", stream_id,
                      exc_info=task.exception())
            self._reset(stream_id, ErrorCode.H3_INTERNAL_ERROR)
        if self.goaway_id is not None and not self.requests:
            self.close(ErrorCode.H3_NO_ERROR)  # drained

    def _abandon(self, stream_id: int) -> None:
        """The client reset its request or stopped reading the response: stop answering
        (and the upstream call), as for a closed HTTP/1.1 connection."""
        req = self.requests.get(stream_id)
        if req is None:
            return
        if req.task is not None:
            req.task.cancel()
        else:
            req.disarm()
            del self.requests[stream_id]  # was still arriving: nothing started

    def _refuse(self, stream_id: int, status: int, message: str, code: str) -> None:
        """Answer a request the gateway never sees (too large), then stop reading it."""
        body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                       "param": None, "code": code}})
        req = self.requests.pop(stream_id, None)
        if req is not None:
            req.disarm()
        assert self.h3 is not None
        self.h3.send_headers(stream_id, [
            (b":status", b"%d" % status), (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", new_request_id().encode()), (b"x-hapax-provider", b"hapax"),
            (b"date", self.listener.date()), (b"server", b"hapax")])
        self.h3.send_data(stream_id, body, end_stream=True)
        # The response is complete; the rest of the request is not wanted (RFC 9114 §4.1).
        self._stop_reading(stream_id, ErrorCode.H3_NO_ERROR)
        self._flush()

    def _head(self, ex: Exchange, status: int,
              headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        out = [(b":status", b"%d" % status)]
        for name, value in headers:
            name = name.lower()
            if name not in _CONNECTION_HEADERS:
                out.append((name, value))
        for name, value in ex.response_headers:
            out.append((name.lower(), value))
        target = ex.target
        out += [(b"x-request-id", header_safe_id(ex.request_id).encode("latin-1")),
                (b"x-hapax-provider", target.provider.encode() if target is not None
                 else b"hapax"),
                (b"date", self.listener.date()), (b"server", b"hapax")]
        return out

    def _send(self, stream_id: int, ex: Exchange, resp: Response) -> None:
        assert self.h3 is not None
        body = b"" if ex.method == "HEAD" else resp.body
        head = self._head(ex, resp.status, resp.headers)
        head.append((b"content-length", b"%d" % len(resp.body)))
        self.h3.send_headers(stream_id, head, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self._flush()

    async def _send_stream(self, stream_id: int, ex: Exchange, resp: StreamResponse) -> None:
        h3 = self.h3
        assert h3 is not None
        events = resp.events
        first = True
        try:
            async for batch in events:
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                if not data:
                    continue
                if first:
                    h3.send_headers(stream_id, self._head(ex, resp.status, resp.headers))
                    first = False
                h3.send_data(stream_id, data, end_stream=False)
                self._flush()
                if self._queued(stream_id) > HIGH_WATER:
                    await self._drain(stream_id)
            if first:
                h3.send_headers(stream_id, self._head(ex, resp.status, resp.headers))
            h3.send_data(stream_id, b"", end_stream=True)
            self._flush()
        finally:
            await resp.release()

    def _queued(self, stream_id: int) -> int:
        """Bytes of the stream's response sent or waiting but not yet acknowledged."""
        stream = self._quic._streams.get(stream_id)
        return 0 if stream is None else len(stream.sender._buffer)

    async def _drain(self, stream_id: int) -> None:
        """Wait until the client has acknowledged all but :data:`LOW_WATER` bytes of the
        stream: a reader stalled for ``limits.send_timeout`` loses the stream."""
        waiter = self.writers[stream_id] = self._loop.create_future()
        timeout = self.listener.s.limits.send_timeout
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            log.info("HTTP/3 client %s stopped reading stream %d for %.0fs; resetting it",
                     self._quic._network_paths[0].addr if self._quic._network_paths else "?",
                     stream_id, timeout)
            self._reset(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            raise asyncio.CancelledError from None
        finally:
            self.writers.pop(stream_id, None)
        if self.closed:
            raise asyncio.CancelledError

    def _reset(self, stream_id: int, code: int) -> None:
        """Abort a request stream both ways."""
        self.listener.stream_resets_total.inc(("gateway",))
        self._quic.reset_stream(stream_id, code)
        self._stop_reading(stream_id, code)
        self._flush()

    def _stop_reading(self, stream_id: int, code: int) -> None:
        try:
            self._quic.stop_stream(stream_id, code)
        except ValueError:
            pass  # the stream is already gone

    def _flush(self) -> None:
        """Send what is queued once this turn of the loop is over: writes of many streams
        in one turn share datagrams."""
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._flush_handle = None
        if not self.closed:
            self.transmit()

    # -- connection lifecycle ---------------------------------------------------------------

    def goaway(self) -> None:
        """Tell the client to open no more requests here (GOAWAY with the first stream id
        not accepted); close now if nothing is in flight."""
        if self.closed or self.goaway_id is not None:
            return
        self.goaway_id = self.last_stream + 4
        h3 = self.h3
        if h3 is not None and h3._local_control_stream_id is not None:
            self._quic.send_stream_data(h3._local_control_stream_id, encode_frame(
                FrameType.GOAWAY, encode_uint_var(self.goaway_id)))
        if not self.requests:
            self.close(ErrorCode.H3_NO_ERROR)
        else:
            self._flush()

    def close(self, error_code: int = ErrorCode.H3_NO_ERROR, reason_phrase: str = "") -> None:
        if not self.closed:
            super().close(error_code=error_code, reason_phrase=reason_phrase)

    def abort(self) -> None:
        """Drain deadline: abandon the requests still running and close."""
        for req in list(self.requests.values()):
            if req.task is not None:
                req.task.cancel()
        self.close(ErrorCode.H3_NO_ERROR, "server shutting down")

    def _terminated(self) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        # aioquic's server has forgotten this connection (its handler ran just before
        # this event reached us), but its callbacks still name this protocol (partials
        # on it; our ticket fetcher on the QuicConnection and its TLS context): cycles
        # that only a full garbage collection would free, every ~2M requests in a
        # worker.  Unlink them so this protocol goes by reference counting.
        self._connection_id_issued_handler = self._connection_id_retired_handler = _ignore
        self._connection_terminated_handler = _ignore
        quic = self._quic
        quic._session_ticket_fetcher = quic._session_ticket_handler = None
        tls = getattr(quic, "tls", None)
        if tls is not None:
            tls.get_session_ticket_cb = tls.new_session_ticket_cb = None
        # aioquic's QuicConnection is a cycle of its own (its frame-handler table and
        # TLS callbacks are its bound methods), with its buffers and keys: collect once
        # every _COLLECT_EVERY ended connections, so that at most that many wait.  A full
        # collection takes ~1 ms in a worker (gc.freeze() after start-up); a handshake
        # alone costs more than that in aioquic.
        listener = self.listener
        listener.ended += 1
        if listener.ended >= _COLLECT_EVERY:
            listener.ended = 0
            self._loop.call_soon(gc.collect)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for waiter in self.writers.values():
            if not waiter.done():
                waiter.set_result(None)
        for req in list(self.requests.values()):
            req.disarm()
            if req.task is not None:
                req.task.cancel()
        self.requests.clear()
