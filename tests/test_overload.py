"""Shedding load: a gateway past its capacity answers ``503 overloaded`` at once — past
``server.limits.max_concurrent`` requests in flight, or while its event loop runs later
than ``server.limits.shed_delay`` (hapax.pipeline.loopdelay) — in the error format of
the front door, counted and audited like any answer, on a connection that stays usable.

Real gateways on 127.0.0.1, raw HTTP/1.1 clients, the built-in mock provider.
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from helpers import metric, wait_for
from http_raw import RawConn, RawResponse, chat_body, request_bytes

from hapax.testing import GatewayThread

GatewayFactory = Callable[..., GatewayThread]


def config(*, max_concurrent: int = 10000, shed_delay: Any = "50ms",
           **mock: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"},
                   "limits": {"max_concurrent": max_concurrent, "shed_delay": shed_delay,
                              "keepalive": "30s"}},
        "providers": {"mock": {"kind": "mock", **mock}},
        "models": {"m": {"targets": [{"provider": "mock"}]}},
    }


def chat(prompt: str, **headers: str) -> bytes:
    return request_bytes(body=chat_body(prompt), headers=list(headers.items()))


def messages(prompt: str) -> bytes:
    return request_bytes(path="/v1/messages", body=orjson.dumps({
        "model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}),
        headers=[("anthropic-version", "2023-06-01")])


def overloaded(resp: RawResponse) -> dict[str, Any]:
    """The OpenAI-format 503 of a shed request; its error object."""
    assert resp.status == 503
    assert resp.header("retry-after") == "1"
    assert resp.header("content-type") == "application/json"
    assert resp.header("x-hapax-provider") == "hapax"
    assert resp.header("x-request-id")
    err = resp.json()["error"]
    assert err["code"] == "overloaded" and err["type"] == "server_error"
    assert "capacity" in err["message"]
    return err


def content(resp: RawResponse) -> str:
    assert resp.status == 200, resp.body
    text = resp.json()["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    return text


class Recorder:
    """An after-response plugin: every exchange the gateway finished."""

    def __init__(self) -> None:
        self.seen: queue.Queue[Any] = queue.Queue()

    def hapax_after_response(self, exchange: Any) -> None:
        self.seen.put(exchange)


class Stall:
    """A request hook that holds the event loop (a CPU-bound plugin, a stalled worker)
    for the requests that ask for it with ``x-stall: SECONDS``."""

    def hapax_request_received(self, exchange: Any) -> None:
        seconds = exchange.headers.get("x-stall")
        if seconds:
            time.sleep(float(seconds))


# -- max_concurrent -------------------------------------------------------------------------


@contextlib.contextmanager
def full(gw: GatewayThread) -> Iterator[RawConn]:
    """A gateway with max_concurrent 1 held full by a slow request on its own
    connection; yields another connection, then checks the slow request's answer."""
    with RawConn(gw.port) as slow, RawConn(gw.port) as c:
        slow.send(chat("slow"))
        assert wait_for(lambda: gw.gateway.in_flight == 1)
        yield c
        assert content(slow.read_response()) == "Mock answer to: slow"


def test_refused_at_once_on_a_connection_that_stays_usable(
        hapax_gateway: GatewayFactory) -> None:
    """Past max_concurrent, every new request is answered 503 without waiting for the
    slow one in flight; the refused connection stays open and serves the next request
    once there is room; the refusal is counted and audited."""
    recorder = Recorder()
    gw = hapax_gateway(config(max_concurrent=1, latency="600ms"),
                       plugins=[("recorder", recorder)])
    with RawConn(gw.port) as slow, RawConn(gw.port) as c:
        slow.send(chat("slow"))
        assert wait_for(lambda: gw.gateway.in_flight == 1)
        for i in range(3):  # one connection, one request after another, all refused
            c.send(chat(f"refused {i}"))
            overloaded(c.read_response())
        # ... at once, not held behind the slow request, which is still in flight; the
        # gateway's own endpoints still answer.
        assert gw.gateway.in_flight == 1
        c.send(request_bytes("GET", "/metrics"))
        assert c.read_response("GET").status == 200
        c.send(request_bytes("GET", "/healthz"))
        assert c.read_response("GET").status == 200
        assert content(slow.read_response()) == "Mock answer to: slow"
        assert wait_for(lambda: gw.gateway.in_flight == 0)
        c.send(chat("room again"))  # the same connection
        assert content(c.read_response()) == "Mock answer to: room again"
    seen = [recorder.seen.get(timeout=5) for _ in range(7)]
    assert sorted((ex.route, ex.status) for ex in seen) == [
        ("chat", 200), ("chat", 200), ("chat", 503), ("chat", 503), ("chat", 503),
        ("healthz", 200), ("metrics", 200)]
    assert metric(gw, "hapax_requests_total", route="chat", model="", provider="",
                  status="503") == 3
    assert gw.gateway.in_flight == 0


def test_pipelined_requests_are_answered_in_order(hapax_gateway: GatewayFactory) -> None:
    """Requests pipelined on a connection that has nothing before them are refused at
    once, one after the other; one pipelined behind a request being answered waits
    for its turn, and the gateway refuses it then if it is still overloaded."""
    gw = hapax_gateway(config(max_concurrent=1, latency="600ms"))
    with full(gw) as c:
        c.send(chat("a") + chat("b"))
        overloaded(c.read_response())
        overloaded(c.read_response())
    # (1ms: the provider call lets the loop turn once after the stall, so that the
    # probe's timer runs — late — before the second request's turn.)
    gw = hapax_gateway(config(latency="1ms"), plugins=[("stall", Stall())])
    with RawConn(gw.port) as c:
        # The first stalls the loop 0.3 s (and is answered); the loop is late when the
        # second's turn comes.
        c.send(chat("stall", **{"x-stall": "0.3"}) + chat("behind"))
        assert content(c.read_response()) == "Mock answer to: stall"
        overloaded(c.read_response())
        assert wait_for(lambda: not gw.gateway.delay.late)
        c.send(chat("later"))
        assert content(c.read_response()) == "Mock answer to: later"


def test_anthropic_front_door_gets_anthropic_format(hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config(max_concurrent=1, latency="600ms"))
    with full(gw) as c:
        c.send(messages("refused"))
        resp = c.read_response()
        assert resp.status == 503 and resp.header("retry-after") == "1"
        body = resp.json()
        assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
        assert resp.header("request-id") == resp.header("x-request-id")


def test_connection_close_is_honoured(hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config(max_concurrent=1, latency="600ms"))
    with full(gw) as c:
        c.send(chat("bye", connection="close"))
        resp = c.read_response()
        overloaded(resp)
        assert resp.header("connection") == "close"
        assert c.closed_by_server()


# -- shed_delay -------------------------------------------------------------------------------


def stalled_then(gw: GatewayThread, stall: float) -> tuple[RawResponse, RawResponse]:
    """Stall the loop for ``stall`` seconds with one request while another request
    arrives; their responses (stalled one, other one)."""
    with RawConn(gw.port) as a, RawConn(gw.port) as b:
        a.send(chat("stall", **{"x-stall": str(stall)}))
        assert wait_for(lambda: gw.gateway.in_flight == 1)
        time.sleep(stall / 4)  # the loop is stalled now: b's request waits in its socket
        b.send(chat("during the stall"))
        return a.read_response(), b.read_response()


def test_a_late_loop_sheds_new_requests_then_recovers(hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config(shed_delay="50ms"), plugins=[("stall", Stall())])
    content(still_warm(gw))
    stalled, during = stalled_then(gw, 0.4)
    # The request already accepted finishes; the one that queued behind the stall is
    # refused: the loop was 0.4 s late when it was read.
    assert content(stalled) == "Mock answer to: stall"
    overloaded(during)
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as scrape:
        exposed = scrape.read().decode()
    assert re.search(r"^hapax_loop_delay_seconds \d", exposed, re.M)  # the gauge is there
    # The next samples find the loop on time: new requests are served again.
    assert wait_for(lambda: not gw.gateway.delay.late, timeout=5)
    content(still_warm(gw))
    # With no traffic, the probe stops (an idle worker is never woken by it).
    assert wait_for(lambda: not gw.gateway.delay.active, timeout=5)


def test_shed_delay_off_queues_instead(hapax_gateway: GatewayFactory) -> None:
    gw = hapax_gateway(config(shed_delay="off"), plugins=[("stall", Stall())])
    stalled, during = stalled_then(gw, 0.4)
    assert content(stalled) == "Mock answer to: stall"
    assert content(during) == "Mock answer to: during the stall"
    assert not gw.gateway.delay.active


def test_many_clients_during_a_stall(hapax_gateway: GatewayFactory) -> None:
    """Clients arriving during a stall are each answered — 200 or 503, nothing else —
    on the connection they came on, and each is served again once the loop is on time
    (how many 503s come first depends on the machine's speed: a refusal takes
    microseconds, and the loop counts as late until its next probe, up to 10 ms here)."""
    gw = hapax_gateway(config(shed_delay="20ms"), plugins=[("stall", Stall())])
    statuses: list[int] = []
    served: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with RawConn(gw.port) as c:
            deadline = time.monotonic() + 10
            j = 0
            while time.monotonic() < deadline:
                c.send(chat(f"{i}.{j}"))
                resp = c.read_response()
                assert resp.status in (200, 503), resp.body
                with lock:
                    statuses.append(resp.status)
                if resp.status == 200:
                    assert content(resp) == f"Mock answer to: {i}.{j}"
                    with lock:
                        served.append(i)
                    return
                overloaded(resp)
                time.sleep(0.002 * j)  # as a client backing off would, up to ~0.1 s
                j = min(j + 1, 50)

    with RawConn(gw.port) as a:
        a.send(chat("stall", **{"x-stall": "0.3"}))
        assert wait_for(lambda: gw.gateway.in_flight == 1)  # the loop is stalled now
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        content(a.read_response())
    # Clients were refused while the loop was late, and every one was then served on
    # the connection it came on.
    assert sorted(served) == list(range(8))
    assert 503 in statuses and statuses.count(200) == 8
    content(still_warm(gw))


def still_warm(gw: GatewayThread) -> RawResponse:
    with RawConn(gw.port) as c:
        c.send(chat("fine"))
        return c.read_response()


@pytest.mark.parametrize("value, expected", [("5ms", 0.005), ("off", 0.0), (False, 0.0),
                                             (0, 0.0), ("1s", 1.0)])
def test_shed_delay_setting(value: Any, expected: float) -> None:
    from hapax.config import from_dict

    assert from_dict({"server": {"limits": {"shed_delay": value}}}
                     ).server.limits.shed_delay == expected
    assert from_dict({}).server.limits.shed_delay == 0.5


def test_shed_delay_error_names_the_key() -> None:
    from hapax.config import from_dict
    from hapax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"server\.limits\.shed_delay: expected a duration"):
        from_dict({"server": {"limits": {"shed_delay": "soon"}}})
