"""The error hierarchy.

Every error Hapax raises on purpose is a :class:`HapaxError`.  Errors that reach a
client carry an HTTP status and the fields of the OpenAI error envelope
(``{"error": {"message", "type", "code", "param"}}``); subclasses also inherit the
matching built-in exception so callers can catch either.
"""

from __future__ import annotations

__all__ = [
    "HapaxError",
    "ConfigError",
    "RequestError",
    "BadRequest",
    "NotFound",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "AuthenticationError",
    "PermissionDenied",
    "Overloaded",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "PluginError",
]


class HapaxError(Exception):
    """Base class of every error Hapax raises on purpose."""


class ConfigError(HapaxError, ValueError):
    """pipeline.yaml is invalid.

    ``problems`` lists ``(path, message)`` pairs; ``str()`` renders one line per problem
    as ``FILE: KEY.PATH: what was expected``.
    """

    def __init__(self, problems: list[tuple[str, str]], file: str = "<config>") -> None:
        self.problems = problems
        self.file = file
        super().__init__(self.render())

    def render(self) -> str:
        lines = []
        for path, message in self.problems:
            where = f"{self.file}: {path}" if path else self.file
            lines.append(f"{where}: {message}")
        return "\n".join(lines)


class RequestError(HapaxError):
    """An error answered to the client, in the front door's error format."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or []


class BadRequest(RequestError, ValueError):
    status = 400
    type = "invalid_request_error"


class NotFound(RequestError, LookupError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(RequestError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationError(RequestError, PermissionError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(RequestError, PermissionError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class Overloaded(RequestError):
    status = 503
    type = "server_error"
    code = "overloaded"


class UpstreamError(RequestError, ConnectionError):
    """The provider could not be reached or answered something unusable (502)."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    """Connecting to the provider failed (refused, DNS, TLS)."""

    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The provider did not connect or answer in time (504)."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class DeadlineExceeded(UpstreamTimeout):
    """The request's deadline (the model's ``timeout`` or the ``x-hapax-timeout``
    header) passed before an answer: never retried or failed over (504)."""

    code = "deadline_exceeded"


class PluginError(HapaxError, RuntimeError):
    """A plugin could not be loaded or is invalid (misspelled hook, bad settings)."""
