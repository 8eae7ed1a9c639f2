"""The hot path.  Each unit is a compiled Cython module (``_name_c``) with a pure-Python
twin (``_name_py``, the readable spec) and a selector module (``name``) that picks the
compiled one unless ``HAPAX_NO_EXTENSIONS`` is set (or the build has no compiler).

``IMPLEMENTATION`` is ``"c"`` when the compiled units are in use, ``"py"`` otherwise;
``MISSING`` says why they are not when nobody asked for that (a build without a
compiler, or a source checkout run without ``build_ext``): ``hapax serve`` warns with it.
"""

from __future__ import annotations

import os

NO_EXTENSIONS = os.environ.get("HAPAX_NO_EXTENSIONS", "") not in ("", "0")

try:
    if NO_EXTENSIONS:
        raise ImportError("HAPAX_NO_EXTENSIONS is set")
    # All or nothing: a partial build must not mix compiled and pure units.
    from hapax._core import (  # noqa: F401
        _fingerprint_c,
        _flight_c,
        _gcra_c,
        _histogram_c,
        _http1_c,
        _json_c,
        _ring_c,
        _shm_c,
        _shmcache_c,
        _sse_c,
    )

    IMPLEMENTATION = "c"
    MISSING: str | None = None
except ImportError as exc:
    IMPLEMENTATION = "py"
    MISSING = None if NO_EXTENSIONS else str(exc)

__all__ = ["NO_EXTENSIONS", "IMPLEMENTATION", "MISSING"]
