"""Stub for the compiled HTTP/1.1 unit (same API as ``_http1_py``)."""

from typing_extensions import disjoint_base

__all__ = ["RequestHead", "BODY_TOO_LARGE", "EXPECT_CONTINUE", "BODY_FRAMED", "status_line",
           "response_head", "chunk"]

BODY_TOO_LARGE: int
EXPECT_CONTINUE: int
BODY_FRAMED: int

@disjoint_base  # an extension type with C-level state: it cannot share a layout
class RequestHead:
    @property
    def url(self) -> bytes:
        """The request target so far, as sent."""
    @property
    def size(self) -> int:
        """Bytes of the head so far, as counted toward the head limit."""
    def __init__(self) -> None: ...
    def reset(self) -> None: ...
    def on_url(self, url: bytes) -> None: ...
    def on_header(self, name: bytes, value: bytes) -> None: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header lines so far, as ``(name, value)`` bytes, in order."""
    def scan(self, max_body: int) -> int:
        """``BODY_TOO_LARGE | EXPECT_CONTINUE | BODY_FRAMED``, as the head says."""
    def finish(self) -> tuple[dict[str, str], str, str | None]:
        """``(headers, path, query)`` for the Exchange."""

def status_line(status: int) -> bytes: ...
def response_head(status: int, headers: list[tuple[bytes, bytes]],
                  extra: list[tuple[bytes, bytes]], request_id: str, provider: str | None,
                  date: bytes, alt_svc: bytes, framing: bytes, connection: bytes,
                  body: bytes = b"") -> bytes: ...
def chunk(batch: list[bytes], head: bytes = b"", chunked: bool = True) -> bytes: ...
