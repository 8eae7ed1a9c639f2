"""Limiter doubles for tests of the rate-limit plugin and of other limit stores."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hapax.limiter import Limit, Limiter, LimitState

__all__ = ["InterfaceOnly"]


class InterfaceOnly(Limiter):
    """``inner`` as a store without a fast path would be seen: only the abstract
    interface (``prepare``, ``acquire``, ``adjust``), so the plugin drives it through
    its generic, async admission stage (a Redis store would be driven that way)."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner

    def prepare(self, limits: Iterable[Limit]) -> None:
        self.inner.prepare(limits)

    async def acquire(self, charges: Sequence[tuple[Limit, int]]) -> list[LimitState]:
        return await self.inner.acquire(charges)

    def adjust(self, limit: Limit, delta: int) -> None:
        self.inner.adjust(limit, delta)
