"""What every concern's settings share: the one-line start-up error.

Each concern declares its own settings beside its code (`smg.storage.settings`,
...); `smg.config.GatewayConfig` composes them. This module sits below all of
them so that any layer can refuse a bad value the same way.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line for the user (exit status 2)."""


def check_port(flag: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{flag} must be between 0 and 65535, got {value}")
