"""A small schema engine: YAML data -> frozen dataclasses, with precise errors.

Each config field carries its documentation and a converter in its metadata.  The
builder walks a raw mapping, converts every field, reports unknown keys (with a
"did you mean"), and collects *all* problems so `hapax check` can list them at once.
The same metadata renders the configuration reference (docs/reference/config.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "INVALID",
    "Ctx",
    "Secret",
    "setting",
    "build",
    "interpolate",
    "conv_bool",
    "conv_int",
    "conv_str",
    "conv_enum",
    "conv_size",
    "conv_duration",
    "conv_secret",
    "conv_list",
    "conv_map",
    "conv_section",
    "parse_size",
    "parse_duration",
]


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


#: Returned by converters after they reported a problem.
INVALID: Any = _Invalid()


class Secret:
    """A secret value (API key).  Its repr and str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Ctx:
    """Collects problems while a config tree is built."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def error(self, path: str, message: str) -> Any:
        self.problems.append((path, message))
        return INVALID


Converter = Callable[[Any, str, Ctx], Any]


def setting(
    doc: str,
    conv: Converter,
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    shown_default: str | None = None,
) -> Any:
    """Declare a config field: its documentation, converter and default."""
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        metadata={"doc": doc, "conv": conv, "shown_default": shown_default},
    )


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not path:
        return str(key)
    return f"{path}.{key}"


def _typename(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def build(cls: type, raw: Any, path: str, ctx: Ctx) -> Any:
    """Build dataclass ``cls`` from ``raw``; report problems under ``path``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return ctx.error(path or "(top level)", f"expected a mapping, got {_typename(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("conv")}
    for key in raw:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            ctx.error(join(path, str(key)),
                      f"unknown key{suggestion} (expected one of: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    failed = False
    for name, f in fields.items():
        if name in raw:
            value = f.metadata["conv"](raw[name], join(path, name), ctx)
            if value is INVALID:
                failed = True
                continue
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.error(join(path, name), f"is required: {f.metadata['doc']}")
            failed = True
    if failed:
        return INVALID
    return cls(**kwargs)


# --- converters -------------------------------------------------------------------


def conv_bool(value: Any, path: str, ctx: Ctx) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"  # e.g. "${VERIFY_TLS}"
    return ctx.error(path, f"expected true or false, got {_typename(value)} {value!r}")


def conv_int(minimum: int | None = None, maximum: int | None = None) -> Converter:
    def conv(value: Any, path: str, ctx: Ctx) -> Any:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)  # e.g. port: "${PORT}" (interpolation yields strings)
        if isinstance(value, bool) or not isinstance(value, int):
            return ctx.error(path, f"expected an integer, got {_typename(value)} {value!r}")
        if minimum is not None and value < minimum:
            return ctx.error(path, f"expected an integer >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            return ctx.error(path, f"expected an integer <= {maximum}, got {value}")
        return value

    return conv


def conv_str(pattern: str | None = None, what: str = "a non-empty string") -> Converter:
    regex = re.compile(pattern) if pattern else None

    def conv(value: Any, path: str, ctx: Ctx) -> Any:
        if not isinstance(value, str) or not value:
            return ctx.error(path, f"expected {what}, got {_typename(value)} {value!r}")
        if regex is not None and not regex.fullmatch(value):
            return ctx.error(path, f"expected {what}, got {value!r}")
        return value

    return conv


def conv_enum(*choices: str) -> Converter:
    def conv(value: Any, path: str, ctx: Ctx) -> Any:
        if value not in choices:
            return ctx.error(path, f"expected one of {', '.join(choices)}; got {value!r}")
        return value

    conv.choices = choices  # type: ignore[attr-defined]
    return conv


_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "k": 1024, "m": 1024**2, "g": 1024**3,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_size(value: Any) -> int:
    """``4MiB`` -> 4194304.  A bare integer is a number of bytes.  Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    m = _SIZE_RE.fullmatch(value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(value)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``250ms``, ``3s``, ``10m``, ``1h30m`` -> seconds.  A bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(value)
        return float(value)
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            raise ValueError(value)
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(value)
    return total


def conv_size(value: Any, path: str, ctx: Ctx) -> Any:
    try:
        return parse_size(value)
    except ValueError:
        return ctx.error(path, f"expected a size such as 64KiB, 4MiB or 1000000 (bytes), "
                               f"got {value!r}")


def conv_duration(value: Any, path: str, ctx: Ctx) -> Any:
    try:
        return parse_duration(value)
    except ValueError:
        return ctx.error(path, f"expected a duration such as 250ms, 30s or 10m, got {value!r}")


def conv_secret(value: Any, path: str, ctx: Ctx) -> Any:
    if not isinstance(value, str) or not value:
        # Never echo the value: it may be a secret that was mistyped.
        return ctx.error(path, f"expected a non-empty string (usually \"${{ENV_VAR}}\"), "
                               f"got {_typename(value)}")
    return Secret(value)


def conv_list(item: Converter, *, min_items: int = 0) -> Converter:
    def conv(value: Any, path: str, ctx: Ctx) -> Any:
        if not isinstance(value, list):
            return ctx.error(path, f"expected a list, got {_typename(value)}")
        if len(value) < min_items:
            return ctx.error(path, f"expected at least {min_items} item(s), got {len(value)}")
        out = [item(v, join(path, i), ctx) for i, v in enumerate(value)]
        if any(v is INVALID for v in out):
            return INVALID
        return tuple(out)

    return conv


def conv_map(item: Converter, key: Converter | None = None) -> Converter:
    def conv(value: Any, path: str, ctx: Ctx) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return ctx.error(path, f"expected a mapping, got {_typename(value)}")
        out = {}
        bad = False
        for k, v in value.items():
            sub = join(path, str(k))
            if key is not None and key(k, sub, ctx) is INVALID:
                bad = True
                continue
            out[str(k)] = converted = item(v, sub, ctx)
            bad = bad or converted is INVALID
        return INVALID if bad else out

    return conv


def conv_section(cls: type) -> Converter:
    def conv(value: Any, path: str, ctx: Ctx) -> Any:
        return build(cls, value, path, ctx)

    conv.section = cls  # type: ignore[attr-defined]
    return conv


# --- ${ENV} interpolation ---------------------------------------------------------

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(raw: Any, path: str, ctx: Ctx, env: Any = os.environ) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; ``$$`` is a literal $."""
    if isinstance(raw, dict):
        return {k: interpolate(v, join(path, str(k)), ctx, env) for k, v in raw.items()}
    if isinstance(raw, list):
        return [interpolate(v, join(path, i), ctx, env) for i, v in enumerate(raw)]
    if not isinstance(raw, str) or "$" not in raw:
        return raw

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        val = env.get(name)
        if val is None or (val == "" and default is not None):
            if default is not None:
                return default
            ctx.error(path, f"environment variable {name} is not set "
                            f"(write ${{{name}:-default}} to give a default)")
            return m.group(0)
        return val

    return _ENV_RE.sub(sub, raw)
