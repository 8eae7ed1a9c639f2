"""Plugin loading and the async hook dispatcher.

pluggy keeps the registry (names, ordering, validation); Hapax resolves each stage's
implementations once, at start-up, into a :class:`Stage` that awaits ``async``
implementations and honours first-result semantics.  A stage with no implementation
is falsy, and the pipeline skips it without a call.  Core code uses :class:`Hooks`,
never ``pm.hook`` directly.

Environment switches:

``HAPAX_DISABLE_PLUGIN_AUTOLOAD=1``
    do not load every installed ``hapax`` entry point; only those named in ``plugins:``.
``HAPAX_BLOCK_PLUGINS=a,b``
    never load these plugins (entry-point names or module paths).
``HAPAX_TRACE_PLUGINS=1``
    log every hook call (plugin, hook, duration, result) at debug level to stderr.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from hapax import hookspecs
from hapax.errors import ConfigError, PluginError, RequestError

__all__ = ["hookimpl", "PluginManager", "PluginInfo", "Stage", "Hooks", "load_plugins",
           "BUILTIN_PLUGINS", "ENTRY_POINT_GROUP", "configure_plugins"]

log = logging.getLogger("hapax.plugins")

hookimpl = pluggy.HookimplMarker("hapax")
ENTRY_POINT_GROUP = "hapax"

BUILTIN_PLUGINS = (
    "hapax.builtins.providers",
    "hapax.builtins.auth",
    "hapax.builtins.routing",
    "hapax.builtins.accesslog",
    "hapax.builtins.metrics",
    "hapax.builtins.ratelimit",
    "hapax.builtins.cache",
)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, treating every ``hapax_*`` function as an implementation so a
    misspelt hook name is caught by :meth:`check_pending` instead of ignored."""

    def __init__(self) -> None:
        super().__init__("hapax")
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("hapax_"):
            if inspect.isroutine(getattr(plugin, name, None)):
                return {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                        "tryfirst": False, "trylast": False, "specname": None}
        return opts


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin, for `hapax plugins`."""

    name: str
    source: str  # "builtin", "entry point <dist> <version>", "config"
    hooks: tuple[str, ...]


class Stage:
    """One hook, resolved: an ordered list of ``(function, is_async, arg indices)``.

    ``sync`` is true when no implementation is ``async``: the pipeline then calls
    :meth:`run` instead of awaiting the stage (no coroutine per stage and request)."""

    __slots__ = ("name", "first", "impls", "argnames", "sync")

    def __init__(self, pm: pluggy.PluginManager, name: str, *, trace: bool = False) -> None:
        caller = getattr(pm.hook, name)
        self.name = name
        self.first = bool(caller.spec and caller.spec.opts.get("firstresult"))
        self.argnames: tuple[str, ...] = tuple(caller.spec.argnames) if caller.spec else ()
        impls = []
        # pluggy runs get_hookimpls() in reverse: last registered (and tryfirst) first.
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                raise PluginError(f"plugin {impl.plugin_name!r}: {name} is a hook wrapper; "
                                  f"wrappers are not supported on Hapax hooks")
            fn = impl.function
            pick = None
            if tuple(impl.argnames) != self.argnames:
                pick = tuple(self.argnames.index(a) for a in impl.argnames)
            is_async = inspect.iscoroutinefunction(fn)
            if trace:
                fn = _traced(fn, impl.plugin_name, name, is_async)
            impls.append((fn, is_async, pick, impl.plugin_name))
        self.impls = tuple(impls)
        self.sync = not any(impl[1] for impl in self.impls)

    def __bool__(self) -> bool:
        return bool(self.impls)

    @property
    def plugins(self) -> list[str]:
        return [impl[3] for impl in self.impls]

    @property
    def all_sync(self) -> bool:
        return self.sync

    def run(self, *args: Any, chain: bool = False) -> Any:
        """:meth:`__call__` for a stage whose implementations are all sync (``sync``),
        without a coroutine: same order, first-result, chaining and error wrapping."""
        first = self.first
        for fn, _, pick, plugin in self.impls:
            try:
                result = fn(*args) if pick is None else fn(*[args[i] for i in pick])
            except RequestError:
                raise
            except Exception as exc:
                raise self._failed(plugin, exc) from exc
            if result is not None:
                if first:
                    return result
                if chain:
                    args = (*args[:-1], result)
        return args[-1] if chain else None

    async def __call__(self, *args: Any, chain: bool = False) -> Any:
        """Run the implementations in order.

        First-result hooks return the first non-``None`` result.  With ``chain`` (hooks
        that transform their last argument, like ``hapax_transform_chunk``), a
        non-``None`` result replaces that argument for the next implementation, and the
        final value is returned.
        """
        first = self.first
        for fn, is_async, pick, plugin in self.impls:
            try:
                result = fn(*args) if pick is None else fn(*[args[i] for i in pick])
                if is_async:
                    result = await result
            except RequestError:
                raise
            except Exception as exc:
                raise self._failed(plugin, exc) from exc
            if result is not None:
                if first:
                    return result
                if chain:
                    args = (*args[:-1], result)
        return args[-1] if chain else None

    def start(self, *args: Any) -> Coroutine[Any, Any, Any] | None:
        """For a stage whose results are not used (a notification: request received,
        before an attempt, a response to transform or store): run it now if all its
        implementations are sync (None), else return the coroutine to await."""
        if self.sync:
            self.run(*args)
            return None
        return self(*args)

    def _failed(self, plugin: str, exc: Exception) -> PluginError:
        return PluginError(f"plugin {plugin!r} failed in {self.name}: "
                           f"{type(exc).__name__}: {exc}")

    def call_sync(self, *args: Any) -> list[Any]:
        """Call sync implementations now; return the coroutines of async ones."""
        pending = []
        for fn, is_async, pick, plugin in self.impls:
            try:
                result = fn(*args) if pick is None else fn(*[args[i] for i in pick])
            except Exception:
                log.exception("plugin %r failed in %s", plugin, self.name)
                continue
            if is_async:
                pending.append(result)
        return pending


def _traced(fn: Callable[..., Any], plugin: str, hook: str, is_async: bool) -> Callable[..., Any]:
    if is_async:
        async def atraced(*args: Any) -> Any:
            t = time.perf_counter()
            result = await fn(*args)
            log.debug("%s.%s -> %r (%.1f µs)", plugin, hook, result,
                      (time.perf_counter() - t) * 1e6)
            return result
        return atraced

    def traced(*args: Any) -> Any:
        t = time.perf_counter()
        result = fn(*args)
        log.debug("%s.%s -> %r (%.1f µs)", plugin, hook, result, (time.perf_counter() - t) * 1e6)
        return result
    return traced


class Hooks:
    """The typed facade over the resolved stages, in pipeline order."""

    def __init__(self, pm: PluginManager) -> None:
        trace = os.environ.get("HAPAX_TRACE_PLUGINS", "") not in ("", "0")
        self.pm = pm
        for name in hookspecs.HOOKS_IN_ORDER[2:]:
            setattr(self, name[len("hapax_"):], Stage(pm, name, trace=trace))

    request_received: Stage
    authenticate: Stage
    authorize: Stage
    transform_request: Stage
    route: Stage
    admit: Stage
    cache_lookup: Stage
    before_attempt: Stage
    transform_response: Stage
    transform_chunk: Stage
    cache_store: Stage
    after_response: Stage


def _csv_env(name: str) -> set[str]:
    return {p.strip() for p in os.environ.get(name, "").split(",") if p.strip()}


def _import_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def load_plugins(config: Any, extra: Iterable[tuple[str, Any]] = ()
                 ) -> tuple[PluginManager, list[PluginInfo]]:
    """Register the built-ins, installed entry points and configured plugins.

    ``extra`` registers ``(name, plugin)`` pairs directly (tests, embedding).  Raises
    :class:`ConfigError` (``plugins.<name>``) or :class:`PluginError`.
    """
    pm = PluginManager()
    infos: list[PluginInfo] = []
    blocked = _csv_env("HAPAX_BLOCK_PLUGINS")
    autoload = os.environ.get("HAPAX_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")

    def register(obj: Any, name: str, source: str) -> None:
        if name in blocked or pm.has_plugin(name) or pm.is_registered(obj):
            return
        if isinstance(obj, type):
            # A class is a plugin factory: one instance per gateway, so two gateways in one
            # process keep separate state (like the built-ins).  Registered as is, pluggy
            # would drop `self` from the argument names and every call would fail.
            try:
                obj = obj()
            except Exception as exc:
                raise PluginError(f"plugin {name!r} ({source}): {obj.__name__}() failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        try:
            pm.register(obj, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"plugin {name!r} ({source}): {exc}") from exc
        hooks = tuple(impl.name for impl in _impls_of(pm, obj))
        infos.append(PluginInfo(name, source, hooks))

    for mod in BUILTIN_PLUGINS:
        # Built-ins are instances, so two gateways in one process keep separate state.
        register(importlib.import_module(mod).Plugin(), mod, "builtin")

    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    wanted = set(config.plugins) if config is not None else set()
    for name, ep in sorted(eps.items()):
        if name in blocked or not (autoload or name in wanted):
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r} (entry point {ep.value}) failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        dist = getattr(ep, "dist", None)
        source = f"entry point ({dist.name} {dist.version})" if dist else "entry point"
        register(obj, name, source)

    extra = list(extra)
    problems = []
    # A name given in `extra` has a settings block but is neither entry point nor module.
    for name in sorted(wanted - set(eps) - {n for n, _ in extra}):
        if name in blocked:
            continue
        try:
            obj = _import_object(name)
        except (ImportError, AttributeError) as exc:
            known = ", ".join(sorted(eps)) or "none installed"
            problems.append((f"plugins.{name}", f"no such plugin: not an installed entry point "
                             f"({known}) and not an importable module ({exc})"))
            continue
        register(obj, name, "config")
    if problems:
        raise ConfigError(problems, getattr(config, "source", "<config>"))

    for name, obj in extra:
        register(obj, name, "extra")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # exc.plugin is the object; users know the plugin by the name they configured.
        raise PluginError(f"plugin {pm.get_name(exc.plugin) or exc.plugin!r}: {exc} — check "
                          f"the hook name against hapax.hookspecs") from exc
    return pm, infos


def _impls_of(pm: pluggy.PluginManager, plugin: Any) -> list[Any]:
    return list(pm.get_hookcallers(plugin) or [])


def configure_plugins(pm: pluggy.PluginManager, config: Any, gateway: Any) -> None:
    """Run ``hapax_configure`` on every plugin; a plugin's ConfigError is reported under
    ``plugins.<plugin name>``."""
    problems: list[tuple[str, str]] = []
    for impl in reversed(pm.hook.hapax_configure.get_hookimpls()):
        try:
            impl.function(*[{"config": config, "gateway": gateway}[a] for a in impl.argnames])
        except ConfigError as exc:
            prefix = f"plugins.{impl.plugin_name}"
            problems.extend(((f"{prefix}.{p}" if p and not p.startswith("[") else prefix + p),
                             m) for p, m in exc.problems)
    if problems:
        raise ConfigError(problems, getattr(config, "source", "<config>"))
