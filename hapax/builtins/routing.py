"""Routing: the ``models`` section maps an alias to its ordered targets."""

from __future__ import annotations

from typing import Any

from hapax.errors import NotFound
from hapax.types import RoutePlan, Target

_CATCHALL_MEMO = 4096  # aliases remembered for the "*" route (bounded: clients choose them)


class Plugin:
    def __init__(self) -> None:
        self.plans: dict[str, RoutePlan] = {}
        self.catchall: tuple[tuple[str, str | None], ...] | None = None
        self.memo: dict[str, RoutePlan] = {}

    def hapax_configure(self, config: Any) -> None:
        self.plans = {
            alias: RoutePlan(alias, tuple(Target(t.provider, t.model or alias)
                                          for t in m.targets))
            for alias, m in config.models.items() if alias != "*"
        }
        star = config.models.get("*")
        self.catchall = tuple((t.provider, t.model) for t in star.targets) if star else None
        self.memo = {}

    def hapax_route(self, exchange: Any) -> RoutePlan:
        alias = exchange.alias
        plan = self.plans.get(alias) or self.memo.get(alias)
        if plan is not None:
            return plan
        if self.catchall is None:
            raise NotFound(f"The model `{alias}` does not exist or you do not have access to it.",
                           code="model_not_found", param="model")
        plan = RoutePlan(alias, tuple(Target(p, m or alias) for p, m in self.catchall))
        if len(self.memo) < _CATCHALL_MEMO:
            self.memo[alias] = plan
        return plan

    def aliases(self) -> list[str]:
        return list(self.plans)
