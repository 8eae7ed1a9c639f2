"""Registers the built-in provider kinds: ``openai``, ``anthropic`` and ``mock``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hapax.providers.anthropic import AnthropicProvider
from hapax.providers.mock import MockProvider
from hapax.providers.openai import OpenAIProvider


class Plugin:
    def hapax_register_providers(self, register: Callable[[str, Any], None]) -> None:
        register("openai", OpenAIProvider)
        register("anthropic", AnthropicProvider)
        register("mock", MockProvider)
