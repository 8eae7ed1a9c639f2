"""HTTP/3 (QUIC) and HTTPS front doors (docs/how-to/http3.md): a real gateway with
``server.tls`` from ``hapax cert dev``, a fake OpenAI provider behind it, and real
clients on 127.0.0.1 — aioquic's HTTP/3 client over UDP, the openai SDK over TLS/TCP."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from aioquic.asyncio.client import connect
from aioquic.h3.connection import ErrorCode
from aioquic.quic.configuration import QuicConfiguration
from h3client import H3Client, H3Reply, goaway_of
from helpers import GatewayFactory, alive, collector_off, wait_for
from proc import HapaxProcess

from hapax.cli import main
from hapax.config import from_dict
from hapax.errors import ConfigError
from hapax.server.http3 import HIGH_WATER
from hapax.server.tls import DevCerts, make_dev_certs
from hapax.testing import GatewayThread, config_for
from hapax.testing.fake_provider import DONE, FakeProvider, Reply, chunk

CHAT = "/v1/chat/completions"


def chat_body(**extra: Any) -> bytes:
    return orjson.dumps({"model": "test-model",
                         "messages": [{"role": "user", "content": "hello"}], **extra})


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])


def tls_config(fake: FakeProvider, certs: DevCerts, **tls: Any) -> dict[str, Any]:
    return config_for(fake.base_url, server={"tls": {"cert": str(certs.cert),
                                                     "key": str(certs.key), **tls}})


# -- the HTTP/3 client (tests/h3client.py) -------------------------------------------------



def h3_client(gw: GatewayThread, certs: DevCerts,
              **quic: Any) -> AbstractAsyncContextManager[H3Client]:
    return h3_client_at(gw.port, certs, **quic)


@asynccontextmanager
async def h3_client_at(port: int, certs: DevCerts, **quic: Any) -> AsyncIterator[H3Client]:
    """A connected client trusting ``certs``'s CA (``quic``: QuicConfiguration fields)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], **quic)
    config.load_verify_locations(cafile=str(certs.ca))
    async with connect("127.0.0.1", port, configuration=config,
                       create_protocol=H3Client) as client:
        yield client  # type: ignore[misc]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- requests over HTTP/3 ---------------------------------------------------------------------


def test_chat_over_http3(hapax_gateway: GatewayFactory, fake_provider: FakeProvider,
                         certs: DevCerts) -> None:
    gw = hapax_gateway(tls_config(fake_provider, certs))

    async def go() -> H3Reply:
        async with h3_client(gw, certs) as client:
            return await client.request("POST", CHAT, chat_body(),
                                        ((b"x-request-id", b"abc-1"),))

    reply = run(go())
    assert reply.status == 200
    assert reply.json["choices"][0]["message"]["content"] == "Fake answer to: hello"
    assert reply.headers["x-request-id"] == "abc-1"
    assert reply.headers["x-hapax-provider"] == "fake"
    assert reply.headers["content-length"] == str(len(reply.body))
    assert len(fake_provider.requests) == 1
    assert fake_provider.requests[0].json["messages"][0]["content"] == "hello"


def test_streaming_chat_over_http3_is_relayed_event_by_event(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    fake_provider.queue(Reply(stream=True, chunk_delay=0.3))
    gw = hapax_gateway(tls_config(fake_provider, certs))

    async def go() -> H3Reply:
        async with h3_client(gw, certs) as client:
            return await client.request("POST", CHAT, chat_body(stream=True))

    reply = run(go())
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [e for e in reply.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    text = "".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])
    assert text.startswith("Fake answer")
    # Not buffered: the first events arrived while the provider was still generating.
    assert len(reply.chunks) > 1
    assert reply.chunks[-1][0] - reply.chunks[0][0] >= 0.3


def test_request_id_set_by_a_plugin_is_made_header_safe_over_http3(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    class SetId:
        def hapax_request_received(self, exchange: Any) -> None:
            exchange.request_id = "snow\u2603man\r\nx-injected: 1"

    gw = hapax_gateway(tls_config(fake_provider, certs), plugins=[("set_id", SetId())])

    async def go() -> H3Reply:
        async with h3_client(gw, certs) as client:
            return await client.request("POST", CHAT, chat_body())

    reply = run(go())
    assert reply.status == 200
    assert reply.headers["x-request-id"] == "snow?man??x-injected: 1"
    assert "x-injected" not in reply.headers


def test_errors_over_http3_use_the_openai_envelope(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    cfg = tls_config(fake_provider, certs)
    cfg["keys"] = [{"name": "app", "key": "sk-good", "models": "*"}]
    gw = hapax_gateway(cfg)

    async def go() -> tuple[H3Reply, H3Reply, H3Reply]:
        async with h3_client(gw, certs) as client:
            return (await client.request("POST", CHAT, chat_body()),
                    await client.request("POST", CHAT, chat_body(),
                                         ((b"authorization", b"Bearer sk-good"),)),
                    await client.request("GET", "/v1/nope",
                                         headers=((b"authorization", b"Bearer sk-good"),)))

    unauthorized, ok, missing = run(go())
    assert unauthorized.status == 401
    assert unauthorized.json["error"]["type"] == "authentication_error"
    assert unauthorized.json["error"]["code"] == "missing_api_key"
    assert ok.status == 200
    assert missing.status == 404
    assert set(missing.json["error"]) == {"message", "type", "param", "code"}
    assert len(fake_provider.requests) == 1


def test_request_body_over_the_limit_gets_413(hapax_gateway: GatewayFactory,
                                              fake_provider: FakeProvider,
                                              certs: DevCerts) -> None:
    cfg = tls_config(fake_provider, certs)
    cfg["server"]["limits"] = {"max_body": 1000}
    gw = hapax_gateway(cfg)

    async def go() -> tuple[H3Reply, H3Reply]:
        async with h3_client(gw, certs) as client:
            big = chat_body(user="x" * 5000)
            return (await client.request("POST", CHAT, big),
                    await client.request("POST", CHAT, chat_body()))

    too_large, fine = run(go())
    assert too_large.status == 413
    assert too_large.json["error"]["code"] == "request_too_large"
    assert fine.status == 200  # the connection is still usable
    assert len(fake_provider.requests) == 1


def test_a_request_body_that_stops_arriving_gets_408(hapax_gateway: GatewayFactory,
                                                     fake_provider: FakeProvider,
                                                     certs: DevCerts) -> None:
    cfg = tls_config(fake_provider, certs)
    cfg["server"]["limits"] = {"body_timeout": "300ms"}
    gw = hapax_gateway(cfg)

    async def go() -> H3Reply:
        async with h3_client(gw, certs) as client:
            sid = client._quic.get_next_available_stream_id()
            client.replies[sid], client.done[sid] = H3Reply(), asyncio.Event()
            client.h3.send_headers(sid, [
                (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"127.0.0.1"),
                (b":path", CHAT.encode())])
            client.h3.send_data(sid, chat_body()[:10], end_stream=False)  # and no more
            client.transmit()
            return await client.reply(sid, timeout=5)

    reply = run(go())
    assert reply.status == 408
    assert reply.json["error"]["code"] == "request_timeout"
    assert fake_provider.requests == []


def test_100_concurrent_streams_on_one_connection(hapax_gateway: GatewayFactory,
                                                  fake_provider: FakeProvider,
                                                  certs: DevCerts) -> None:
    fake_provider.default = Reply(delay=1.0)
    gw = hapax_gateway(tls_config(fake_provider, certs))

    async def go() -> tuple[list[H3Reply], int, list[str]]:
        async with h3_client(gw, certs) as client:
            limit = client._quic._remote_max_streams_bidi
            ids = [client.send("POST", CHAT, chat_body(stream=i % 2 == 0))
                   for i in range(100)]
            waiting = asyncio.gather(*(client.reply(i, 30) for i in ids))
            seen: list[str] = []
            while "hapax_http3_streams 100.0" not in seen and not waiting.done():
                seen = metrics(gw).splitlines()
                await asyncio.sleep(0.01)
            replies = await waiting
            return replies, limit, seen

    replies, limit, seen = run(go())
    # All 100 were in flight at once, on one connection (the fake answers after 1 s).
    assert "hapax_http3_streams 100.0" in seen
    assert "hapax_http3_connections 1.0" in seen
    assert [r.status for r in replies] == [200] * 100
    assert all(r.body.endswith(b"data: [DONE]\n\n") for r in replies[::2])
    assert all(r.json["object"] == "chat.completion" for r in replies[1::2])
    assert len(fake_provider.requests) == 100
    assert limit == 100  # server.tls.max_streams, advertised in the handshake


def test_max_streams_bounds_requests_in_flight(hapax_gateway: GatewayFactory,
                                               fake_provider: FakeProvider,
                                               certs: DevCerts) -> None:
    fake_provider.default = Reply(delay=0.5)
    gw = hapax_gateway(tls_config(fake_provider, certs, max_streams=4))

    async def go() -> list[H3Reply]:
        async with h3_client(gw, certs) as client:
            assert client._quic._remote_max_streams_bidi == 4
            # The client opens streams as credit allows: the fifth waits for one to end.
            return await asyncio.gather(*(client.request("POST", CHAT, chat_body())
                                          for _ in range(8)))

    replies = run(go())
    assert [r.status for r in replies] == [200] * 8
    arrivals = sorted(r.at for r in fake_provider.requests)
    assert len(arrivals) == 8
    # The fifth request only once a first answer (0.5 s at the fake) was complete.
    assert arrivals[4] - arrivals[0] >= 0.45


def test_a_cancelled_stream_is_abandoned_and_the_others_go_on(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    fake_provider.queue(Reply(stream=True, stall_after_events=1))
    gw = hapax_gateway(tls_config(fake_provider, certs))

    async def go() -> H3Reply:
        async with h3_client(gw, certs) as client:
            stalled = client.send("POST", CHAT, chat_body(stream=True))
            while not client.replies[stalled].chunks:
                await asyncio.sleep(0.02)
            client.cancel(stalled)
            return await client.request("POST", CHAT, chat_body())

    assert run(go()).status == 200
    # The abandoned request was ended on the gateway too, as a client disconnect (499).
    assert wait_for(lambda: 'status="499"' in metrics(gw))
    assert 'hapax_http3_stream_resets_total{by="client"} 1' in metrics(gw)


def test_a_stalled_reader_holds_bounded_memory_and_does_not_block_other_streams(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    # 2 MB of events: far more than the client's 64 KiB stream window.
    fake_provider.queue(Reply(events=[chunk("x" * 8000) for _ in range(250)] + [DONE]))
    cfg = tls_config(fake_provider, certs)
    cfg["server"]["limits"] = {"send_timeout": "1s"}
    gw = hapax_gateway(cfg)

    async def go() -> tuple[H3Reply, H3Reply, list[int]]:
        async with h3_client(gw, certs, max_stream_data=64 * 1024) as client:
            slow = client._quic.get_next_available_stream_id()
            client.stalled.add(slow)
            assert client.send("POST", CHAT, chat_body(stream=True)) == slow
            while len(client.replies[slow].body) < 60 * 1024:
                await asyncio.sleep(0.02)
            queued = []
            others = []
            for _ in range(3):  # meanwhile, other streams of the connection are answered
                others.append(await client.request("POST", CHAT, chat_body()))
                conn = next(iter(gw.server.h3.connections))
                queued.append(conn._queued(slow))
            return await client.reply(slow), others[-1], queued

    slow, other, queued = run(go())
    assert other.status == 200
    # The gateway stopped reading from the provider instead of buffering the 2 MB: what
    # it holds is HIGH_WATER plus one batch from upstream (which pauses its own socket
    # at 256 KiB) ...
    assert max(queued) <= HIGH_WATER + 512 * 1024
    assert len(slow.body) < 128 * 1024
    # ... and reset the stream once the reader had stalled for send_timeout.
    assert slow.reset == ErrorCode.H3_REQUEST_CANCELLED
    assert wait_for(lambda: 'status="499"' in metrics(gw))
    assert 'hapax_http3_stream_resets_total{by="gateway"} 1' in metrics(gw)


def test_connection_migration_keeps_the_connection_and_its_streams(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    fake_provider.queue(Reply(stream=True, chunk_delay=0.3))
    gw = hapax_gateway(tls_config(fake_provider, certs))

    async def go() -> tuple[H3Reply, H3Reply, int, int]:
        loop = asyncio.get_running_loop()
        conn: Any
        async with h3_client(gw, certs) as client:
            sid = client.send("POST", CHAT, chat_body(stream=True))
            while not client.replies[sid].chunks:
                await asyncio.sleep(0.02)
            before = client._transport.get_extra_info("sockname")[1]
            (conn,) = gw.server.h3.connections
            assert conn._quic._network_paths[0].addr[1] == before
            # The client's address changes (a new UDP socket: another port), mid-stream.
            # Like aioquic's connect(): a dual-stack socket (it sends to ::ffff:127.0.0.1).
            old = client._transport
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0, 0, 0))
            moved, _ = await loop.create_datagram_endpoint(lambda: client, sock=sock)
            old.close()
            after = moved.get_extra_info("sockname")[1]
            try:
                # The server learns the new address from the client's next packet.
                await asyncio.wait_for(client.ping(), 5)
                streamed = await client.reply(sid)
                again = await client.request("POST", CHAT, chat_body())
                # Still the one connection on the server, now on the new port.
                (conn,) = gw.server.h3.connections
                seen = conn._quic._network_paths[0].addr[1]
            finally:
                moved.close()
            return streamed, again, after, seen

    assert "hapax_http3_migrations_total 0" in metrics(gw)
    streamed, again, after, seen = run(go())
    assert seen == after
    assert "hapax_http3_migrations_total 1" in metrics(gw)
    assert streamed.status == 200 and streamed.body.endswith(b"data: [DONE]\n\n")
    assert again.status == 200


def metrics(gw: GatewayThread) -> str:
    return str(gw.gateway.metrics.render().decode())


def test_shutdown_sends_goaway_and_lets_the_stream_in_flight_finish(
        fake_provider: FakeProvider, certs: DevCerts) -> None:
    fake_provider.queue(Reply(stream=True, chunk_delay=0.3))
    gw = GatewayThread(tls_config(fake_provider, certs)).start()

    async def go() -> tuple[H3Client, H3Reply, H3Reply]:
        async with h3_client(gw, certs) as client:
            sid = client.send("POST", CHAT, chat_body(stream=True))
            while not client.replies[sid].chunks:
                await asyncio.sleep(0.02)
            stopping = asyncio.create_task(asyncio.to_thread(gw.stop, 10.0))
            while goaway_of(client.control) is None:
                await asyncio.sleep(0.01)
            # A request the client opens anyway, past the GOAWAY (a race in real life).
            late = await client.request("POST", CHAT, chat_body())
            reply = await client.reply(sid)
            await asyncio.wait_for(client.wait_closed(), 10)
            await stopping
            return client, reply, late

    try:
        client, reply, late = run(go())
    finally:
        gw.stop()
    assert goaway_of(client.control) == 4  # stream 0 (the first request) is served, not 4 on
    assert reply.status == 200
    assert reply.body.endswith(b"data: [DONE]\n\n")
    # Rejected unprocessed, so that the client may safely retry it elsewhere.
    assert late.reset == ErrorCode.H3_REQUEST_REJECTED and late.status == 0
    assert len(fake_provider.requests) == 1
    assert client.terminated is not None
    assert client.terminated.error_code == ErrorCode.H3_NO_ERROR


def test_niquests_discovers_http3_through_alt_svc(hapax_gateway: GatewayFactory,
                                                  fake_provider: FakeProvider,
                                                  certs: DevCerts) -> None:
    """An independent HTTP/3 stack (niquests: urllib3-future over qh3): its first request
    goes over HTTPS/TCP, learns `Alt-Svc`, and the next ones go over HTTP/3."""
    niquests = pytest.importorskip("niquests")
    fake_provider.queue(Reply(), Reply(), Reply(stream=True))
    gw = hapax_gateway(tls_config(fake_provider, certs))
    url = f"https://127.0.0.1:{gw.port}{CHAT}"
    headers = {"content-type": "application/json"}
    with niquests.Session() as session:
        replies = [session.post(url, data=chat_body(), headers=headers, verify=str(certs.ca))
                   for _ in range(2)]
        assert [r.http_version for r in replies] == [11, 30]
        assert all(r.status_code == 200 for r in replies)
        assert replies[1].json()["choices"][0]["message"]["content"] == "Fake answer to: hello"
        streamed = session.post(url, data=chat_body(stream=True), headers=headers,
                                verify=str(certs.ca), stream=True)
        assert streamed.http_version == 30
        lines = [line for line in streamed.iter_lines() if line]
        assert lines[-1] == b"data: [DONE]" and len(lines) > 2
    assert len(fake_provider.requests) == 3


# -- HTTPS over TCP ---------------------------------------------------------------------------


def test_https_listener_serves_the_openai_sdk_and_advertises_http3(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    gw = hapax_gateway(tls_config(fake_provider, certs))
    verify = ssl.create_default_context(cafile=str(certs.ca))
    with httpx2.Client(verify=verify) as http, openai.OpenAI(
            base_url=f"https://127.0.0.1:{gw.port}/v1", api_key="sk-test", max_retries=0,
            http_client=http) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "hello"}])
        assert raw.parse().choices[0].message.content == "Fake answer to: hello"
        assert raw.headers["alt-svc"] == f'h3=":{gw.port}"; ma=86400'
        stream = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_http3_off_serves_https_without_alt_svc(hapax_gateway: GatewayFactory,
                                                fake_provider: FakeProvider,
                                                certs: DevCerts) -> None:
    gw = hapax_gateway(tls_config(fake_provider, certs, http3=False))
    assert gw.server.h3 is None
    verify = ssl.create_default_context(cafile=str(certs.ca))
    with httpx2.Client(verify=verify) as http:
        resp = http.get(f"https://127.0.0.1:{gw.port}/v1/models")
        assert resp.status_code == 200
        assert "alt-svc" not in resp.headers


def test_plain_http_has_no_alt_svc(hapax_gateway: GatewayFactory,
                                   fake_provider: FakeProvider) -> None:
    gw = hapax_gateway(config_for(fake_provider.base_url))
    with httpx2.Client() as http:
        resp = http.get(f"{gw.url}/v1/models")
        assert resp.status_code == 200
        assert "alt-svc" not in resp.headers


def test_no_session_tickets_so_no_request_is_ever_early_data(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    """With ``session_tickets: 0`` the server issues no ticket.  Without one a client
    cannot send early data, so every request waits for the handshake (and cannot be
    replayed).  0-RTT itself: tests/test_http3_0rtt.py."""
    gw = hapax_gateway(tls_config(fake_provider, certs, session_tickets=0))
    tickets: list[Any] = []

    async def go() -> H3Reply:
        async with h3_client(gw, certs) as client:
            client._quic._session_ticket_handler = tickets.append
            reply = await client.request("POST", CHAT, chat_body())
            await asyncio.wait_for(client.ping(), 5)  # let any NewSessionTicket arrive
            return reply

    assert run(go()).status == 200
    assert tickets == []


def test_reload_serves_a_renewed_certificate_to_new_connections(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts,
        tmp_path: Path) -> None:
    gw = hapax_gateway(tls_config(fake_provider, certs))
    renewed = make_dev_certs(tmp_path, ["127.0.0.1"])  # another CA: tells them apart
    gw.call(gw.server.reload(from_dict(tls_config(fake_provider, renewed))))

    async def h3_status(trust: DevCerts) -> int:
        async with h3_client(gw, trust) as client:
            return (await client.request("GET", "/v1/models")).status

    assert run(h3_status(renewed)) == 200
    with pytest.raises(ConnectionError):  # the handshake fails: not the old certificate
        run(h3_status(certs))
    verify = ssl.create_default_context(cafile=str(renewed.ca))
    with httpx2.Client(verify=verify) as http:
        assert http.get(f"https://127.0.0.1:{gw.port}/v1/models").status_code == 200


@pytest.mark.slow
def test_hapax_serve_with_workers_serves_http3_from_worker_0(
        fake_provider: FakeProvider, certs: DevCerts, tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    cfg = tls_config(fake_provider, certs)
    cfg["server"]["access_log"] = {"format": "off"}
    path.write_text(orjson.dumps(cfg).decode())  # JSON is YAML
    with HapaxProcess(path, "--workers", "2") as hp:
        assert "https://" in hp.stderr
        gw_port = hp.port

        async def h3_pids() -> set[int]:
            pids = set()
            for _ in range(4):  # new connections, new client ports
                async with h3_client_at(gw_port, certs) as client:
                    reply = await client.request("GET", "/healthz")
                    assert reply.status == 200
                    pids.add(reply.json["pid"])
            return pids

        h3 = run(h3_pids())
        https: set[int] = set()
        verify = ssl.create_default_context(cafile=str(certs.ca))
        deadline = time.monotonic() + 20
        while len(https) < 2 and time.monotonic() < deadline:
            with httpx2.Client(verify=verify) as http:  # a new connection each time
                resp = http.get(f"https://127.0.0.1:{gw_port}/healthz")
                assert resp.headers["alt-svc"] == f'h3=":{gw_port}"; ma=86400'
                https.add(resp.json()["pid"])
        assert hp.stop() == 0
    assert len(https) == 2  # both workers serve HTTPS ...
    assert len(h3) == 1 and h3 <= https  # ... and one of them all of HTTP/3


# -- configuration and hapax cert dev -------------------------------------------------------


def test_cert_dev_writes_certificates_the_config_accepts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "dev", "--dir", str(tmp_path), "--host", "gw.test",
                 "--host", "10.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert f"cert: {tmp_path / 'cert.pem'}" in out
    assert (tmp_path / "key.pem").stat().st_mode & 0o077 == 0  # the key is private
    config = from_dict({"server": {"tls": {"cert": str(tmp_path / "cert.pem"),
                                           "key": str(tmp_path / "key.pem")}}})
    assert config.server.tls is not None and config.server.tls.http3
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gw.test"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]


def test_tls_config_errors_name_the_file_and_key(tmp_path: Path, certs: DevCerts) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict({"server": {"tls": {"cert": str(tmp_path / "missing.pem"),
                                      "key": str(certs.ca)}}}, "p.yaml")
    text = str(err.value)
    assert "server.tls.cert" in text and "missing.pem" in text
    other = make_dev_certs(tmp_path / "other", ["localhost"])
    with pytest.raises(ConfigError) as err:
        from_dict({"server": {"tls": {"cert": str(certs.cert), "key": str(other.key)}}})
    assert "server.tls" in str(err.value) and str(other.key) in str(err.value)
    with pytest.raises(ConfigError) as err:
        from_dict({"server": {"tls": {"cert": str(certs.cert)}}})
    assert "server.tls.key" in str(err.value)


def test_connections_beyond_max_connections_are_refused(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    gw = hapax_gateway(tls_config(fake_provider, certs, max_connections=2))

    async def go() -> tuple[H3Reply, str]:
        async with h3_client(gw, certs) as first, h3_client(gw, certs):
            with pytest.raises(ConnectionError):
                async with h3_client(gw, certs):
                    pass
            refused = metrics(gw)
            # The connections already open are not disturbed.
            return await first.request("POST", CHAT, chat_body()), refused

    reply, refused = run(go())
    assert reply.status == 200
    assert "hapax_http3_connections_refused_total 1" in refused
    assert len(fake_provider.requests) == 1


def test_closed_connections_are_freed_without_the_garbage_collector(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts) -> None:
    # As for HTTP/1.1 (tests/test_http11.py): a closed QUIC connection's objects must go
    # by reference counting, not wait for a full collection (every ~2M requests in a
    # worker), or every connection ever made would hold its memory until then.
    from hapax.server.http3 import H3Protocol

    gw = hapax_gateway(tls_config(fake_provider, certs))

    async def one() -> int:
        async with h3_client(gw, certs) as client:
            return (await client.request("POST", CHAT, chat_body())).status

    with collector_off():
        base = alive(H3Protocol)
        for _ in range(5):
            assert run(one()) == 200
        assert wait_for(lambda: alive(H3Protocol) <= base), \
            f"{alive(H3Protocol) - base} closed QUIC connections still in memory"


def test_ended_quic_connections_are_collected_in_batches(
        hapax_gateway: GatewayFactory, fake_provider: FakeProvider, certs: DevCerts,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # aioquic's QuicConnection holds its own bound methods (a cycle we do not own): the
    # listener runs a collection every _COLLECT_EVERY ended connections, so no more than
    # that many wait for one, however rare the worker's own full collections are.
    from aioquic.quic.connection import QuicConnection

    import hapax.server.http3 as http3

    monkeypatch.setattr(http3, "_COLLECT_EVERY", 3)
    gw = hapax_gateway(tls_config(fake_provider, certs))

    def server_side() -> int:
        return sum(1 for o in gc.get_objects()
                   if type(o) is QuicConnection and not o._is_client)

    async def one() -> int:
        async with h3_client(gw, certs) as client:
            return (await client.request("POST", CHAT, chat_body())).status

    with collector_off():  # only the listener's collections run
        base = server_side()
        for _ in range(7):
            assert run(one()) == 200
        time.sleep(0.5)  # the last connection's end reaches the listener
        assert server_side() - base <= 3
