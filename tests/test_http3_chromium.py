"""An independent HTTP/3 client against the gateway: headless Chromium forced onto QUIC.

aioquic is both the gateway's HTTP/3 stack and the client of tests/test_http3.py; a bug
shared by both would go unseen there.  Here Chromium's own QUIC and HTTP/3 stack talks to a
real gateway (``server.tls`` from ``hapax cert dev``, a fake OpenAI provider behind it) on
127.0.0.1.  It is driven through the Chrome DevTools Protocol (a websocket, aiohttp's
client): it opens ``/healthz`` (so the page's origin is the gateway's, and the POSTs below
are same-origin: the gateway sends no CORS headers), then ``fetch`` POSTs a chat request and
a streamed one and reads the stream with a reader.  The protocol is checked twice, from
both of Chromium's views: ``nextHopProtocol`` of the page's performance entries and the
``protocol`` of the DevTools ``Network.responseReceived`` events must be ``h3``.

``--origin-to-force-quic-on`` makes Chromium use QUIC for the origin at once (no
``Alt-Svc`` discovery first); ``--ignore-certificate-errors-spki-list`` trusts the dev
certificate by the SHA-256 of its public key.  Skipped when no Chromium is installed
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers import GatewayFactory

from hapax.server.tls import DevCerts, make_dev_certs
from hapax.testing import config_for
from hapax.testing.fake_provider import FakeProvider, Reply

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome",
                                   "google-chrome-stable")
                 if (path := shutil.which(name)) is not None), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium (apt-get install -y chromium) for an HTTP/3 "
                             "client independent of aioquic")

GATEWAY_KEY = "sk-hapax-chromium-test-0123456789"
CHAT = "/v1/chat/completions"

#: Flags keeping a headless Chromium off the network but for the gateway, and quiet.
QUIET = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-domain-reliability", "--disable-breakpad", "--metrics-recording-only",
         "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"), ["127.0.0.1"])


def spki_sha256(cert: Path) -> str:
    """Base64 SHA-256 of the certificate's SubjectPublicKeyInfo (what Chromium pins)."""
    public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop Chromium by its PID (SIGTERM, then SIGKILL), then whatever is left of the
    process group it leads (its zygote and renderers, started by it alone)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def chromium_at(tmp_path: Path) -> Iterator[Any]:
    """``chromium_at(port, spki)``: a headless Chromium forced onto QUIC for
    127.0.0.1:``port``, returning its DevTools port; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(port: int, spki: str) -> int:
        assert CHROMIUM is not None
        profile = tmp_path / "profile"
        with open(tmp_path / "chromium.log", "wb") as log:
            proc = subprocess.Popen(
                [CHROMIUM, *QUIET, "--enable-quic",
                 f"--origin-to-force-quic-on=127.0.0.1:{port}",
                 f"--ignore-certificate-errors-spki-list={spki}", f"--user-data-dir={profile}",
                 "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                 "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        # Chromium writes the DevTools port it picked into the profile directory.
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"Chromium exited with {proc.returncode}: "
                                     f"{(tmp_path / 'chromium.log').read_text()[-2000:]}")
            text = active.read_text() if active.exists() else ""
            if text.count("\n") >= 1:
                return int(text.split("\n", 1)[0])
            time.sleep(0.05)
        raise AssertionError("Chromium did not open its DevTools port within 20 s")

    yield start
    for proc in started:
        stop(proc)


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page, over aiohttp's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = orjson.loads(msg.data)
            if "id" in data:
                waiter = self.pending.pop(data["id"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
            else:
                self.events.append(data)
                if data.get("method") == "Page.loadEventFired":
                    self.loaded.set()

    async def call(self, method: str, timeout: float = 15, **params: Any) -> Any:
        ident = next(self.ids)
        waiter = self.pending[ident] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(orjson.dumps({"id": ident, "method": method,
                                             "params": params}).decode())
        reply = await asyncio.wait_for(waiter, timeout)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = await self.call("Runtime.evaluate", expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def responses(self) -> list[dict[str, Any]]:
        """The response of each ``Network.responseReceived`` event, in order."""
        return [e["params"]["response"] for e in self.events
                if e.get("method") == "Network.responseReceived"]

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


#: Run in the page (origin https://127.0.0.1:PORT): one chat request, one streamed, the
#: stream read chunk by chunk as it arrives.
FETCHES = """
(async () => {
  const headers = {"content-type": "application/json", "authorization": "Bearer %(key)s"};
  const ask = (extra) => fetch("/v1/chat/completions", {method: "POST", headers,
      body: JSON.stringify({model: "test-model",
                            messages: [{role: "user", content: "hello"}], ...extra})});
  const plain = await ask({});
  const answer = await plain.json();
  const streamed = await ask({stream: true});
  const reader = streamed.body.getReader();
  const decoder = new TextDecoder();
  let text = "", reads = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    reads += 1;
    text += decoder.decode(value, {stream: true});
  }
  // A fetch's resource timing entry is queued a little after its body is read.
  const chats = () => performance.getEntriesByType("resource").filter(
      e => e.name.endsWith("/v1/chat/completions"));
  for (let i = 0; i < 100 && chats().length < 2; i++) {
    await new Promise(resolve => setTimeout(resolve, 20));
  }
  return {
    status: plain.status, answer, requestId: plain.headers.get("x-request-id"),
    provider: plain.headers.get("x-hapax-provider"),
    streamStatus: streamed.status, streamType: streamed.headers.get("content-type"),
    text, reads,
    page: performance.getEntriesByType("navigation")[0].nextHopProtocol,
    fetches: chats().map(e => e.nextHopProtocol),
  };
})()
"""


async def drive(devtools_port: int,
                gateway_port: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Open the gateway's /healthz in Chromium, run :data:`FETCHES` there; returns what
    the page saw and DevTools' responses by URL."""
    origin = f"https://127.0.0.1:{gateway_port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the about:blank tab may appear just after the DevTools port
            async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as resp:
                targets = await resp.json()
            page = next((t for t in targets if t["type"] == "page"), None)
            if page is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"Chromium opened no page: {targets}")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            try:
                await tools.call("Network.enable")
                await tools.call("Page.enable")
                await tools.call("Page.navigate", url=f"{origin}/healthz")
                await asyncio.wait_for(tools.loaded.wait(), 15)
                seen = await tools.evaluate(FETCHES % {"key": GATEWAY_KEY})
                health = await tools.evaluate("document.body.innerText")
                seen["health"] = orjson.loads(health)
            finally:
                await tools.close()
    return seen, tools.responses()


def test_chromium_speaks_http3_to_the_gateway(hapax_gateway: GatewayFactory,
                                              fake_provider: FakeProvider, certs: DevCerts,
                                              chromium_at: Any) -> None:
    fake_provider.queue(Reply(), Reply(stream=True, chunks=4, chunk_delay=0.2))
    gw = hapax_gateway(config_for(
        fake_provider.base_url,
        server={"tls": {"cert": str(certs.cert), "key": str(certs.key)}},
        keys=[{"name": "browser", "key": GATEWAY_KEY}]))
    devtools_port = chromium_at(gw.port, spki_sha256(certs.cert))

    seen, responses = asyncio.run(asyncio.wait_for(drive(devtools_port, gw.port), 25))

    # Chromium's own view of the protocol: the page, both fetches, and DevTools.
    assert seen["page"] == "h3"
    assert seen["fetches"] == ["h3", "h3"]
    by_path = [(r["url"].removeprefix(f"https://127.0.0.1:{gw.port}"), r["protocol"])
               for r in responses]
    assert by_path.count(("/healthz", "h3")) == 1, by_path
    assert by_path.count((CHAT, "h3")) == 2, by_path
    assert seen["health"]["status"] == "ok"

    assert seen["status"] == 200
    assert seen["answer"]["choices"][0]["message"]["content"] == "Fake answer to: hello"
    assert seen["requestId"]
    assert seen["provider"] == "fake"

    assert seen["streamStatus"] == 200
    assert seen["streamType"].startswith("text/event-stream")
    events = [e for e in seen["text"].split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert seen["text"].endswith("data: [DONE]\n\n")
    content = "".join(orjson.loads(e[len("data: "):])["choices"][0]["delta"].get("content")
                      or "" for e in events[:-1])
    assert content == "Fake answer to: hello"
    # 0.2 s between events: they reached the page as they came, not in one piece.
    assert seen["reads"] >= 3

    # Both POSTs went through the gateway to the provider, with the key accepted.
    assert len(fake_provider.requests) == 2
    assert fake_provider.requests[1].json["stream"] is True
