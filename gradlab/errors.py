"""The exception types that reach the user as a single line."""

import os
import signal
import threading
from contextlib import contextmanager

TRACEBACK = "GRADLAB_TRACEBACK"  # "1": print whole tracebacks (set by --traceback or HYDRA_FULL_ERROR=1)


def full_errors() -> bool:
    """Print the whole traceback beside the one line (a failed run's, or a user error's)?"""
    return os.environ.get(TRACEBACK) == "1"


class ConfigError(ValueError):
    """Bad configuration, found at setup: the message names the key, the value and what is allowed."""


class LaunchError(RuntimeError):
    """A launcher stopped before every run of a sweep had ended (e.g. a worker process was killed)."""


class Interrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped a run or a sweep; the message says what was kept and how to go on,
    `code` is the exit code (130: SIGINT, 143: SIGTERM, as a shell reports a process they ended)."""

    def __init__(self, message: str, stopped_by: KeyboardInterrupt):
        super().__init__(message)
        self.code = exit_code(stopped_by)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption or time limit, `kill`), raised where the process is, as a
    Ctrl-C is: the run in progress is recorded as interrupted and keeps its last checkpoint."""


def stopped(e: KeyboardInterrupt) -> str:
    """What stopped a run, in a word or two."""
    return "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"


def exit_code(e: KeyboardInterrupt) -> int:
    return 143 if isinstance(e, Terminated) else 130


def _terminated(signum, frame):
    raise Terminated("SIGTERM")


@contextmanager
def sigterm_interrupts():
    """In this block, SIGTERM raises Terminated in the main thread (and the handler before is
    restored after), unless something else handles it already: submitit's job environment, which
    checkpoints and requeues on its own signal."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    if before not in (signal.SIG_DFL, _terminated):
        yield
        return
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation: torch's OutOfMemoryError (GPU), or the CPU allocator's RuntimeError."""
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


def bad(key: str, value, allowed: str) -> ConfigError:
    """A ConfigError in the standard shape: `key=value: allowed`."""
    return ConfigError(f"{key}={value}: {allowed}")


TINY = 1.1754943508222875e-38  # float32's smallest normal number: the runs' arithmetic


def positive(key: str, value, allowed: str = "must be a number > 0") -> float:
    """`value` as a float if it is a number > 0 (inf allowed), else a ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:  # `not >` rejects nan
        raise bad(key, value, allowed)
    if value < TINY:  # a denormal: float32 holds it as 0 or without precision
        raise bad(key, value, f"{allowed}, at least {TINY:.4g} (float32's smallest normal number)")
    return float(value)
