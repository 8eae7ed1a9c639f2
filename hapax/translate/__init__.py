"""Translation between the provider APIs Hapax speaks (request, response, stream, error).

The pipeline carries a request in its front door's wire format; when a target's provider
speaks another API, the gateway translates with the functions re-exported here.
"""

from __future__ import annotations

from hapax.translate.anthropic import *  # noqa: F403
from hapax.translate.anthropic import __all__ as __all__
