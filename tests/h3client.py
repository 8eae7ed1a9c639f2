"""An HTTP/3 client for the tests: aioquic's QUIC and H3 layers, driven as its examples
do, recording each reply (status, headers, body, DATA frames with their arrival times,
a server's stream reset) and what the server sent on its control stream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.events import (
    ConnectionTerminated,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)


@dataclass
class H3Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: (time.monotonic(), bytes) of each DATA frame, as it arrived.
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    #: The error code of a RESET_STREAM from the server, if it reset the stream.
    reset: int | None = None

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


#: The server's control stream: its first unidirectional stream (RFC 9000 §2.1).
SERVER_CONTROL_STREAM = 3


def goaway_of(control: bytes) -> int | None:
    """The stream id of the GOAWAY frame on a control stream's bytes (aioquic's client
    skips GOAWAY frames, so the test reads them itself)."""
    buf = Buffer(data=control)
    buf.pull_uint_var()  # the stream type
    goaway = None
    while not buf.eof():
        frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
        payload = buf.pull_bytes(length)
        if frame_type == FrameType.GOAWAY:
            goaway = Buffer(data=payload).pull_uint_var()
    return goaway


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.control = b""  # what the server sent on its control stream
        #: Streams whose data we "do not read": no flow-control credit beyond the first
        #: window, which is what a slow reader's QUIC stack grants.
        self.stalled: set[int] = set()
        grant = self._quic._write_stream_limits

        def withhold(**kwargs: Any) -> None:
            if kwargs["stream"].stream_id not in self.stalled:
                grant(**kwargs)

        self._quic._write_stream_limits = withhold  # type: ignore[method-assign]
        self.replies: dict[int, H3Reply] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.terminated: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            for done in self.done.values():
                done.set()
        elif isinstance(event, StreamDataReceived) and \
                event.stream_id == SERVER_CONTROL_STREAM:
            self.control += event.data
        elif isinstance(event, StreamReset) and event.stream_id in self.replies:
            self.replies[event.stream_id].reset = event.error_code
            self.done[event.stream_id].set()
        for h3_event in self.h3.handle_event(event):
            if not isinstance(h3_event, (HeadersReceived, DataReceived)):
                continue
            reply = self.replies.get(h3_event.stream_id)
            if reply is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                for name, value in h3_event.headers:
                    if name == b":status":
                        reply.status = int(value)
                    else:
                        reply.headers[name.decode()] = value.decode()
            elif h3_event.data:
                reply.chunks.append((time.monotonic(), h3_event.data))
                reply.body += h3_event.data
            if h3_event.stream_ended:
                self.done[h3_event.stream_id].set()

    def send(self, method: str, path: str, body: bytes = b"",
             headers: tuple[tuple[bytes, bytes], ...] = ()) -> int:
        """Send a request; returns its stream id (see :meth:`reply`)."""
        stream_id = self._quic.get_next_available_stream_id()
        self.replies[stream_id] = H3Reply()
        self.done[stream_id] = asyncio.Event()
        self.h3.send_headers(stream_id, [
            (b":method", method.encode()), (b":scheme", b"https"),
            (b":authority", b"127.0.0.1"), (b":path", path.encode()),
            (b"content-type", b"application/json"), *headers], end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return stream_id

    async def reply(self, stream_id: int, timeout: float = 15) -> H3Reply:
        await asyncio.wait_for(self.done[stream_id].wait(), timeout)
        return self.replies[stream_id]

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: tuple[tuple[bytes, bytes], ...] = ()) -> H3Reply:
        return await self.reply(self.send(method, path, body, headers))

    def cancel(self, stream_id: int) -> None:
        """Abandon a request: reset our side, ask the server to stop sending."""
        self._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        self._quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        self.transmit()
