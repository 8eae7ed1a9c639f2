"""Fixtures shared by the test files (the ``fake_provider``, ``fake_anthropic`` and
``hapax_gateway`` fixtures come from :mod:`hapax.testing.pytest_plugin`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import close_clients

from hapax.testing.fake_provider import FakeProvider


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close the SDK clients a test made with :func:`helpers.client` or
    :func:`helpers.track`."""
    yield
    close_clients()


@pytest.fixture
def second() -> Iterator[FakeProvider]:
    """A second started fake provider, next to ``fake_provider``."""
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def primary(fake_provider: FakeProvider) -> FakeProvider:
    """The first of two fake providers (``fake_provider`` under the name of its role)."""
    return fake_provider


@pytest.fixture
def secondary(second: FakeProvider) -> FakeProvider:
    """The second of two fake providers (``second`` under the name of its role)."""
    return second
