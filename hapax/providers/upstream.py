"""The upstream HTTP/1.1 client: pooled keep-alive connections parsed with httptools.

Why not aiohttp's client: on the gateway's hot path it costs several times more CPU
per request (see docs/performance.md, measured with benchmarks/test_bench_upstream.py).

One :class:`UpstreamPool` per provider.  ``await pool.request(head, body)`` returns an
:class:`UpstreamResponse` as soon as the status line and headers are in; the body is
read whole (``await resp.read()``) or relayed piece by piece (``async for piece in
resp``).  A response whose consumer stops reading pauses the upstream socket (bounded
buffering), and ``resp.close()`` before the end aborts the upstream request at once.

Timeouts: ``connect`` covers TCP and TLS; ``first_byte`` bounds the wait from sending
the request to the response head; ``idle`` is the longest silence allowed once the head
has arrived (a stalled stream or body).  A request written on a reused
connection that the provider had already closed (keep-alive race: the connection
ends without a single response byte) is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import httptools

from hapax.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

__all__ = ["UpstreamPool", "UpstreamResponse"]

_HIGH_WATER = 256 * 1024  # pause the upstream socket above this much unread body
_LOW_WATER = 64 * 1024


class _Stale(Exception):
    """A reused connection ended before any response byte: safe to retry once."""


class UpstreamResponse:
    """Status, headers and body of one upstream response, as they arrive."""

    __slots__ = ("status", "headers", "keep_alive", "_conn", "_chunks", "_buffered", "_done",
                 "_error", "_waiter", "_head", "_got_bytes", "_whole", "_until_eof")

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self._conn: _Connection | None = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._got_bytes = False
        self._whole = False  # read() wants the whole body: no back-pressure
        self._until_eof = False  # no length, not chunked: the body ends with the connection

    # -- fed by the connection ----------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and self._conn is not None and not self._whole:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._error = exc
        self._done = True
        self._conn = None
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # mark retrieved: the caller may be gone
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- consumer API -------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done and not self._chunks

    async def read(self) -> bytes:
        """The whole body (raises UpstreamError / UpstreamTimeout on failure).

        The body is gathered in memory whatever its size, so the socket is never paused
        for it: a body past the high-water mark (paused while nobody read) resumes."""
        self._whole = True
        conn = self._conn
        if conn is not None and conn._paused:
            conn.resume()
        while not self._done:
            await self._wait()
        if self._error is not None:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            await self._wait()
        if len(self._chunks) == 1:
            data = self._chunks.popleft()
        else:
            data = b"".join(self._chunks)
            self._chunks.clear()
        self._buffered = 0
        if self._conn is not None:
            self._conn.resume()
        return data

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future() if self._conn else None
        if self._waiter is None:
            return
        try:
            await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Abandon the response: abort the upstream request if it is still running."""
        conn = self._conn
        if conn is not None and not self._done:
            self._fail(UpstreamError("response abandoned"))
            conn.abort()
        self._chunks.clear()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the provider."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.requests = 0  # responses completed on this connection
        self.idle_since = 0.0
        self.closed = False
        self._paused = False
        self._sent = 0.0  # when the current request was written
        self._last = 0.0  # when the provider last sent a byte
        self._timer: asyncio.TimerHandle | None = None
        self._header_name = b""

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._last = self.loop.time()
        resp = self.response
        if resp is None:
            # Bytes while idle: the provider broke HTTP framing.  Drop the connection.
            self.abort()
            return
        resp._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"provider {self.pool.name!r} sent a malformed HTTP "
                                     f"response ({exc})"))
            self.abort()

    def eof_received(self) -> bool | None:
        resp = self.response
        if resp is not None and resp._until_eof and not resp._done:
            # A body with neither Content-Length nor chunked coding ends when the
            # provider closes (RFC 9112 §6.3; an HTTP/1.0 server, say): this is its end.
            # httptools has no call for it (llhttp_finish), so it is completed here
            # (keep_alive is already off: _until_eof is only set then).
            self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        resp = self.response
        if resp is not None and not resp._done:
            if not resp._got_bytes and self.requests > 0:
                resp._fail(_Stale())
            else:
                resp._fail(UpstreamError(f"provider {self.pool.name!r} closed the connection "
                                         f"before the response was complete"))
        self.response = None
        # The parser holds this protocol's callbacks: drop it, so that the closed
        # connection is freed now by reference counting instead of waiting, with its
        # buffers, for a full garbage collection (see HTTP11Protocol.connection_lost).
        self.parser = None
        self.pool._lost(self)

    def pause_writing(self) -> None:  # request bodies are small; nothing to pace
        pass

    # -- httptools callbacks ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        resp = self.response
        if resp is None:
            return
        status = resp.status = self.parser.get_status_code()
        resp.keep_alive = self.parser.should_keep_alive()
        if not resp.keep_alive and status >= 200 and status not in (204, 304):
            names = {n for n, _ in resp.headers}
            resp._until_eof = b"content-length" not in names and \
                b"transfer-encoding" not in names
        if not resp._head.done():
            resp._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is None:
            return
        if resp.status < 200:  # 1xx interim response: the real one follows
            resp.headers.clear()
            resp.status = 0
            return
        self.response = None
        self.requests += 1
        # The timer stays armed: it finds no response (or a later deadline) when it
        # fires, so the next request on this connection need not start a new one.
        resp._finish()
        self.pool._release(self, resp.keep_alive)

    # -- control ------------------------------------------------------------------

    def send(self, data: bytes, resp: UpstreamResponse) -> None:
        self.response = resp
        self._sent = self._last = self.loop.time()
        if self._timer is None:  # a pending one fires no later than this request's deadline
            self._arm_timer(self._sent + self.pool.tick)
        assert self.transport is not None
        self.transport.write(data)

    def _arm_timer(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        # One timer per connection, re-armed lazily: cheaper than resetting it per read
        # or per request (a timer handle costs ~3% of a proxied request's CPU).  Which
        # deadline holds depends on whether the response head has arrived; the timer never
        # sleeps longer than the shorter timeout (``pool.tick``), so when the head arrives
        # and the idle deadline takes over, a pending timer is never late for it.
        self._timer = None
        resp = self.response
        if resp is None:
            return
        now = self.loop.time()
        pool = self.pool
        if self._paused:  # our consumer is not reading: that silence is not the provider's
            self._last = now
        if resp.status:
            due = self._last + pool.idle_timeout
        else:
            due = self._sent + pool.first_byte_timeout
        if now < due:
            self._arm_timer(min(due, now + pool.tick))
            return
        if resp.status:
            exc = UpstreamTimeout(f"provider {pool.name!r} went silent for "
                                  f"{pool.idle_timeout:g}s in the middle of its response "
                                  f"(timeouts.idle)")
        else:
            exc = UpstreamTimeout(f"provider {pool.name!r} did not answer within "
                                  f"{pool.first_byte_timeout:g}s (timeouts.first_byte)")
        self._fail(exc)
        self.abort()

    def _fail(self, exc: BaseException) -> None:
        resp = self.response
        if resp is not None:
            resp._fail(exc)

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last = self.loop.time()
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one ``host:port`` (TLS optional), at most
    ``max_connections`` at once; callers beyond that wait in FIFO order.

    ``connect_timeout``, ``first_byte_timeout`` and ``idle_timeout`` are the provider's
    ``timeouts`` (see the module docstring); ``keepalive_timeout`` (``pool.idle_timeout``
    in the configuration) is how long an unused connection may be reused."""

    def __init__(self, name: str, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 max_connections: int, connect_timeout: float, first_byte_timeout: float,
                 idle_timeout: float, keepalive_timeout: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        #: The longest the per-connection timer sleeps (see _Connection._on_timer).
        self.tick = min(first_byte_timeout, idle_timeout)
        self.keepalive_timeout = keepalive_timeout
        self.loop = loop or asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(self, data: bytes) -> UpstreamResponse:
        """Send one request (head and body in ``data``) and wait for the response head."""
        for _ in range(3):
            # An idle connection is taken without a coroutine (the usual case).
            conn = self._take_idle() if self._idle else None
            if conn is None:
                conn = await self._acquire()
            resp = UpstreamResponse(conn)
            conn.send(data, resp)
            try:
                await resp._head
            except _Stale:
                continue
            except asyncio.CancelledError:
                resp.close()
                raise
            return resp
        raise UpstreamError(f"provider {self.name!r} closed the connection three times before "
                            f"answering")

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection still fit for reuse, if any; those
        closed or idle too long are dropped on the way."""
        now = self.loop.time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_timeout:
                return conn
            conn.abort()  # _lost() will decrement the count
        return None

    async def _acquire(self) -> _Connection:
        conn = self._take_idle()
        if conn is not None:
            return conn
        if self._open < self.max_connections:
            return await self._connect()
        fut: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(fut)
        try:
            waited: _Connection | None = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                self._release(fut.result(), True)  # type: ignore[arg-type]
            elif fut.done() and not fut.cancelled():
                self._wake_one()  # pass the right to connect on
            raise
        if waited is None:
            return await self._connect()
        return waited

    async def _connect(self) -> _Connection:
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None),
                self.connect_timeout)
        except TimeoutError:
            self._open -= 1
            self._wake_one()
            raise UpstreamTimeout(f"connecting to provider {self.name!r} ({self.host}:"
                                  f"{self.port}) took longer than {self.connect_timeout:g}s"
                                  ) from None
        except ssl.SSLError as exc:
            self._open -= 1
            self._wake_one()
            raise UpstreamUnavailable(f"TLS handshake with provider {self.name!r} "
                                      f"({self.host}:{self.port}) failed: {exc.reason or exc}"
                                      ) from None
        except OSError as exc:
            self._open -= 1
            self._wake_one()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise UpstreamUnavailable(f"cannot connect to provider {self.name!r} ({self.host}:"
                                      f"{self.port}): {reason}") from None
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        return conn  # type: ignore[return-value]

    def _release(self, conn: _Connection, reusable: bool) -> None:
        if not reusable or conn.closed or self._closed:
            conn.abort()  # _lost() decrements and wakes a waiter
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        self._open -= 1
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # None: you may open a new connection
                return

    async def close(self) -> None:
        """Close idle connections; busy ones close when their response ends."""
        self._closed = True
        for conn in list(self._idle):
            conn.abort()
        self._idle.clear()
