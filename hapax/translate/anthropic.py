"""Anthropic Messages API ⇄ OpenAI Chat Completions API, both ways.

Hapax carries a request in its front door's wire format; when the provider of a target
speaks the other API, the gateway translates the request body on the way up and the
answer (whole, streamed or an error) on the way down with the functions here.  They take
and return already-parsed JSON (plain dicts) or SSE event bytes, and raise only
:class:`~hapax.errors.BadRequest` (a request that cannot be expressed in the other API;
``param`` names the field) or :class:`~hapax.errors.UpstreamError` (a provider answer
that is malformed) on bad input.

What has no equivalent is dropped silently:

* Anthropic → OpenAI request: ``top_k``, ``thinking``, ``service_tier``, ``container``,
  ``mcp_servers``, ``cache_control`` marks, ``citations`` settings, and ``thinking`` /
  ``redacted_thinking`` blocks of earlier assistant turns.  ``tool_result`` ``is_error``
  is not expressible: the result's content is kept as is.
* OpenAI → Anthropic request: ``frequency_penalty``, ``presence_penalty``,
  ``logit_bias``, ``logprobs``, ``top_logprobs``, ``response_format`` (any type,
  including ``json_schema`` / ``json_object``: ask in the prompt instead), ``seed``,
  ``service_tier``, ``stream_options`` (Anthropic always reports usage), ``store``,
  ``metadata``, ``modalities``, ``audio``, ``prediction``, ``reasoning_effort``,
  ``web_search_options``, ``n: 1``, and messages' ``name``.  ``temperature`` is clamped
  from OpenAI's 0..2 to Anthropic's 0..1.  Empty text (Anthropic refuses empty text
  blocks) is left out, and so is a message left with nothing; consecutive messages of
  one role (tool results count as user) are merged into one turn, since Anthropic
  requires the roles to alternate.
* Responses: Anthropic ``thinking`` / ``redacted_thinking`` blocks and server-tool blocks
  (``server_tool_use``, ``web_search_tool_result``…) are dropped; an OpenAI
  ``refusal`` becomes text.

Refused with 400: OpenAI ``n > 1``, legacy ``functions`` / ``function_call`` and
``role: function`` messages, audio and file content parts, non-function tools; Anthropic
``document`` blocks, non-text content in ``tool_result`` and server tools.
"""


# A facade: the names come from the private modules, each exporting only its __all__.
# ruff: noqa: F403, F405
from hapax.translate._anthropic_request import *
from hapax.translate._anthropic_response import *
from hapax.translate._anthropic_stream import *

# The public API, listed once (hapax.translate re-exports it); each private module's own
# __all__ says which of these it defines.
__all__ = [
    "anthropic_to_openai_request", "openai_to_anthropic_request",
    "openai_to_anthropic_response", "anthropic_to_openai_response", "anthropic_error_body",
    "openai_error_to_anthropic", "anthropic_error_to_openai", "openai_usage",
    "OpenAIToAnthropicStream", "AnthropicToOpenAIStream",
]
