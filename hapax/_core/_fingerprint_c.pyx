# cython: language_level=3, embedsignature=True
"""Request fingerprints (compiled twin of ``_fingerprint_py``; same result byte for
byte).  The canonical serialisation is orjson's (already C); what this unit saves is
the interpreter work around it: filtering the top level and feeding the hash."""

import orjson
import xxhash

cdef object _dumps = orjson.dumps
cdef int _SORT = orjson.OPT_SORT_KEYS
cdef object _xxh3_128 = xxhash.xxh3_128


def fingerprint(str scope, str alias, dict body, ignore=()):
    """16 bytes identifying (scope, alias, canonical body minus ``ignore`` and model)."""
    cdef dict kept = {}
    for k, v in body.items():
        if k != "model" and k not in ignore:
            kept[k] = v
    h = _xxh3_128()
    h.update(scope.encode() + b"\0" + alias.encode() + b"\0")
    h.update(_dumps(kept, option=_SORT))
    return h.digest()
