"""The one error type of every config loader."""


class ConfigError(ValueError):
    """A configuration field is unknown, missing, or contradicts another field."""
