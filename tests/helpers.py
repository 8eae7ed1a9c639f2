"""Helpers shared by the test files that run a real gateway in front of fake providers:
configurations, SDK clients closed after each test, raw HTTP, ports and polling.

Fixtures built on them (``second``, ``primary``, ``secondary`` and the autouse fixture
that closes the clients) live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import openai
import orjson

from hapax.testing import GatewayThread, config_for

#: What the ``hapax_gateway`` fixture is: ``hapax_gateway(config) -> GatewayThread``.
GatewayFactory = Callable[..., GatewayThread]
#: The messages of the default request.
HELLO: Any = [{"role": "user", "content": "hello"}]

_Client = TypeVar("_Client", bound=Any)
_clients: list[Any] = []


# -- configurations ----------------------------------------------------------------------------

def two_targets(primary: str, secondary: str, *, timeouts: dict[str, str] | None = None,
                provider: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    """Model ``m`` (dedup off, the other ``model`` settings as given): the OpenAI-compatible
    provider ``primary`` at ``primary`` first, with these ``timeouts`` and the extra
    ``provider`` settings, then provider ``secondary`` at ``secondary``."""
    first: dict[str, Any] = {"kind": "openai", "base_url": primary, **(provider or {})}
    if timeouts:
        first["timeouts"] = timeouts
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"}},
        "providers": {"primary": first,
                      "secondary": {"kind": "openai", "base_url": secondary}},
        "models": {"m": {"targets": [{"provider": "primary"}, {"provider": "secondary"}],
                         "dedup": "off", **model}},
    }


def with_provider(base_url: str, **provider: Any) -> dict[str, Any]:
    """Model ``m`` on provider ``fake`` (at ``base_url``) with extra ``provider`` settings."""
    return config_for(base_url, models=["m"], providers={
        "fake": {"kind": "openai", "base_url": base_url, **provider}})


# -- clients -----------------------------------------------------------------------------------

def track(sdk_client: _Client) -> _Client:
    """``sdk_client``, closed at the end of the test (an unclosed SDK client leaks its
    sockets into later tests)."""
    _clients.append(sdk_client)
    return sdk_client


def close_clients() -> None:
    """Close every client :func:`track` was given (the autouse fixture in conftest.py)."""
    while _clients:
        _clients.pop().close()


def client(gw: GatewayThread, api_key: str = "sk-test", **headers: str) -> openai.OpenAI:
    """The openai SDK on ``gw`` (its own retries off), sending ``headers`` on every
    request; closed at the end of the test."""
    return track(openai.OpenAI(base_url=gw.base_url, api_key=api_key, max_retries=0,
                               default_headers=headers or None))


def chat(gw: GatewayThread, model: str = "m") -> Any:
    """One chat completion for ``model``, raw (``.headers``, ``.parse()``...)."""
    return client(gw).chat.completions.with_raw_response.create(model=model, messages=HELLO)


def post(gw: GatewayThread, body: bytes | dict[str, Any], path: str = "/v1/chat/completions",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw POST (``body`` as is if bytes, else as JSON; no SDK re-serialising it):
    status, headers (lower-cased names), the whole body (a stream's bytes)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", path, body=data,
                     headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- ports, servers, polling -------------------------------------------------------------------

def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RawServer:
    """A tiny TCP server on 127.0.0.1 that runs ``handler(sock, n)`` for the n-th
    connection (from 0), for providers that do what no real HTTP server library would.
    ``closing`` is set by :meth:`close`: a handler may wait on it to hold its connection."""

    def __init__(self, handler: Callable[[socket.socket, int], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            n, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._run, args=(conn, n), daemon=True).start()

    def _run(self, conn: socket.socket, n: int) -> None:
        with conn:
            try:
                self.handler(conn, n)
            except OSError:
                pass

    def close(self) -> None:
        """Stop accepting (the accept loop ends) and release the handlers waiting on
        ``closing``."""
        self.closing.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(5)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.01)
    return condition()


def metric(gw: GatewayThread, name: str, **labels: str) -> float:
    """The value of one series on the gateway's ``/metrics``, read over HTTP (0 when
    the series is absent); ``labels`` must name all of the series' labels."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        family, _, rest = series.partition("{")
        if family == name and set(filter(None, rest.rstrip("}").split(","))) == want:
            return float(value)
    return 0.0


def alive(cls: type) -> int:
    """Objects of exactly ``cls`` the cyclic garbage collector tracks — unreachable
    cycles it has not collected yet included, so a count that stays up with the
    collector off shows objects kept alive only by a reference cycle."""
    return sum(1 for o in gc.get_objects() if type(o) is cls)


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """A full collection, then the collector off (as rare as in a worker, whose
    thresholds make a full pass come every ~2M requests) until the block ends."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
