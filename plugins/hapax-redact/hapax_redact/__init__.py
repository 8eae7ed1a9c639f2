"""hapax-redact: mask e-mail addresses, phone numbers and payment card numbers in
prompts before they leave the gateway for a provider.

Enable it in pipeline.yaml::

    plugins:
      hapax-redact: {patterns: [email, phone, card]}

See README.md for the settings.
"""

from __future__ import annotations

from hapax_redact.patterns import PATTERNS, Pattern, Redactor, luhn_valid
from hapax_redact.plugin import NAME, RedactPlugin
from hapax_redact.settings import DEFAULT_REPLACEMENT, build_redactor

__version__ = "0.1.0"

__all__ = ["NAME", "PATTERNS", "DEFAULT_REPLACEMENT", "Pattern", "RedactPlugin", "Redactor",
           "build_redactor", "luhn_valid", "__version__"]
