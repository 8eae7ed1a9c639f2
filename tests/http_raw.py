"""A tiny raw-socket HTTP/1.1 client for testing the listener with bytes no real client
would send: malformed heads, split writes, pipelining, half-sent bodies.

Every socket has a timeout, so a server that hangs fails the test instead of hanging it.
Responses are parsed strictly (status line, header syntax, chunk framing): a listener
that writes bad framing fails here too.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["RawConn", "RawResponse", "chat_body", "chunked", "request_bytes"]

TIMEOUT = 5.0


def chat_body(prompt: str = "hello", model: str = "m", **extra: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                         **extra})


def request_bytes(method: str = "POST", path: str = "/v1/chat/completions",
                  body: bytes | None = None, *,
                  headers: list[tuple[str, str]] | None = None, version: str = "HTTP/1.1",
                  content_length: bool = True) -> bytes:
    """One request, framed with Content-Length unless told otherwise."""
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body is not None and content_length:
        lines.append(f"Content-Length: {len(body)}")
        if not any(n.lower() == "content-type" for n, _ in headers or []):
            lines.append("Content-Type: application/json")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"") if content_length else head


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in chunked transfer coding, ``size`` bytes a chunk, with the last chunk."""
    out = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
           for i in range(0, len(body), size)]
    return b"".join(out) + b"0\r\n\r\n"


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: list[bytes] | None = None  # the chunks as framed, if chunked
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class RawConn:
    """One TCP connection to the server; reads are buffered and strict."""

    port: int
    timeout: float = TIMEOUT
    sock: socket.socket = field(init=False)
    buf: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- reading ------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed by the server; unparsed: {self.buf[:200]!r}")
        self.buf += data

    def _read_until(self, sep: bytes) -> bytes:
        while True:
            idx = self.buf.find(sep)
            if idx >= 0:
                out, self.buf = self.buf[:idx], self.buf[idx + len(sep):]
                return out
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> RawResponse:
        raw = self._read_until(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        version, status, reason = lines[0].decode("latin-1").split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
        headers = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep and name and name == name.strip(), f"bad header line {line!r}"
            headers.append((name.lower(), value.strip()))
        return RawResponse(version, int(status), reason, headers, raw_head=raw)

    def read_chunk(self) -> bytes:
        """One chunk of a chunked body; ``b""`` is the last chunk (trailers consumed)."""
        size_line = self._read_until(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert self._read_until(b"\r\n") == b"", "trailers are not expected"
            return b""
        data = self._read_exact(size)
        assert self._read_exact(2) == b"\r\n", "chunk data must end with CRLF"
        return data

    def read_response(self, method: str = "POST", *, interim: bool = False) -> RawResponse:
        """The next response.  1xx responses are returned only with ``interim=True``
        (and are otherwise an error: the test did not expect one)."""
        resp = self.read_head()
        if 100 <= resp.status < 200:
            assert interim, f"unexpected interim response {resp.status}"
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if method == "HEAD" or resp.status in (204, 304):
            return resp
        if te is not None:
            assert te == "chunked" and cl is None, resp.headers
            resp.chunks = []
            while chunk := self.read_chunk():
                resp.chunks.append(chunk)
            resp.body = b"".join(resp.chunks)
        elif cl is not None:
            resp.body = self._read_exact(int(cl))
        else:
            resp.body = self.read_to_eof()
        return resp

    def read_to_eof(self) -> bytes:
        out = self.buf
        self.buf = b""
        while data := self.sock.recv(65536):
            out += data
        return out

    def closed_by_server(self) -> bool:
        """Wait (up to the socket timeout) for the server to close: True on EOF or reset,
        False if unread bytes arrive instead.  Raises TimeoutError if nothing happens."""
        if self.buf:
            return False
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True
