"""Errors every level may raise; this module imports nothing of the package, so the engine can use it."""


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming field and allowed values."""
