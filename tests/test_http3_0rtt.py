"""HTTP/3 session resumption and 0-RTT (``server.tls.early_data``, docs/how-to/http3.md):
a real gateway with a fake OpenAI provider behind it, and aioquic's client over UDP on
127.0.0.1 — a first connection collects a session ticket, the next ones resume with it
and send their request in 0-RTT packets, before the handshake completes.

The fake provider counts what reached it: a request refused with 425 must not."""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, QuicEvent
from aioquic.tls import CipherSuite, SessionTicket
from h3client import H3Client, H3Reply
from helpers import GatewayFactory, wait_for

from hapax.server.http3 import TicketStore
from hapax.server.tls import DevCerts, make_dev_certs
from hapax.testing import GatewayThread, config_for
from hapax.testing.fake_provider import FakeProvider

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])


def start(hapax_gateway: GatewayFactory, fake: FakeProvider, certs: DevCerts,
          **tls: Any) -> GatewayThread:
    return hapax_gateway(config_for(fake.base_url, server={"tls": {
        "cert": str(certs.cert), "key": str(certs.key), **tls}}))


def early_data(gw: GatewayThread) -> dict[str, float]:
    counter = gw.server.h3.early_data_total
    return {result: counter.get((result,)) for result in ("accepted", "refused")}


class Client(H3Client):
    """The tests' HTTP/3 client (tests/h3client.py), also recording every datagram it
    sends (to replay a first flight) and the outcome of its handshake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshake: HandshakeCompleted | None = None
        self.sent: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        sendto = transport.sendto

        def record(data: bytes, addr: Any = None) -> None:
            self.sent.append(bytes(data))
            sendto(data, addr)

        transport.sendto = record
        super().connection_made(transport)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        super().quic_event_received(event)

    async def chat(self, path: str = CHAT, body: bytes = BODY) -> H3Reply:
        """POST ``body``: sent at once, so in 0-RTT if the handshake is not done yet."""
        return await self.request("POST", path, body)


@asynccontextmanager
async def client(gw: GatewayThread, certs: DevCerts, tickets: list[SessionTicket], *,
                 ticket: SessionTicket | None = None) -> AsyncIterator[Client]:
    """A client trusting ``certs``'s CA that collects the server's tickets in
    ``tickets``; with ``ticket``, it resumes and does not wait for the handshake, so
    what it sends first goes out as early data (if the ticket allows it)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost",
                               session_ticket=ticket)
    config.load_verify_locations(cafile=str(certs.ca))
    async with connect("127.0.0.1", gw.port, configuration=config, create_protocol=Client,
                       session_ticket_handler=tickets.append,
                       wait_connected=ticket is None) as conn:
        yield conn  # type: ignore[misc]


async def first_ticket(gw: GatewayThread, certs: DevCerts) -> SessionTicket:
    """A full handshake and one request; returns the ticket the server issued."""
    tickets: list[SessionTicket] = []
    async with client(gw, certs, tickets) as conn:
        assert (await conn.chat()).status == 200
        await asyncio.wait_for(conn.ping(), 5)  # the ticket follows the handshake
    assert len(tickets) == 1
    return tickets[0]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- safe (the default) -----------------------------------------------------------------------


def test_safe_accepts_a_tickets_early_data_once_and_refuses_a_second_use_with_425(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    gw = start(hapax_gateway, fake_provider, certs)  # early_data: safe is the default

    async def go() -> tuple[H3Reply, Client, H3Reply, int, H3Reply, Client]:
        ticket = await first_ticket(gw, certs)
        assert ticket.max_early_data_size is not None  # the ticket offers 0-RTT
        async with client(gw, certs, [], ticket=ticket) as early:
            accepted = await early.chat()
        async with client(gw, certs, [], ticket=ticket) as again:
            refused = await again.chat()
            upstream = len(fake_provider.requests)
            retried = await again.chat()  # after the handshake: not early data
        return accepted, early, refused, upstream, retried, again

    accepted, early, refused, upstream, retried, again = run(go())
    assert early.handshake is not None and early.handshake.session_resumed
    assert early.handshake.early_data_accepted
    assert accepted.status == 200
    assert accepted.json["choices"][0]["message"]["content"] == "Fake answer to: hi"
    # The first connection's request and the 0-RTT one; the refused one never got there.
    assert upstream == 2

    assert again.handshake is not None and again.handshake.session_resumed
    assert refused.status == 425
    assert refused.json["error"]["code"] == "too_early"
    assert refused.json["error"]["type"] == "invalid_request_error"
    assert "early data" in refused.json["error"]["message"]
    assert refused.headers["x-request-id"]
    assert retried.status == 200
    assert len(fake_provider.requests) == 3
    assert early_data(gw) == {"accepted": 1, "refused": 1}
    counter = gw.server.h3.handshakes_total
    assert counter.get(("new",)) == 1 and counter.get(("resumed",)) == 2


def test_safe_refuses_a_replayed_first_flight(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    """The attack itself: the client's first datagrams (ClientHello and the 0-RTT
    request) captured and sent again, from another address, once the client is gone."""
    gw = start(hapax_gateway, fake_provider, certs)

    async def capture() -> tuple[H3Reply, list[bytes]]:
        ticket = await first_ticket(gw, certs)
        async with client(gw, certs, [], ticket=ticket) as early:
            stream_id = early._quic.get_next_available_stream_id()
            task = asyncio.ensure_future(early.chat())
            await asyncio.sleep(0)  # chat() has sent its flight (before any answer)
            flight = list(early.sent)
            reply = await task
        assert stream_id == 0
        return reply, flight

    reply, flight = run(capture())
    assert reply.status == 200
    assert len(fake_provider.requests) == 2
    before = early_data(gw)

    def refused() -> bool:
        return early_data(gw)["refused"] >= before["refused"] + 1

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.1", 0))
        # Until the server has forgotten the closed connection, datagrams with its
        # connection ids go to it (and are dropped): send the flight again until the
        # server takes it for a new connection.  Copies reaching that one are dropped.
        for _ in range(20):
            for datagram in flight:
                attacker.sendto(datagram, ("127.0.0.1", gw.port))
            if wait_for(refused, timeout=0.5):
                break
    assert refused()
    assert len(fake_provider.requests) == 2  # the replay never reached the provider
    assert early_data(gw)["accepted"] == before["accepted"]


# -- on and off -------------------------------------------------------------------------------


def test_on_accepts_early_data_every_time_even_replayed(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    gw = start(hapax_gateway, fake_provider, certs, early_data="on")

    async def go() -> list[H3Reply]:
        ticket = await first_ticket(gw, certs)
        replies = []
        for _ in range(2):
            async with client(gw, certs, [], ticket=ticket) as early:
                replies.append(await early.chat())
                assert early.handshake is not None and early.handshake.early_data_accepted
        return replies

    assert [r.status for r in run(go())] == [200, 200]
    assert len(fake_provider.requests) == 3
    assert early_data(gw) == {"accepted": 2, "refused": 0}


def test_off_issues_tickets_for_resumption_without_early_data(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    gw = start(hapax_gateway, fake_provider, certs, early_data="off")

    async def go() -> tuple[SessionTicket, H3Reply, Client]:
        ticket = await first_ticket(gw, certs)
        async with client(gw, certs, [], ticket=ticket) as resumed:
            # Sent at once, but the ticket offers no early data: it waits for the handshake.
            return ticket, await resumed.chat(), resumed

    ticket, reply, resumed = run(go())
    assert ticket.max_early_data_size is None
    assert resumed.handshake is not None and resumed.handshake.session_resumed
    assert not resumed.handshake.early_data_accepted
    assert reply.status == 200
    assert len(fake_provider.requests) == 2
    assert early_data(gw) == {"accepted": 0, "refused": 0}


def test_off_refuses_early_data_a_client_sends_anyway(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    """A client that claims early data on a ticket that did not offer it: TLS lets the
    data in, the listener answers 425 (in the Anthropic format on /v1/messages)."""
    gw = start(hapax_gateway, fake_provider, certs, early_data="off")

    async def go() -> tuple[H3Reply, H3Reply, Client]:
        ticket = await first_ticket(gw, certs)
        ticket.max_early_data_size = 0xFFFFFFFF  # what aioquic's client expects
        async with client(gw, certs, [], ticket=ticket) as early:
            refused = await early.chat("/v1/messages", orjson.dumps({
                "model": "test-model", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}))
            retried = await early.chat()
        return refused, retried, early

    refused, retried, early = run(go())
    assert early.handshake is not None and early.handshake.early_data_accepted
    assert refused.status == 425
    assert refused.json["type"] == "error"  # Anthropic's envelope
    assert "early data" in refused.json["error"]["message"]
    assert retried.status == 200
    assert len(fake_provider.requests) == 2
    assert early_data(gw) == {"accepted": 0, "refused": 1}


def test_session_tickets_0_issues_none(hapax_gateway: GatewayFactory,
                                       fake_provider: FakeProvider, certs: DevCerts) -> None:
    gw = start(hapax_gateway, fake_provider, certs, session_tickets=0)

    async def go() -> list[SessionTicket]:
        tickets: list[SessionTicket] = []
        async with client(gw, certs, tickets) as conn:
            assert (await conn.chat()).status == 200
            await asyncio.wait_for(conn.ping(), 5)
        return tickets

    assert run(go()) == []


def test_a_reload_forgets_every_ticket(hapax_gateway: GatewayFactory,
                                       fake_provider: FakeProvider, certs: DevCerts) -> None:
    gw = start(hapax_gateway, fake_provider, certs)

    async def go(ticket: SessionTicket | None) -> tuple[SessionTicket, Client]:
        tickets: list[SessionTicket] = []
        async with client(gw, certs, tickets, ticket=ticket) as conn:
            assert (await conn.chat()).status == 200
            await asyncio.wait_for(conn.ping(), 5)
        return tickets[-1], conn

    ticket, _ = run(go(None))
    gw.call(gw.server.reload(gw.config))
    _, conn = run(go(ticket))
    assert conn.handshake is not None and not conn.handshake.session_resumed
    assert early_data(gw) == {"accepted": 0, "refused": 0}  # the request waited


# -- the store ----------------------------------------------------------------------------------


def make_ticket(identity: bytes) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return SessionTicket(age_add=0, cipher_suite=CipherSuite.AES_128_GCM_SHA256,
                         not_valid_after=now, not_valid_before=now, resumption_secret=b"s",
                         server_name="localhost", ticket=identity)


def test_ticket_store_is_bounded_least_recently_used_first() -> None:
    store = TicketStore(3, 3600)
    for i in range(3):
        store.add(make_ticket(b"t%d" % i))
    assert store.get(b"t0") is not None  # used: now the most recent
    store.add(make_ticket(b"t3"))
    store.add(make_ticket(b"t4"))
    assert len(store) == 3
    assert store.get(b"t1") is None and store.get(b"t2") is None  # evicted
    assert [store.get(b"t%d" % i) is not None for i in (0, 3, 4)] == [True, True, True]
    assert not store.claim_early_data(b"t1")  # forgotten: never accepted


def test_ticket_store_lifetime_and_single_early_use() -> None:
    store = TicketStore(10, 3600)
    store.add(make_ticket(b"fresh"))
    ticket = store.get(b"fresh")
    assert ticket is not None
    assert ticket.not_valid_after - ticket.not_valid_before == datetime.timedelta(hours=1)
    assert store.claim_early_data(b"fresh")
    assert not store.claim_early_data(b"fresh")  # a replay
    assert store.get(b"fresh") is ticket  # resumption itself goes on (1-RTT)

    expired = TicketStore(10, 0)
    expired.add(make_ticket(b"old"))
    assert wait_for(lambda: expired.get(b"old") is None, timeout=2)
    assert len(expired) == 0
