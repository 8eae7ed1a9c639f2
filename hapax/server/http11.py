"""HTTP/1.1 listener: bytes in (parsed by httptools), Exchange out, response bytes back.

State is grouped by lifetime: :class:`ListenerState` (one per listening socket),
:class:`HTTP11Protocol` (one per connection) and the request being parsed (a few
attributes reset at each message).  Requests on one connection are answered in order
(pipelining); the gateway work happens in :meth:`Gateway.handle`, shared with HTTP/3.

Flow control: reading pauses when ``max_pipeline`` requests are queued; writing a
stream awaits the transport's drain (``send_timeout`` caps how long a client may stall).
Timers: ``header_timeout`` (head must arrive), ``body_timeout`` (gap while a body
arrives), ``keepalive`` (idle between requests) — one timer handle per connection,
re-armed lazily.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools
import orjson

from hapax._core.http1 import (
    BODY_FRAMED,
    BODY_TOO_LARGE,
    EXPECT_CONTINUE,
    RequestHead,
    chunk,
    response_head,
    status_line,
)
from hapax.pipeline.exchange import Exchange, header_safe_id, new_request_id
from hapax.types import FinalBatch

if TYPE_CHECKING:
    from hapax.pipeline.gateway import Gateway
    from hapax.types import Response, StreamResponse

__all__ = ["HTTP11Protocol", "ListenerState", "status_line"]

log = logging.getLogger("hapax.server")

_IDLE, _HEAD, _BODY, _BUSY = 0, 1, 2, 3
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"


class ListenerState:
    """What every connection of one listener shares.

    ``gateway`` is read by each request as it starts, so a configuration reload
    (:meth:`use`) reaches keep-alive connections too, while a request already running
    keeps the gateway it started with, to the end of its stream.
    """

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway = gateway
        self.loop = loop
        self.limits = gateway.config.server.limits
        self.connections: set[HTTP11Protocol] = set()
        self.draining = False
        #: ``alt-svc`` header line advertising HTTP/3 (empty while it is off): set by the
        #: server once the UDP listener is up (docs/how-to/http3.md).
        self.alt_svc = b""
        self._date_sec = -1
        self._date = b""

    def use(self, gateway: Gateway) -> None:
        """Answer new requests with ``gateway`` (and give its ``server.limits`` to new
        connections)."""
        self.gateway = gateway
        self.limits = gateway.config.server.limits

    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._date_sec:
            self._date_sec = now
            self._date = b"date: " + time.strftime(
                "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode() + b"\r\nserver: hapax\r\n"
        return self._date


class _StopParsing(Exception):
    """Raised from a parser callback to stop parsing a request already refused."""


class _ParseFailure:
    """Queued in place of a request that could not be parsed: answered in turn, then the
    connection closes."""

    __slots__ = ("status", "message", "code")

    def __init__(self, status: int, message: str, code: str) -> None:
        self.status, self.message, self.code = status, message, code


class _ContinueOwed:
    """Queued in place of a request that asked for ``100 Continue`` while earlier ones
    were being answered: the 100 goes out when its turn comes, before its response."""

    __slots__ = ("exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange


class HTTP11Protocol(asyncio.Protocol):
    __slots__ = (
        "s", "loop", "limits", "transport", "parser", "queue", "task", "phase",
        "timer", "deadline", "last_read", "read_paused", "write_paused", "drain_waiter",
        "closed", "client", "waiter", "head", "on_url", "on_header", "_head_size", "_body",
        "_body_size", "_keep_alive", "_failed", "_expect", "_completed_in_read", "_answered",
    )

    def __init__(self, state: ListenerState) -> None:
        self.s = state
        self.loop = state.loop
        self.limits = state.limits
        self.transport: Any = None
        # The request head is collected by the core: httptools calls its on_url and
        # on_header directly (it looks the callbacks up on the object it is given), so a
        # header costs no Python frame here (benchmarks/test_bench_core_http1.py).
        head = self.head = RequestHead()
        self.on_url = head.on_url
        self.on_header = head.on_header
        self.parser: Any = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange | _ContinueOwed | _ParseFailure] = deque()
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.phase = _IDLE
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.last_read = 0.0
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.client: tuple[str, int] | None = None
        self._failed = False
        self._completed_in_read = False
        # The response in progress is complete on the wire (a stream's terminator is
        # out) and only the upstream's end is being read: a client that leaves now does
        # not cancel that (the connection then goes back to the pool, and the request
        # counts as answered, not 499).
        self._answered = False
        self._reset_message()

    def _reset_message(self) -> None:
        self.head.reset()
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._keep_alive = True
        self._expect = False

    # -- connection lifecycle -------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.s.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else None
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        task = self.task
        if task is not None and not task.done() and self._answered:
            # The client has its whole answer; the upstream's end is still being read.
            # Counted until then, so that a shutdown waits for it.
            task.add_done_callback(self._forget)
        else:
            self.s.connections.discard(self)
        self._disarm()
        # The parser holds this protocol's callbacks, so the two form a reference cycle
        # that only the cyclic garbage collector would free — and with the worker's
        # thresholds a full collection comes every ~2M requests: until then every closed
        # connection's objects and buffers would stay in memory.  Break it now.
        self.parser = None
        if task is not None and not task.done() and not self._answered:
            task.cancel()  # the client left: stop its request (and the upstream call)
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self.s.connections.discard(self)

    def eof_received(self) -> bool:
        # End of input means the client is gone: HTTP clients do not half-close to wait
        # for an answer, and one that closes mid-request has given up (an SDK timeout, a
        # cancelled call).  As nginx does, abandon its requests — connection_lost cancels
        # the task, which closes the upstream call at once instead of letting the provider
        # generate (and bill) an answer nobody reads.
        return False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return  # answering an unusable request (or lingering before close): discard
        if self.phase == _BODY:
            self.last_read = self.loop.time()
        self._completed_in_read = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The upgrade request is complete and queued (one with a body was refused in
            # on_headers_complete): answer it in HTTP/1.1, ignoring Upgrade as RFC 9110
            # §7.8 allows, and parse what follows it with a fresh parser.
            self.parser = httptools.HttpRequestParser(self)
            rest = data[exc.args[0]:]
            if rest:
                self.data_received(rest)
            return
        except httptools.HttpParserError as exc:
            # A callback that already failed the request stopped the parser on purpose.
            if not self._failed:
                self._fail(400, f"malformed HTTP request: {_reason(exc)}", "bad_http_request")
            return
        if self.phase == _HEAD:
            # httptools buffers an incomplete head itself: bound it here.  A head that
            # began in this read (-1) after an earlier pipelined request in the same read
            # is measured by what the parser saw of it, since the earlier request is not
            # part of it (so the bound is max_header plus one read); otherwise the whole
            # read is head.
            if self._head_size < 0:
                self._head_size = (self.head.size or 1) if self._completed_in_read \
                    else len(data)
            else:
                self._head_size += len(data)
            if self._head_size > self.limits.max_header:
                self._fail(431, f"request head larger than {self.limits.max_header} bytes",
                           "header_too_large")

    def on_message_begin(self) -> None:
        self._reset_message()
        self._head_size = -1  # began in the read being parsed: see data_received
        self.phase = _HEAD
        self._arm(self.limits.header_timeout)

    # on_url and on_header: the RequestHead's own (see __init__).

    def on_headers_complete(self) -> None:
        limits = self.limits
        if self.head.size > limits.max_header:
            self._fail(431, f"request head larger than {limits.max_header} bytes",
                       "header_too_large")
            raise _StopParsing
        self._keep_alive = self.parser.should_keep_alive()
        self.phase = _BODY
        self._head_size = 0
        flags = self.head.scan(limits.max_body)
        if flags & BODY_TOO_LARGE:
            self._fail(413, f"request body larger than {limits.max_body} bytes",
                       "request_too_large")
            raise _StopParsing
        if flags & BODY_FRAMED and self.parser.should_upgrade():
            # httptools skips the body of an upgrade request: refuse what it cannot read.
            self._fail(400, "protocol upgrades are not supported", "upgrade_not_supported")
            raise _StopParsing
        self.last_read = self.loop.time()
        if flags & EXPECT_CONTINUE:
            if self._busy():
                # The 100 is owed once the responses before it are out (see _serve); no
                # body timeout until then: the client is waiting for us.
                self._expect = True
                self._disarm()
                return
            self.transport.write(_CONTINUE)
        self._arm(limits.body_timeout)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body:
            self._fail(413, f"request body larger than {self.limits.max_body} bytes",
                       "request_too_large")
            raise _StopParsing
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._completed_in_read = True
        if self._failed:
            return
        headers, path, query = self.head.finish()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        version = self.parser.get_http_version()
        ex = Exchange(self.parser.get_method().decode("ascii", "replace"), path, headers, body,
                      query=query, client=self.client,
                      protocol="http/1.1" if version == "1.1" else f"http/{version}")
        ex.keep_alive = self._keep_alive and not self.s.draining
        self._body = []
        gateway = self.s.gateway
        if (gateway.in_flight >= gateway.max_concurrent or gateway.delay.late) \
                and not self._busy() and self._refused(ex, gateway):
            # Overloaded: answered 503 now, in this read — no task, no hook — so that a
            # refusal costs as little as it can and the accepted requests keep the CPU
            # (hapax.pipeline.loopdelay).  Pipelined behind others, it waits its turn
            # and Gateway.handle refuses it the same way.
            return
        self.phase = _BUSY
        # The timer stays armed while busy (it does nothing then): the keep-alive wait
        # that follows re-uses it, saving a timer handle per request (docs/performance.md).
        self.queue.append(_ContinueOwed(ex) if self._expect else ex)
        self._kick()
        if len(self.queue) >= self.limits.max_pipeline and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _refused(self, ex: Exchange, gateway: Gateway) -> bool:
        """Answer ``ex`` 503 if the gateway refuses it (see Gateway.refuse)."""
        resp = gateway.refuse(ex)
        if resp is None:
            return False
        gateway.in_flight += 1  # as handle() would: finish() takes it back
        try:
            self._write(ex, resp)
        finally:
            gateway.finish(ex)
        if not ex.keep_alive or self.s.draining:
            self._close()
        else:
            self.phase = _IDLE
            self._arm(self.limits.keepalive)
        return True

    def _fail(self, status: int, message: str, code: str) -> None:
        """The byte stream is unusable: answer (in turn) and close."""
        self._failed = True
        self._disarm()
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self.queue.append(_ParseFailure(status, message, code))
        self._kick()

    def _kick(self) -> None:
        """Work is queued: start the connection's task, or wake it if it waits."""
        if self.task is None:
            self.task = self.loop.create_task(self._serve())
        else:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _busy(self) -> bool:
        """A request is queued or being answered."""
        return bool(self.queue) or (self.task is not None and self.waiter is None)

    # -- timers -----------------------------------------------------------------------

    def _arm(self, timeout: float) -> None:
        now = self.last_read = self.loop.time()
        self.deadline = timeout
        timer = self.timer
        # Re-arm lazily: a pending handle that fires no later than needed re-checks
        # the deadline itself; only an earlier deadline needs a new handle.
        if timer is None or timer.when() > now + timeout + 0.001:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_later(timeout, self._on_timer)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed or self._failed:
            return
        elapsed = self.loop.time() - self.last_read
        remaining = self.deadline - elapsed
        if self.phase == _BUSY or remaining > 0.001:
            if self.phase != _BUSY:
                self.timer = self.loop.call_later(max(remaining, 0.001), self._on_timer)
            return
        if self.phase == _IDLE:
            self._close()  # keep-alive expired
        elif self.phase == _HEAD:
            if self._head_size == 0 and not self.head.url:
                self._close()  # connected but never sent anything
            else:
                self._fail(408, "timed out waiting for the request head", "request_timeout")
        else:
            self._fail(408, "timed out waiting for the request body", "request_timeout")

    # -- answering ----------------------------------------------------------------------

    async def _serve(self) -> None:
        """Answer queued requests in order.  One task per connection for its whole life:
        between requests it waits on a future, cheaper than a new task per request."""
        try:
            while not self.closed:
                if not self.queue:
                    if self._failed:
                        return
                    if self.phase == _BUSY:
                        self.phase = _IDLE
                        self._arm(self.limits.keepalive)
                    elif self.phase == _BODY and self._expect:
                        # A pipelined request still owed its 100: its turn has come, and
                        # the body timeout starts now (the client was waiting for us).
                        self._expect = False
                        self.transport.write(_CONTINUE)
                        self._arm(self.limits.body_timeout)
                    self.waiter = self.loop.create_future()
                    try:
                        await self.waiter
                    finally:
                        self.waiter = None
                    continue
                item = self.queue.popleft()
                if self.read_paused and not self._failed and len(self.queue) < \
                        self.limits.max_pipeline // 2:
                    self.read_paused = False
                    self.transport.resume_reading()
                if isinstance(item, _ParseFailure):
                    self._write_failure(item)
                    return
                if isinstance(item, _ContinueOwed):
                    ex = item.exchange
                    self.transport.write(_CONTINUE)
                else:
                    ex = item
                gateway = self.s.gateway  # per request: a reload swaps it (ListenerState)
                self._answered = False
                try:
                    resp = await gateway.handle(ex)
                    if resp.streaming:
                        await self._write_stream(ex, resp)  # type: ignore[arg-type]
                    else:
                        self._write(ex, resp)  # type: ignore[arg-type]
                except asyncio.CancelledError:
                    ex.disconnected = True
                    if not ex.status or ex.status < 400:
                        ex.status = 499
                    return
                finally:
                    self._answered = False
                    gateway.finish(ex)
                    del gateway  # an idle connection must not keep a reloaded-away gateway
                if not ex.keep_alive or self.s.draining:
                    self._close()
                    return
        finally:
            self.task = None

    def _head(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]],
              framing: bytes, body: bytes = b"") -> bytes:
        """The response head (then ``body``): provider headers, the gateway's, ids,
        date, alt-svc, framing, connection."""
        s = self.s
        if not ex.keep_alive or s.draining:
            connection = _CLOSE
        elif ex.protocol == "http/1.0":
            # An HTTP/1.0 client keeps the connection only if the response says so.
            connection = _KEEP_ALIVE
        else:
            connection = b""
        target = ex.target
        return response_head(status, headers, ex.response_headers,
                             header_safe_id(ex.request_id),
                             target.provider if target is not None else None,
                             s.date_header(), s.alt_svc, framing, connection, body)

    def _write(self, ex: Exchange, resp: Response) -> None:
        body = resp.body
        self.transport.write(self._head(ex, resp.status, resp.headers,
                                        b"content-length: %d\r\n" % len(body),
                                        b"" if ex.method == "HEAD" else body))

    async def _write_stream(self, ex: Exchange, resp: StreamResponse) -> None:
        transport = self.transport
        events = resp.events
        first = True
        # HTTP/1.0 knows no chunked coding (RFC 9112 §6.1): the close ends the body.
        chunked = ex.protocol != "http/1.0"
        if not chunked:
            ex.keep_alive = False
        framing = b"transfer-encoding: chunked\r\n" if chunked else b""
        ended = False  # the chunked terminator is out
        try:
            async for batch in events:
                if ended:
                    continue  # nothing follows a FinalBatch (defensive: never written)
                # The head goes out with the first event: one write, one packet.
                out = chunk(batch, self._head(ex, resp.status, resp.headers, framing)
                            if first else b"", chunked)
                if type(batch) is FinalBatch and chunked:
                    # The last events: the terminator goes in the same write.
                    out = (out or (self._head(ex, resp.status, resp.headers, framing)
                                   if first else b"")) + b"0\r\n\r\n"
                    ended = self._answered = True
                elif not out:
                    continue  # no bytes (an empty chunk would end the body)
                first = False
                transport.write(out)
                if self.write_paused:
                    await self._drain()
            if first:
                transport.write(self._head(ex, resp.status, resp.headers, framing))
            if chunked and not ended:
                transport.write(b"0\r\n\r\n")
        finally:
            await resp.release()

    async def _drain(self) -> None:
        waiter = self.drain_waiter = self.loop.create_future()
        try:
            await asyncio.wait_for(waiter, self.limits.send_timeout)
        except TimeoutError:
            log.info("client %s stopped reading for %.0fs; disconnecting", self.client,
                     self.limits.send_timeout)
            self.transport.abort()
            raise asyncio.CancelledError from None
        finally:
            self.drain_waiter = None
        if self.closed:
            raise asyncio.CancelledError

    def _write_failure(self, failure: _ParseFailure) -> None:
        body = orjson.dumps({"error": {"message": failure.message, "type":
                                       "invalid_request_error", "param": None,
                                       "code": failure.code}})
        head = (status_line(failure.status) + b"content-type: application/json\r\n"
                b"content-length: %d\r\nx-request-id: %s\r\nx-hapax-provider: hapax\r\n"
                % (len(body), new_request_id().encode()) + self.s.date_header() +
                self.s.alt_svc + b"connection: close\r\n\r\n")
        self.transport.write(head + body)
        self._linger()

    def _linger(self) -> None:
        """Close without losing the error response: closing a socket that still has
        unread request bytes sends a reset, which can destroy the response before the
        client reads it.  Stop writing, discard input for a moment, then close."""
        if self.closed:
            return
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
        except OSError:
            self._close()
            return
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.loop.call_later(2.0, self._close)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._disarm()
            self.transport.close()

    # -- shutdown ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Drain: close now if idle, else after the response in progress."""
        if not self._busy():
            self._close()


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:120]
