"""The access log: one line per request, written after the response has gone out.

Lines are buffered and written once per event-loop iteration (one ``write`` for many
requests), never on the request's own path.  Fields: time, request_id, key (the key's
*name*), method, path, model (alias), provider, upstream_model, status, stream,
latency_ms, gateway_ms, upstream_ms, tokens_in, tokens_out, protocol, error.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import orjson


class _Sink:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1  # opened on first write: validating a config opens nothing
        self.own = False
        self.buf: list[bytes] = []
        #: The loop a flush is scheduled on (the sink is shared by the gateways of the
        #: process: after a reload, or in tests, they may run on different loops).
        self.scheduled: asyncio.AbstractEventLoop | None = None

    def _open(self) -> None:
        if self.path == "-":
            self.fd = sys.stdout.fileno()
        elif self.path == "stderr":
            self.fd = sys.stderr.fileno()
        else:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self.own = True

    def write(self, line: bytes) -> None:
        self.buf.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self.scheduled is loop:
            return
        self.scheduled = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = None
        if not self.buf:
            return
        lines, self.buf = self.buf, []
        data = memoryview(b"".join(lines))
        try:
            if self.fd < 0:
                self._open()
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # a closed stdout must not take the gateway down

    def close(self) -> None:
        self.flush()
        if self.own and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


#: One sink per file for the whole process: a configuration reload builds a new gateway
#: (and a new instance of this plugin) while the old one finishes its requests; both
#: write through the same descriptor and buffer, and no descriptor is left behind.
#: Standard output and error are looked up afresh by each sink (nothing to leak).
_SINKS: dict[str, _Sink] = {}


def _sink(path: str) -> _Sink:
    if path in ("-", "stderr"):
        return _Sink(path)
    sink = _SINKS.get(path)
    if sink is None:
        sink = _SINKS[path] = _Sink(path)
    return sink


_last_sec = -1
_last_text = ""


def _iso(t: float) -> str:
    global _last_sec, _last_text
    sec = int(t)
    if sec != _last_sec:
        _last_sec, _last_text = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_last_text}.{int((t - sec) * 1000):03d}Z"


def record(ex: Any) -> dict[str, Any]:
    """The access-log fields of one exchange."""
    usage = ex.usage or {}
    target = ex.target
    total = (ex.finished - ex.started) if ex.finished else 0.0
    return {
        "time": _iso(time.time()),
        "request_id": ex.request_id,
        "key": ex.principal.name if ex.principal is not None else None,
        "method": ex.method,
        "path": ex.path,
        "model": ex.alias,
        "provider": target.provider if target else None,
        "upstream_model": target.model if target else None,
        "status": ex.status,
        "stream": ex.stream,
        "latency_ms": round(total * 1000, 3),
        "gateway_ms": round(ex.gateway_time * 1000, 3),
        "upstream_ms": round(ex.upstream_time * 1000, 3),
        "tokens_in": usage.get("prompt_tokens"),
        "tokens_out": usage.get("completion_tokens"),
        "protocol": ex.protocol,
        "error": ex.error,
    }


class Plugin:
    def __init__(self) -> None:
        self.sink: _Sink | None = None
        self.format = "off"

    def hapax_configure(self, config: Any, gateway: Any) -> None:
        cfg = config.server.access_log
        self.format = cfg.format
        if self.sink is not None:
            self.sink.flush()
        self.sink = None if cfg.format == "off" else _sink(cfg.path)
        if self.sink is None:
            # No log: leave the after-response stage (one call less per request).
            gateway.pm.unregister(self)

    def hapax_after_response(self, exchange: Any) -> None:
        if self.sink is None:
            return
        rec = record(exchange)
        if self.format == "json":
            self.sink.write(orjson.dumps(rec) + b"\n")
        else:
            self.sink.write(
                f'{rec["time"]} {rec["request_id"]} {rec["key"] or "-"} {rec["method"]} '
                f'{rec["path"]} {rec["status"]} model={rec["model"] or "-"} '
                f'provider={rec["provider"] or "-"} {rec["latency_ms"]}ms '
                f'(gateway {rec["gateway_ms"]}ms) tokens={rec["tokens_in"] or 0}/'
                f'{rec["tokens_out"] or 0}{" stream" if rec["stream"] else ""}\n'.encode())
