"""The exception types that reach the user as a single line."""


class ConfigError(ValueError):
    """Bad configuration, found at setup: the message names the key, the value and what is allowed."""


class LaunchError(RuntimeError):
    """A launcher stopped before every run of a sweep had ended (e.g. a worker process was killed)."""


class Interrupted(RuntimeError):
    """Ctrl-C stopped a run or a sweep; the message says what was kept and how to go on."""


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation: torch's OutOfMemoryError (GPU), or the CPU allocator's RuntimeError."""
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


def bad(key: str, value, allowed: str) -> ConfigError:
    """A ConfigError in the standard shape: `key=value: allowed`."""
    return ConfigError(f"{key}={value}: {allowed}")


def positive(key: str, value, allowed: str = "must be a number > 0") -> float:
    """`value` as a float if it is a number > 0 (inf allowed), else a ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:  # `not >` rejects nan
        raise bad(key, value, allowed)
    return float(value)
