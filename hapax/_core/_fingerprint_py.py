"""Request fingerprints (pure-Python twin of ``_fingerprint_c``).

A stable 128-bit fingerprint of what a request *means*: its scope (the gateway key's
name, or "" when the config shares across keys), the model alias, and the canonical
form of the body — top-level fields in ``ignore`` and ``model`` left out, keys sorted at
every depth, insignificant whitespace gone (orjson's canonical serialisation).  Two
bodies that differ only in key order or spacing get the same fingerprint; any other
difference gives another.  Hash: xxh3-128.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson
import xxhash

__all__ = ["fingerprint"]

_SORT = orjson.OPT_SORT_KEYS


def fingerprint(scope: str, alias: str, body: dict[str, Any],
                ignore: Collection[str] = ()) -> bytes:
    """16 bytes identifying (scope, alias, canonical body minus ``ignore`` and model)."""
    kept = {k: v for k, v in body.items() if k != "model" and k not in ignore}
    h = xxhash.xxh3_128()
    h.update(scope.encode())
    h.update(b"\0")
    h.update(alias.encode())
    h.update(b"\0")
    h.update(orjson.dumps(kept, option=_SORT))
    return h.digest()
