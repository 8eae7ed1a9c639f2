"""Routing: the ``models`` section maps an alias to its ordered targets.

A model whose targets are all plain targets has one precomputed :class:`RoutePlan` (a
request pays a dict lookup).  A model with a load-balanced ``group`` gets its plan built
per request: the group's members ordered by its ``balance`` strategy — the chosen
member first, the others after it as fallbacks — then the entries that follow.  Members
whose circuit breaker is open go last.  The strategies, per worker:

* ``weighted``: smooth weighted round-robin (nginx's): each pick adds every member's
  weight to its current score, takes the highest and takes the total off it, so weights
  3 and 1 give ``a a b a`` — exactly 3:1 over every 4 requests, evenly spread.
* ``least_outstanding``: the member with the fewest attempts in flight (streams until
  they end); ties go to the higher weight, then round-robin.
* ``p2c``: power of two choices — two members drawn at random (by weight), the one with
  the lower ``latency EWMA × (outstanding + 1)`` wins; a member without a latency yet
  counts as the group's best known one and wins a tie, so it gets tried.
"""

from __future__ import annotations

import random
from typing import Any

from hapax.errors import NotFound
from hapax.pipeline.health import OPEN, Health, TargetHealth
from hapax.types import RoutePlan, Target

_CATCHALL_MEMO = 4096  # aliases remembered for the "*" route (bounded: clients choose them)


class Group:
    """A load-balanced group of targets of equal priority, and its per-worker state."""

    __slots__ = ("members", "weights", "balance", "current", "turn", "rng", "_known")

    def __init__(self, members: tuple[tuple[str, str | None, int], ...], balance: str,
                 rng: random.Random | None = None) -> None:
        #: ``(provider, model or None for the alias itself, weight)``
        self.members = members
        self.weights = [w for _, _, w in members]
        self.balance = balance
        self.current = [0] * len(members)  # smooth weighted round-robin scores
        self.turn = 0  # round-robin tie breaker of least_outstanding
        self.rng = rng or random.Random()
        # alias -> (the members' targets, their health): built once per alias
        self._known: dict[str, tuple[list[Target], list[TargetHealth] | None]] = {}

    def targets(self, alias: str) -> list[Target]:
        return [Target(p, m or alias) for p, m, _ in self.members]

    def plan(self, alias: str, health: Health | None) -> list[Target]:
        """The members, for model ``alias``, in the order to try them."""
        known = self._known.get(alias)
        if known is None:
            targets = self.targets(alias)
            stats = [health.get(t) for t in targets] if health is not None else None
            if stats is not None:  # the registry's own Target objects: cheaper lookups
                targets = [s.target for s in stats]
            known = (targets, stats)
            if len(self._known) < _CATCHALL_MEMO:
                self._known[alias] = known
        return self.order(*known)

    def order(self, targets: list[Target], stats: list[TargetHealth] | None) -> list[Target]:
        """``targets`` (this group's, for one alias) in the order to try them, given their
        health ``stats`` (None: no health registry)."""
        live = list(range(len(targets)))
        closed: list[int] = []
        if stats is not None:
            for s in stats:
                if s.state == OPEN:  # rare: then look at each member
                    closed = [i for i in live if stats[i].is_open()]
                    live = [i for i in live if i not in closed]
                    break
        if len(live) > 1:
            if self.balance == "weighted":
                live = self._weighted(live)
            elif self.balance == "least_outstanding":
                live = self._least_outstanding(live, stats)
            else:
                live = self._p2c(live, stats)
        return [targets[i] for i in live] + [targets[i] for i in closed]

    def _weighted(self, live: list[int]) -> list[int]:
        current, weights = self.current, self.weights
        total = 0
        best = live[0]
        for i in live:
            current[i] += weights[i]
            total += weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= total
        rest = [i for i in live if i != best]
        if len(rest) > 1:
            rest.sort(key=lambda i: -current[i])  # the likeliest next picks first
        return [best, *rest]

    def _least_outstanding(self, live: list[int], stats: list[TargetHealth] | None) -> list[int]:
        n = len(self.members)
        turn = self.turn = (self.turn + 1) % n
        weights = self.weights
        return sorted(live, key=lambda i: (stats[i].outstanding if stats else 0, -weights[i],
                                           (i - turn) % n))

    def _pick(self, among: list[int]) -> int:
        """One of ``among``, drawn at random in proportion to the weights."""
        weights = self.weights
        x = self.rng.random() * sum(weights[i] for i in among)
        for i in among:
            x -= weights[i]
            if x < 0:
                return i
        return among[-1]

    def _p2c(self, live: list[int], stats: list[TargetHealth] | None) -> list[int]:
        a = self._pick(live)
        others = [i for i in live if i != a]
        b = self._pick(others)
        if stats is None:
            return [a, b, *(i for i in others if i != b)]
        known = [s.ewma for s in stats if s.ewma is not None]
        best = min(known) if known else 0.0

        def score(i: int) -> tuple[float, bool]:
            s = stats[i]  # on a tie, a member not measured yet goes first: it gets tried
            return (s.ewma if s.ewma is not None else best) * (s.outstanding + 1), \
                s.ewma is not None

        first = a if score(a) <= score(b) else b
        rest = [i for i in live if i != first]
        if len(rest) > 1:
            rest.sort(key=score)
        return [first, *rest]


#: A model's entries: a plain ``(provider, model or None)`` target, or a group.
Entry = tuple[str, str | None] | Group


class Plugin:
    def __init__(self) -> None:
        self.plans: dict[str, RoutePlan] = {}
        self.balanced: dict[str, tuple[Entry, ...]] = {}
        self.catchall: tuple[Entry, ...] | None = None
        self.memo: dict[str, RoutePlan] = {}
        self.health: Health | None = None
        self._aliases: list[str] = []

    def hapax_configure(self, config: Any, gateway: Any) -> None:
        self.health = getattr(gateway, "health", None)
        self.plans, self.balanced = {}, {}
        for alias, m in config.models.items():
            if alias == "*":
                continue
            entries = _entries(m)
            if any(isinstance(e, Group) for e in entries):
                self.balanced[alias] = entries
            else:
                plan = _static(alias, entries)
                if self.health is not None:
                    # The registry's own Target objects: the executor's health lookup
                    # then matches by identity (no dataclass __eq__ call).
                    plan = RoutePlan(alias, tuple(self.health.get(t).target
                                                  for t in plan.targets))
                self.plans[alias] = plan
        star = config.models.get("*")
        self.catchall = _entries(star) if star else None
        self.memo = {}
        self._aliases = [alias for alias in config.models if alias != "*"]

    def hapax_route(self, exchange: Any) -> RoutePlan:
        alias = exchange.alias
        plan = self.plans.get(alias) or self.memo.get(alias)
        if plan is not None:
            return plan
        entries = self.balanced.get(alias)
        if entries is not None:
            return self._build(alias, entries)
        if self.catchall is None:
            raise NotFound(f"The model `{alias}` does not exist or you do not have access to it.",
                           code="model_not_found", param="model")
        if any(isinstance(e, Group) for e in self.catchall):
            return self._build(alias, self.catchall)
        plan = _static(alias, self.catchall)
        if len(self.memo) < _CATCHALL_MEMO:
            self.memo[alias] = plan
        return plan

    def _build(self, alias: str, entries: tuple[Entry, ...]) -> RoutePlan:
        """The plan of one request to a model with groups."""
        targets: list[Target] = []
        for e in entries:
            if isinstance(e, Group):
                targets += e.plan(alias, self.health)
            else:
                targets.append(Target(e[0], e[1] or alias))
        return RoutePlan(alias, tuple(targets))

    def aliases(self) -> list[str]:
        return list(self._aliases)


def _entries(model: Any) -> tuple[Entry, ...]:
    out: list[Entry] = []
    for t in model.targets:
        if t.group is not None:
            out.append(Group(tuple((m.provider, m.model, m.weight) for m in t.group),
                             t.balance))
        else:
            out.append((t.provider, t.model))
    return tuple(out)


def _static(alias: str, entries: tuple[Entry, ...]) -> RoutePlan:
    return RoutePlan(alias, tuple(Target(e[0], e[1] or alias) for e in entries
                                  if not isinstance(e, Group)))
