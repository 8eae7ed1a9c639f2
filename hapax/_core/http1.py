"""HTTP/1.1 message handling: compiled unless HAPAX_NO_EXTENSIONS is set (see hapax._core)."""

from hapax._core import IMPLEMENTATION

if IMPLEMENTATION == "c":
    from hapax._core._http1_c import (
        BODY_FRAMED,
        BODY_TOO_LARGE,
        EXPECT_CONTINUE,
        RequestHead,
        chunk,
        response_head,
        status_line,
    )
else:  # the twins share one API; mypy sees two classes
    from hapax._core._http1_py import (  # type: ignore[assignment]
        BODY_FRAMED,
        BODY_TOO_LARGE,
        EXPECT_CONTINUE,
        RequestHead,
        chunk,
        response_head,
        status_line,
    )

__all__ = ["RequestHead", "BODY_TOO_LARGE", "EXPECT_CONTINUE", "BODY_FRAMED", "status_line",
           "response_head", "chunk"]
