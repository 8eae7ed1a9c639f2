"""Request fingerprints: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._fingerprint_c import fingerprint
else:  # the twins share one API
    from hapax._core._fingerprint_py import fingerprint  # type: ignore[assignment]

__all__ = ["fingerprint"]
