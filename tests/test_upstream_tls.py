"""HTTPS to the provider: certificates are verified (system store or `ca_file`)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from hapax.testing import GatewayThread

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

ANSWER = orjson.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                           "role": "assistant", "content": "over TLS"}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                 "total_tokens": 3}})


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return crt, key


@pytest.fixture
def tls_provider(cert: tuple[Path, Path]) -> Iterator[int]:
    """A minimal HTTPS provider answering every request with one chat completion."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, cert))
    loop = asyncio.new_event_loop()
    ready: list[Any] = []

    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            writer.close()
        finally:
            writers.discard(writer)

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx))
        ready.append(server)
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    while not ready:
        pass
    yield ready[0].sockets[0].getsockname()[1]

    async def close_all() -> None:
        for w in list(writers):
            w.transport.abort()
        await asyncio.sleep(0.05)

    asyncio.run_coroutine_threadsafe(close_all(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def _gateway(start: Callable[..., GatewayThread], port: int, **provider: Any) -> GatewayThread:
    return start({
        "server": {"port": 0, "access_log": {"format": "off"}},
        "providers": {"tls": {"kind": "openai", "base_url": f"https://localhost:{port}/v1",
                              "timeouts": {"connect": "2s"}, **provider}},
        "models": {"m": {"targets": [{"provider": "tls"}]}},
    })


def _ask(gw: GatewayThread) -> str | None:
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    return c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]
                                     ).choices[0].message.content


def test_trusted_ca_file_verifies(hapax_gateway: Callable[..., GatewayThread],
                                  tls_provider: int, cert: tuple[Path, Path]) -> None:
    gw = _gateway(hapax_gateway, tls_provider, ca_file=str(cert[0]))
    assert _ask(gw) == "over TLS"
    assert _ask(gw) == "over TLS"  # and the TLS connection is pooled
    assert gw.gateway.providers["tls"].stats()["open"] == 1


def test_untrusted_certificate_is_refused(hapax_gateway: Callable[..., GatewayThread],
                                          tls_provider: int) -> None:
    gw = _gateway(hapax_gateway, tls_provider)  # self-signed, not in the system store
    with pytest.raises(openai.APIStatusError) as info:
        _ask(gw)
    assert info.value.status_code == 502
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "upstream_unreachable"
    assert "TLS handshake" in body["message"]


def test_verification_can_be_turned_off(hapax_gateway: Callable[..., GatewayThread],
                                        tls_provider: int) -> None:
    gw = _gateway(hapax_gateway, tls_provider, verify_tls=False)
    assert _ask(gw) == "over TLS"
