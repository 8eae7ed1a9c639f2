"""The hooks: mask what the patterns find in chat prompts before they leave.

Scanned: every chat message's ``content`` (a string, or the ``text`` of its text parts)
and an embeddings request's ``input`` (a string or a list of strings).  Other fields
(tool-call arguments, image URLs, token arrays) are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from hapax.metrics import Counter

from hapax_redact.patterns import Redactor
from hapax_redact.settings import build_redactor

__all__ = ["NAME", "RedactPlugin"]

log = logging.getLogger("hapax_redact")

#: The entry-point name, and the key of the settings block under ``plugins:``.
NAME = "hapax-redact"


class RedactPlugin:
    """Registered once per gateway (the entry point names this class)."""

    def __init__(self) -> None:
        self.redactor = Redactor(())
        self.counter: Counter | None = None

    def hapax_configure(self, config: Any, gateway: Any) -> None:
        # Installed is not enabled: a plugin that rewrites prompts runs only when the
        # config asks for it.  Stepping out of the plugin manager (rather than returning
        # early on every request) keeps an idle install free: with no transform hook
        # the gateway forwards the client's bytes untouched.
        if NAME not in config.plugins:
            log.debug("%s is installed but not enabled (no `plugins: %s:` block)", NAME, NAME)
            gateway.pm.unregister(self)
            return
        self.redactor = build_redactor(config.plugin_settings(NAME))
        if not self.redactor:
            log.warning("%s: every pattern is disabled; nothing will be masked", NAME)
            gateway.pm.unregister(self)
            return
        self.counter = gateway.metrics.add(Counter(
            "hapax_redactions_total", "Values masked by hapax-redact before a request left "
            "for the provider, by pattern.", ("pattern",)))

    def hapax_transform_request(self, exchange: Any) -> None:
        body = exchange.json
        redact = self.redactor.redact
        counts: dict[str, int] = {}
        messages = body.get("messages")
        if type(messages) is list:
            for message in messages:
                if type(message) is not dict:
                    continue
                content = message.get("content")
                if type(content) is str:
                    masked = redact(content, counts)
                    if masked is not None:
                        message["content"] = masked
                elif type(content) is list:
                    for part in content:
                        if type(part) is dict and type(part.get("text")) is str:
                            masked = redact(part["text"], counts)
                            if masked is not None:
                                part["text"] = masked
        inputs = body.get("input")
        if type(inputs) is str:
            masked = redact(inputs, counts)
            if masked is not None:
                body["input"] = masked
        elif type(inputs) is list:
            for i, item in enumerate(inputs):
                if type(item) is str:
                    masked = redact(item, counts)
                    if masked is not None:
                        inputs[i] = masked
        if counts:
            exchange.state[NAME] = counts
            if self.counter is not None:
                for name, n in counts.items():
                    self.counter.inc((name,), n)
