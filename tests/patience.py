"""How long a test waits, for a condition or for a process, before it calls it hung.

Never a measure of speed: on a 2-core machine loaded with other jobs, a test's work takes many
times what it takes on a quiet one. A wait ends as soon as its condition holds; its limit only
stops a hang, so it is sized for a loaded machine.
"""

import time

PATIENCE = 1800.0  # seconds


def wait_for(condition, seconds: float = PATIENCE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no change in {seconds:.0f} s"
        time.sleep(0.1)
