"""The ``plugins: hapax-redact:`` settings block, validated into a :class:`Redactor`.

.. code-block:: yaml

    plugins:
      hapax-redact:
        patterns: [email, phone, card]   # which patterns run (default: all of them)
        replacement: "[{NAME}]"          # what a match becomes (default: "[EMAIL]" etc.)
        email: {replacement: "<email>"}  # per pattern: its own replacement...
        card: {enabled: false}           # ...or switched off

Problems are collected and raised together as one :class:`hapax.errors.ConfigError`
whose paths are relative to the block; the gateway reports them under
``plugins.hapax-redact.``.
"""

from __future__ import annotations

from typing import Any

from hapax.errors import ConfigError

from hapax_redact.patterns import PATTERNS, Redactor

__all__ = ["DEFAULT_REPLACEMENT", "build_redactor"]

#: ``{name}`` is the pattern's name (``email``), ``{NAME}`` the same in capitals.
DEFAULT_REPLACEMENT = "[{NAME}]"

_KNOWN = ", ".join(sorted(PATTERNS))
_PER_PATTERN_KEYS = ("enabled", "replacement")


def _template(value: Any, path: str, problems: list[tuple[str, str]]) -> str | None:
    if not isinstance(value, str):
        problems.append((path, f"expected a string such as \"[{{NAME}}]\", got "
                               f"{type(value).__name__}"))
        return None
    try:
        value.format(name="email", NAME="EMAIL")
    except KeyError as exc:
        problems.append((path, f"unknown placeholder {{{exc.args[0]}}}; use {{name}} or "
                               f"{{NAME}} (write {{{{ and }}}} for literal braces)"))
        return None
    except (IndexError, ValueError) as exc:
        problems.append((path, f"invalid template ({exc}); use {{name}} or {{NAME}} "
                               f"(write {{{{ and }}}} for literal braces)"))
        return None
    return value


def build_redactor(settings: dict[str, Any]) -> Redactor:
    """Validate the settings block; raise :class:`ConfigError` if anything is wrong."""
    problems: list[tuple[str, str]] = []
    for key in settings:
        if key not in ("patterns", "replacement", *PATTERNS):
            problems.append((str(key), f"unknown setting; expected patterns, replacement or "
                                       f"a pattern name ({_KNOWN})"))

    listed: list[str] = list(PATTERNS)
    raw_list = settings.get("patterns")
    if raw_list is not None:
        if not isinstance(raw_list, list):
            problems.append(("patterns", f"expected a list of pattern names ({_KNOWN})"))
        else:
            listed = []
            for i, name in enumerate(raw_list):
                if name not in PATTERNS:
                    problems.append((f"patterns[{i}]", f"unknown pattern {name!r} "
                                                       f"(known: {_KNOWN})"))
                elif name in listed:
                    problems.append((f"patterns[{i}]", f"{name!r} is listed twice"))
                else:
                    listed.append(name)

    default = DEFAULT_REPLACEMENT
    if "replacement" in settings:
        checked = _template(settings["replacement"], "replacement", problems)
        default = default if checked is None else checked

    rules = []
    for name, pattern in PATTERNS.items():
        enabled, template = name in listed, default
        block = settings.get(name)
        if block is not None:
            if not isinstance(block, dict):
                problems.append((name, "expected a mapping with `enabled` and/or "
                                       "`replacement`"))
                continue
            for key in block:
                if key not in _PER_PATTERN_KEYS:
                    problems.append((f"{name}.{key}", "unknown setting; expected enabled or "
                                                      "replacement"))
            if "enabled" in block:
                flag = block["enabled"]
                if not isinstance(flag, bool):
                    problems.append((f"{name}.enabled", "expected true or false"))
                elif flag and name not in listed:
                    problems.append((f"{name}.enabled", f"is true, but {name!r} is not in "
                                                        f"`patterns`; add it there"))
                else:
                    enabled = enabled and flag
            if "replacement" in block:
                checked = _template(block["replacement"], f"{name}.replacement", problems)
                template = template if checked is None else checked
        if enabled:
            rules.append((pattern, template.format(name=name, NAME=name.upper())))
    if problems:
        raise ConfigError(problems)
    return Redactor(rules)
