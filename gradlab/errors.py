"""The one exception type that reaches the user as a single line."""


class ConfigError(ValueError):
    """Bad configuration, found at setup: the message names the key, the value and what is allowed."""


def bad(key: str, value, allowed: str) -> ConfigError:
    """A ConfigError in the standard shape: `key=value: allowed`."""
    return ConfigError(f"{key}={value}: {allowed}")
