"""Translation between the provider APIs Hapax speaks (request, response, stream, error).

The pipeline carries a request in its front door's wire format; when a target's provider
speaks another API, the gateway translates with the functions re-exported here.
"""

from __future__ import annotations

from hapax.translate.anthropic import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_error_body,
    anthropic_error_to_openai,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    openai_error_to_anthropic,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
    openai_usage,
)

__all__ = [
    "anthropic_to_openai_request",
    "openai_to_anthropic_request",
    "openai_to_anthropic_response",
    "anthropic_to_openai_response",
    "anthropic_error_body",
    "openai_error_to_anthropic",
    "anthropic_error_to_openai",
    "openai_usage",
    "OpenAIToAnthropicStream",
    "AnthropicToOpenAIStream",
]
