"""pytest fixtures for testing Hapax plugins (registered through the ``pytest11`` entry
point, so they are available as soon as Hapax is installed).

``fake_provider``
    a started :class:`~hapax.testing.fake_provider.FakeProvider`.
``fake_anthropic``
    a started :class:`~hapax.testing.fake_anthropic.FakeAnthropic` (Anthropic's
    Messages API).
``hapax_gateway``
    a factory: ``hapax_gateway(config_dict_or_Config, plugins=[("name", obj)])`` returns
    a started :class:`~hapax.testing.GatewayThread`; every gateway is stopped at the
    end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hapax.testing import GatewayThread


@pytest.fixture
def fake_provider() -> Iterator[Any]:
    from hapax.testing.fake_provider import FakeProvider

    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake_anthropic() -> Iterator[Any]:
    from hapax.testing.fake_anthropic import FakeAnthropic

    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def hapax_gateway() -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def start(config: Any, **kwargs: Any) -> GatewayThread:
        gw = GatewayThread(config, **kwargs).start()
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        gw.stop()
