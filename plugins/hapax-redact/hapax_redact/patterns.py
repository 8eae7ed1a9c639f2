"""What hapax-redact looks for: e-mail addresses, phone numbers, payment card numbers.

Each :class:`Pattern` is a regex compiled once at import, an optional check that a match
really is what it looks like (the Luhn checksum for cards, a digit count for phones),
and a pre-filter.  Python's regex engine pays some tens of nanoseconds per character to
scan text for a pattern without a literal prefix; substring tests run at memchr speed.
A text's :func:`shape` maps every digit to ``0`` and every separator to ``_``, and a
pattern's regex runs only if the shape contains one of the substrings every match must
contain (``@`` for e-mail, ``0000_0000_0000`` and friends for cards, ``+0`` or
``000_0000`` for phones).  So prose that merely mentions a year or a price costs a few
microseconds per kilobyte, not a regex scan.

Every regex starts its match only where a token starts (a lookbehind), so a long run of
letters or digits is scanned once, not once per position: hostile input cannot make
the scan quadratic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Pattern", "PATTERNS", "Redactor", "luhn_valid", "shape"]

# Digits become "0"; the separators of grouped numbers (space, "-", ".") become "_".
_SHAPE = bytes.maketrans(b"123456789 -.", b"000000000___")


def shape(text: str) -> str:
    """``text`` with every ASCII digit replaced by ``0`` and every space, ``-`` and ``.``
    by ``_``: what the pre-filters read.  (Through bytes: ``bytes.translate`` is a table
    lookup per byte, ``str.translate`` a dict lookup per character on non-ASCII text.
    Back to ``str`` because ``in`` on bytes is slow for a bytes needle: it tries the
    needle as an int first.)"""
    return text.encode("utf-8", "surrogatepass").translate(_SHAPE).decode("latin-1")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


_DOUBLE_SEPARATOR = re.compile(r"[ .-]{2}")


def _is_phone(text: str) -> bool:
    n = sum(ch.isdigit() for ch in text)
    if text.startswith("+"):
        # E.164: at most 15 digits; a country code plus a subscriber number is at least 8.
        if not 8 <= n <= 15 or _DOUBLE_SEPARATOR.search(text):
            return False
        return text.count("(") == text.count(")") <= 1
    return True  # the North American form is exact in the regex itself


_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    r"(?![A-Za-z0-9-])")

_PHONE = re.compile(
    # international: +<country code> and groups of digits, checked by _is_phone
    r"(?<![\w+])\+[0-9][0-9 ().-]{5,22}[0-9](?![0-9])"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-555-123-4567
    r"|(?<![\w+.-])(?:1[.-])?(?:\([0-9]{3}\) ?|[0-9]{3}[.-])[0-9]{3}[.-][0-9]{4}"
    r"(?!\w|[.-][0-9])")

_CARD = re.compile(
    # not inside a longer number, grouped or not
    r"(?<![\w.+-])(?<![0-9][ -])(?:[0-9]{13,19}"
    r"|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}(?:\1[0-9]{1,3})?"  # 4-4-4-4(-3)
    r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5})"  # 4-6-5 (Amex), 4-6-4 (Diners)
    r"(?!\w|[ .-][0-9])")


@dataclass(frozen=True)
class Pattern:
    """One kind of value to mask."""

    name: str
    regex: re.Pattern[str]
    #: pre-filter: every match contains one of these in its :func:`shape`
    needs: tuple[str, ...]
    #: a match is masked only if this says yes (``None``: every match is)
    check: Callable[[str], bool] | None = None

    def sub(self, replacement: str, text: str) -> tuple[str, int]:
        """``text`` with every (checked) match replaced, and how many were."""
        check = self.check
        if check is None:
            return self.regex.subn(lambda _m: replacement, text)
        hits = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal hits
            found = m.group()
            if not check(found):
                return found
            hits += 1
            return replacement

        return self.regex.sub(repl, text), hits


#: The built-in patterns, in the order they run: cards before phones, so a grouped card
#: number is never half-taken for a phone number.
PATTERNS: dict[str, Pattern] = {
    "card": Pattern("card", _CARD, ("0000_0000_0000", "0000_000000_0000", "0" * 13),
                    _is_card),
    "phone": Pattern("phone", _PHONE, ("+0", "000_0000"), _is_phone),
    "email": Pattern("email", _EMAIL, ("@",)),
}


class Redactor:
    """Applies ``(pattern, replacement)`` rules to texts, counting matches per pattern."""

    __slots__ = ("rules",)

    def __init__(self, rules: Iterable[tuple[Pattern, str]]) -> None:
        self.rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def redact(self, text: str, counts: dict[str, int]) -> str | None:
        """The masked text, or ``None`` when nothing in it matched.  ``counts`` gets
        the number of masked values per pattern name added to it."""
        seen = shape(text)
        changed = False
        for pattern, replacement in self.rules:
            for needle in pattern.needs:
                if needle in seen:
                    break
            else:
                continue
            text, hits = pattern.sub(replacement, text)
            if hits:
                counts[pattern.name] = counts.get(pattern.name, 0) + hits
                changed = True
        return text if changed else None
