"""In-flight deduplication through the real server: identical requests in flight share
one upstream call, streams included; errors, disconnects and slow readers.

Overlap comes from the fake provider: it answers after a ``delay`` or paces a stream
with ``chunk_delay``, long enough for every client of a test to have arrived.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from helpers import wait_for

from hapax.testing import GatewayThread, config_for
from hapax.testing.fake_provider import FakeProvider, Reply

GatewayFactory = Callable[..., GatewayThread]

HELLO = [{"role": "user", "content": "hello there"}]
KEYS = [{"name": "team-a", "key": "sk-team-a"}, {"name": "team-b", "key": "sk-team-b"}]


def chat(*, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": HELLO, "temperature": 0, **extra}
    if stream:
        body["stream"] = True
    return body


def start(fake: FakeProvider, factory: GatewayFactory, *, keys: list[Any] | None = None,
          **model: Any) -> GatewayThread:
    """A gateway serving alias ``m`` from the fake, with ``model`` settings for it."""
    cfg = config_for(fake.base_url, models=["m"], **({"keys": keys} if keys else {}))
    cfg["models"]["m"].update(model)
    return factory(cfg)


class Answer:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def role(self) -> str | None:
        return self.headers.get("x-hapax-dedup")

    @property
    def events(self) -> list[bytes]:
        return [e for e in self.body.split(b"\n\n") if e.strip()]


async def post(session: aiohttp.ClientSession, gw: GatewayThread, body: dict[str, Any], *,
               key: str = "sk-test", path: str = "/v1/chat/completions") -> Answer:
    async with session.post(gw.url + path, data=orjson.dumps(body),
                            headers={"authorization": f"Bearer {key}",
                                     "content-type": "application/json"}) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def concurrently(gw: GatewayThread, bodies: list[dict[str, Any]], *,
                 keys: list[str] | None = None, path: str = "/v1/chat/completions",
                 ) -> list[Answer]:
    async def main() -> list[Answer]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(
                post(session, gw, b, key=(keys[i] if keys else "sk-test"), path=path)
                for i, b in enumerate(bodies)))

    return asyncio.run(main())


def waiters(gw: GatewayThread) -> int:
    """Requests waiting on the gateway's flights (read from the test's thread: a snapshot)."""
    return sum(f.waiters for f in list(gw.gateway.dedup.flights.values()))


def roles(answers: list[Answer]) -> list[str | None]:
    return sorted((a.role for a in answers), key=str)


# -- 20 identical requests, one upstream call --------------------------------------------


def test_20_identical_requests_make_one_upstream_call(fake_provider: FakeProvider,
                                                      hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(delay=1.5)
    gw = start(fake_provider, hapax_gateway)
    answers = concurrently(gw, [chat()] * 20)
    assert len(fake_provider.requests) == 1
    assert {a.status for a in answers} == {200}
    assert len({a.body for a in answers}) == 1
    assert orjson.loads(answers[0].body)["choices"][0]["message"]["content"] == \
        "Fake answer to: hello there"
    assert roles(answers) == ["follower"] * 19 + ["leader"]
    assert len({a.headers["x-request-id"] for a in answers}) == 20  # each its own id
    assert {a.headers["x-hapax-provider"] for a in answers} == {"fake"}
    metrics = gw.gateway.metrics.render().decode()
    assert 'hapax_dedup_coalesced_total{model="m"} 19.0' in metrics
    assert "hapax_dedup_flights 0.0" in metrics


def test_20_identical_streams_make_one_upstream_call(fake_provider: FakeProvider,
                                                     hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(content="abcdefghij", chunks=10, chunk_delay=0.15)
    gw = start(fake_provider, hapax_gateway)
    answers = concurrently(gw, [chat(stream=True)] * 20)
    assert len(fake_provider.requests) == 1
    assert {a.status for a in answers} == {200}
    assert len({a.body for a in answers}) == 1
    events = answers[0].events
    assert len(events) == 13 and events[-1] == b"data: [DONE]"  # role, 10 pieces, stop
    assert roles(answers) == ["follower"] * 19 + ["leader"]


def test_the_openai_sdk_sees_identical_answers(fake_provider: FakeProvider,
                                               hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(chunks=5, chunk_delay=0.2)
    gw = start(fake_provider, hapax_gateway)

    async def one(c: openai.AsyncOpenAI) -> tuple[str, str]:
        raw = await c.chat.completions.with_raw_response.create(
            model="m", messages=HELLO, temperature=0, stream=True)  # type: ignore[arg-type]
        text = ""
        async for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        return raw.headers["x-hapax-dedup"], text

    async def main() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-test",
                                      max_retries=0) as c:
            return await asyncio.gather(*(one(c) for _ in range(5)))

    got = asyncio.run(main())
    assert sorted(got) == [("follower", "Fake answer to: hello there")] * 4 + \
        [("leader", "Fake answer to: hello there")]
    assert len(fake_provider.requests) == 1


def test_a_follower_joining_mid_stream_gets_the_whole_stream(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(chunks=8, chunk_delay=0.2)
    gw = start(fake_provider, hapax_gateway)

    async def main() -> tuple[Answer, Answer, int]:
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions",
                                    data=orjson.dumps(chat(stream=True))) as resp:
                first = await resp.content.readuntil(b"\n\n")
                second = await resp.content.readuntil(b"\n\n")  # the stream has begun
                sent_before = len(fake_provider.requests)
                late = await post(session, gw, chat(stream=True))
                leader = Answer(resp.status, resp.headers,
                                first + second + await resp.content.read())
        return leader, late, sent_before

    leader, late, sent_before = asyncio.run(main())
    assert sent_before == 1
    assert (leader.role, late.role) == ("leader", "follower")
    assert late.body == leader.body
    assert late.events[0].startswith(b'data: {"id"') and late.events[-1] == b"data: [DONE]"
    assert len(fake_provider.requests) == 1


def test_embeddings_are_shared(fake_provider: FakeProvider,
                               hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(delay=1.0)
    gw = start(fake_provider, hapax_gateway)
    answers = concurrently(gw, [{"model": "m", "input": "hi"}] * 4, path="/v1/embeddings")
    assert len(fake_provider.requests) == 1
    assert roles(answers) == ["follower"] * 3 + ["leader"]
    assert len({a.body for a in answers}) == 1


def test_stream_and_non_stream_never_share(fake_provider: FakeProvider,
                                           hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(delay=1.0)
    gw = start(fake_provider, hapax_gateway)
    answers = concurrently(gw, [chat(), chat(stream=True)] * 2)
    assert len(fake_provider.requests) == 2
    assert roles(answers) == ["follower", "follower", "leader", "leader"]


# -- what is shared, and when ------------------------------------------------------------


def test_different_keys_do_not_share(fake_provider: FakeProvider,
                                     hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(delay=1.0)
    gw = start(fake_provider, hapax_gateway, keys=KEYS)
    answers = concurrently(gw, [chat()] * 4, keys=["sk-team-a", "sk-team-b"] * 2)
    assert len(fake_provider.requests) == 2
    assert roles(answers) == ["follower", "follower", "leader", "leader"]


def test_global_scope_shares_across_keys(fake_provider: FakeProvider,
                                         hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(delay=1.0)
    gw = start(fake_provider, hapax_gateway, keys=KEYS, fingerprint={"scope": "global"})
    answers = concurrently(gw, [chat()] * 4, keys=["sk-team-a", "sk-team-b"] * 2)
    assert len(fake_provider.requests) == 1
    assert roles(answers) == ["follower"] * 3 + ["leader"]


def test_ignored_fields_do_not_count_and_others_do(fake_provider: FakeProvider,
                                                   hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(delay=1.0)
    gw = start(fake_provider, hapax_gateway, fingerprint={"ignore": ["user", "trace"]})
    answers = concurrently(gw, [chat(user="a"), chat(user="b", trace=1), chat(max_tokens=5)])
    assert len(fake_provider.requests) == 2  # max_tokens changes the meaning
    assert roles(answers) == ["follower", "leader", "leader"]


@pytest.mark.parametrize(("dedup", "extra", "upstream_calls"), [
    ("off", {}, 3),
    ("deterministic", {"temperature": 0.7}, 3),
    ("deterministic", {"temperature": 0.7, "seed": 42}, 1),
    ("deterministic", {"temperature": 0.0}, 1),
    ("always", {"temperature": 0.7}, 1),
], ids=["off", "random", "seed", "temperature-0", "always"])
def test_policy(fake_provider: FakeProvider, hapax_gateway: GatewayFactory, dedup: str,
                extra: dict[str, Any], upstream_calls: int) -> None:
    fake_provider.default = Reply(delay=1.0)
    gw = start(fake_provider, hapax_gateway, dedup=dedup)
    answers = concurrently(gw, [chat(**extra)] * 3)
    assert len(fake_provider.requests) == upstream_calls
    assert {a.status for a in answers} == {200}
    if upstream_calls == 3:
        assert roles(answers) == [None] * 3
    else:
        assert roles(answers) == ["follower", "follower", "leader"]


# -- failures ---------------------------------------------------------------------------


def test_the_leaders_error_response_reaches_every_follower(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(status=500, delay=1.0)
    gw = start(fake_provider, hapax_gateway)
    answers = concurrently(gw, [chat()] * 5)
    assert len(fake_provider.requests) == 1
    assert {a.status for a in answers} == {answers[0].status} and answers[0].status >= 500
    assert len({a.body for a in answers}) == 1
    assert "error" in orjson.loads(answers[0].body)


def test_the_leaders_exception_reaches_every_follower(fake_provider: FakeProvider,
                                                      hapax_gateway: GatewayFactory) -> None:
    # The provider never answers: the leader's attempt raises a read timeout.
    fake_provider.default = Reply(hang=True)
    cfg = config_for(fake_provider.base_url, models=["m"])
    cfg["providers"]["fake"]["timeouts"] = {"read": "1s"}
    gw = hapax_gateway(cfg)
    answers = concurrently(gw, [chat()] * 5)
    assert {a.status for a in answers} == {504}
    assert len({a.body for a in answers}) == 1
    assert orjson.loads(answers[0].body)["error"]["code"] == "upstream_timeout"
    assert roles(answers) == ["follower"] * 4 + ["leader"]
    assert len(fake_provider.requests) == 1


def test_a_stream_cut_midway_ends_the_same_for_everyone(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(chunks=6, chunk_delay=0.2, drop_after_events=3)
    gw = start(fake_provider, hapax_gateway)
    answers = concurrently(gw, [chat(stream=True)] * 5)
    assert len(fake_provider.requests) == 1
    assert len({a.body for a in answers}) == 1
    events = answers[0].events
    assert len(events) == 4 and b"[DONE]" not in answers[0].body
    assert orjson.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == "bad_gateway"


# -- leaving --------------------------------------------------------------------------


def open_stream(gw: GatewayThread, body: dict[str, Any]) -> socket.socket:
    data = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n"
                 b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                 % (len(data), data))
    return sock


def read_events(sock: socket.socket, n: int) -> bytes:
    seen = b""
    while seen.count(b"data: ") < n:
        piece = sock.recv(65536)
        assert piece, "the gateway closed the stream early"
        seen += piece
    return seen


def read_all_raw(sock: socket.socket) -> bytes:
    seen = b""
    while not seen.endswith(b"\r\n0\r\n\r\n"):
        piece = sock.recv(65536)
        assert piece, "the gateway closed the stream early"
        seen += piece
    return seen


def dechunk(raw: bytes) -> bytes:
    rest = raw.split(b"\r\n\r\n", 1)[1] if raw.startswith(b"HTTP/") else raw
    out = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return out
        out += rest[:size]
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]


@pytest.mark.parametrize("who_leaves", [0, 1], ids=["leader", "follower"])
def test_a_waiter_leaving_does_not_cancel_the_others(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory, who_leaves: int) -> None:
    fake_provider.default = Reply(chunks=10, chunk_delay=0.15)
    gw = start(fake_provider, hapax_gateway)
    socks = [open_stream(gw, chat(stream=True))]
    seen = [read_events(socks[0], 1)]  # the leader's call is under way
    socks += [open_stream(gw, chat(stream=True)) for _ in range(2)]
    seen += [read_events(s, 1) for s in socks[1:]]
    assert waiters(gw) == 3  # everyone has joined
    socks.pop(who_leaves).close()
    seen.pop(who_leaves)
    bodies = [dechunk(head + read_all_raw(s)) for s, head in zip(socks, seen, strict=True)]
    for s in socks:
        s.close()
    assert bodies[0] == bodies[1]
    assert bodies[0].endswith(b"data: [DONE]\n\n")
    assert len(fake_provider.requests) == 1
    assert fake_provider.disconnects == 0


def test_a_follower_leaving_a_non_streamed_call_does_not_cancel_it(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    fake_provider.default = Reply(delay=1.5)
    gw = start(fake_provider, hapax_gateway)

    async def main() -> list[Answer]:
        async with aiohttp.ClientSession() as session:
            async def until(n: int) -> None:
                while waiters(gw) != n:
                    await asyncio.sleep(0.01)

            leader = asyncio.ensure_future(post(session, gw, chat()))
            await until(1)
            quitter = asyncio.ensure_future(post(session, gw, chat()))
            await until(2)
            quitter.cancel()  # the follower hangs up
            await until(1)
            stayer = await post(session, gw, chat())
            return [await leader, stayer]

    answers = asyncio.run(main())
    assert [a.role for a in answers] == ["leader", "follower"]
    assert {a.status for a in answers} == {200}
    assert fake_provider.disconnects == 0
    assert len(fake_provider.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_the_last_waiter_leaving_cancels_the_upstream_call(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory, stream: bool) -> None:
    fake_provider.default = (Reply(content="word " * 600, chunks=600, chunk_delay=0.05)
                             if stream else Reply(hang=True))
    gw = start(fake_provider, hapax_gateway)
    socks = [open_stream(gw, chat(stream=stream)) for _ in range(3)]
    assert wait_for(lambda: fake_provider.active == 1 and waiters(gw) == 3)
    if stream:
        for s in socks:
            read_events(s, 2)
    for s in socks[:2]:
        s.close()
    time.sleep(0.3)
    assert fake_provider.disconnects == 0  # one waiter is still there
    socks[2].close()
    assert wait_for(lambda: fake_provider.disconnects == 1 and fake_provider.active == 0)
    assert wait_for(lambda: gw.gateway.in_flight == 0 and not gw.gateway.dedup.flights)
    assert len(fake_provider.requests) == 1


def test_a_slow_follower_is_detached_while_the_others_finish(
        fake_provider: FakeProvider, hapax_gateway: GatewayFactory) -> None:
    # ~6 MiB in 8 KiB events, paced so that readers who read keep up; the shared log
    # holds 128 KiB.  One client stops reading: once socket buffers are full, its
    # backlog outgrows the log and it is detached, with an error event at its end.
    piece = "x" * 8000
    events = [b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": piece}}]})
              + b"\n\n" for _ in range(800)] + [b"data: [DONE]\n\n"]
    # The head comes after a delay: everyone has joined before the log can drop anything.
    fake_provider.default = Reply(events=events, chunk_delay=0.002, delay=1.0)
    gw = start(fake_provider, hapax_gateway)
    gw.gateway.dedup.max_stream_bytes = 128 * 1024
    slow = socket.socket()

    async def main() -> list[Answer]:
        async with aiohttp.ClientSession() as session:
            fast = [asyncio.ensure_future(post(session, gw, chat(stream=True)))
                    for _ in range(2)]
            while fake_provider.active != 1:
                await asyncio.sleep(0.01)
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.settimeout(30)
            slow.connect(("127.0.0.1", gw.port))
            data = orjson.dumps(chat(stream=True))
            slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                         b"application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(data), data))
            return await asyncio.gather(*fast)

    answers = asyncio.run(main())
    assert {a.status for a in answers} == {200}
    assert answers[0].body == answers[1].body == b"".join(events)
    assert roles(answers) == ["follower", "leader"]

    got = read_all_raw(slow)
    slow.close()
    assert got.startswith(b"HTTP/1.1 200 ")
    assert b"x-hapax-dedup: follower" in got
    payload = dechunk(got)
    assert b"data: [DONE]" not in payload
    last = payload.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == \
        "stream_reader_too_slow"
    assert len(fake_provider.requests) == 1
    assert 'hapax_dedup_detached_total{model="m"} 1.0' in gw.gateway.metrics.render().decode()
