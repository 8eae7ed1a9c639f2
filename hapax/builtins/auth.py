"""Gateway keys: authentication and the per-key model allow-list.

Clients send ``Authorization: Bearer <key>`` (what the OpenAI SDKs send) or
``x-api-key: <key>``.  Keys are compared by SHA-256, so pipeline.yaml may hold only
hashes.  Without a ``keys`` section every caller is :data:`hapax.types.ANONYMOUS`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hapax.errors import AuthenticationError
from hapax.types import ANONYMOUS, Denial, Principal

#: Authorization header values remembered (valid ones only; bounded: a key's holder
#: could spell the same key many ways, "bearer" in any case or with extra spaces).
_HEADER_MEMO = 1024


class Plugin:
    def __init__(self) -> None:
        self.keys: dict[bytes, Principal] | None = None
        self.known: dict[str, Principal] = {}
        self.known_headers: dict[str, Principal] = {}

    def hapax_configure(self, config: Any) -> None:
        self.known = {}
        self.known_headers = {}
        if config.keys is None:
            self.keys = None
            return
        self.keys = {
            k.digest: Principal(k.name, None if "*" in k.models else frozenset(k.models),
                                {"priority": k.priority})  # the provider queues' class
            for k in config.keys
        }

    def hapax_authenticate(self, exchange: Any) -> Principal:
        if self.keys is None:
            return ANONYMOUS
        headers = exchange.headers
        auth = headers.get("authorization")
        if auth is not None:
            # A header seen before with a valid key: no parsing (the usual request).
            principal = self.known_headers.get(auth)
            if principal is not None:
                return principal
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("the Authorization header must be 'Bearer <key>'")
            token = token.strip()
        else:
            token = headers.get("x-api-key", "").strip()
            if not token:
                raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'",
                                          code="missing_api_key")
        principal = self.known.get(token)
        if principal is None:
            principal = self.keys.get(hashlib.sha256(token.encode()).digest())
            if principal is None:
                # Never echo the key, not even a prefix: it may be a real secret sent here
                # by mistake.
                raise AuthenticationError("invalid API key")
            # Only valid tokens are remembered, so this holds at most one entry per key;
            # it saves a SHA-256 per request (~2% of a proxied request's CPU).
            self.known[token] = principal
        if auth is not None and len(self.known_headers) < _HEADER_MEMO:
            self.known_headers[auth] = principal
        return principal

    def hapax_authorize(self, exchange: Any, principal: Principal) -> Denial | None:
        alias = exchange.alias
        if alias is not None and not principal.may_use(alias):
            return Denial(403, f"key {principal.name!r} may not use model {alias!r}",
                          "permission_error", "model_not_allowed")
        return None
