"""Test helpers for Hapax and its plugins.

* :class:`GatewayThread` — a real gateway on 127.0.0.1 (ephemeral port), in a thread
  with its own event loop, so synchronous and asynchronous clients both work.
* :class:`~hapax.testing.fake_provider.FakeProvider` — a fake OpenAI-compatible
  provider that records what it received, with scripted faults (docs/testing.md).
* :class:`~hapax.testing.fake_anthropic.FakeAnthropic` — the same for Anthropic's
  Messages API.
* The pytest plugin (loaded automatically once Hapax is installed) provides the
  ``fake_provider``, ``fake_anthropic`` and ``hapax_gateway`` fixtures; see docs/plugins.md.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from hapax.config import Config, from_dict

__all__ = ["GatewayThread", "FakeProvider", "FakeAnthropic", "Reply", "config_for"]


def __getattr__(name: str) -> Any:
    # The fake provider needs aiohttp: import it only when asked for.
    if name in ("FakeProvider", "Reply"):
        from hapax.testing import fake_provider

        return getattr(fake_provider, name)
    if name == "FakeAnthropic":
        from hapax.testing import fake_anthropic

        return fake_anthropic.FakeAnthropic
    raise AttributeError(name)


def config_for(base_url: str, *, models: Iterable[str] = ("test-model",),
               upstream_model: str | None = None, **extra: Any) -> dict[str, Any]:
    """A config dict routing ``models`` to an OpenAI-compatible server at ``base_url``.

    Its models have ``retries: 0``: one target, one attempt per request, so a test sees
    each upstream answer as it is (tests of retries set ``retries`` themselves)."""
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "access_log": {"format": "off"}},
        "providers": {"fake": {"kind": "openai", "base_url": base_url}},
        "models": {m: {"targets": [{"provider": "fake", **(
            {"model": upstream_model} if upstream_model else {})}], "retries": 0}
            for m in models},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class GatewayThread:
    """Run a gateway in a background thread: ``with GatewayThread(cfg) as gw: gw.base_url``.

    ``config`` is a :class:`~hapax.config.Config` or a dict (validated like YAML).
    ``plugins`` registers extra ``(name, plugin)`` pairs.
    """

    def __init__(self, config: Config | dict[str, Any], *,
                 plugins: Iterable[tuple[str, Any]] = ()) -> None:
        if isinstance(config, dict):
            config = from_dict(config, "<test config>")
        self.config = config
        self.plugins = list(plugins)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: Any = None
        self.gateway: Any = None
        self._thread: threading.Thread | None = None
        self._started: Future[None] = Future()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI SDK takes as ``base_url``."""
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        return int(self.server.port)

    def start(self) -> GatewayThread:
        self._thread = threading.Thread(target=self._run, name="hapax-gateway", daemon=True)
        self._thread.start()
        self._started.result(15)
        return self

    def _run(self) -> None:
        from hapax.pipeline.gateway import Gateway
        from hapax.server.worker import Server, new_event_loop

        loop = self.loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self.gateway = Gateway(self.config, plugins=self.plugins)
            self.server = Server(self.gateway)
            loop.run_until_complete(self.server.start(host="127.0.0.1", port=0))
        except BaseException as exc:
            self._started.set_exception(exc)
            loop.close()
            return
        self._started.set_result(None)
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, drain: float = 5.0) -> None:
        if self.loop is None or self.server is None or not self.loop.is_running():
            return
        try:
            self.call(self.server.shutdown(drain), timeout=drain + 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(10)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
