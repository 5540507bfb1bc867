"""ConfigError, the one exception of settings validation.

It lives below config, routing and security so that routing (the rule grammar) and security
(peers, SOP classes, TLS files) can raise it while config composes them: config imports those
two, never the other way round.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A setting is missing, unknown or of the wrong type; the message names the key."""
