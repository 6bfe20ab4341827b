"""`skip_spikes=true`: skip the optimizer step on a gradient-norm (or loss) spike, with any clip mode.

OLMo-core style: a step whose watched value is more than `spike_sigma` standard deviations
above the mean of the last `spike_window` accepted steps is skipped (no update, optimizer
state untouched) once `spike_min_history` steps are known. Skipped values stay out of the
window, so one spike does not mask the next. The decision needs the value on the host:
one sync per step while this option is on.
"""

from __future__ import annotations

import math
from collections import deque

from gradlab.errors import bad, positive

METRICS = ("grad_norm", "loss")


class SpikeGuard:
    def __init__(self, sigma: float, window: int, min_history: int, metric: str):
        self.sigma = positive("spike_sigma", sigma)
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise bad("spike_window", window, "must be an integer >= 2")
        if (
            isinstance(min_history, bool)
            or not isinstance(min_history, int)
            or not 2 <= min_history <= window
        ):
            raise bad("spike_min_history", min_history, f"must be an integer in [2, spike_window={window}]")
        if metric not in METRICS:
            raise bad("spike_metric", metric, f"choose from {', '.join(METRICS)}")
        self.metric, self.min_history = metric, min_history
        self.history: deque = deque(maxlen=window)

    def is_spike(self, loss, grad_norm) -> bool:
        """Is this step a spike? Non-spikes join the window; a non-finite value is left to the
        divergence check (or the fp16 scaler), not counted as a spike."""
        value = float(grad_norm if self.metric == "grad_norm" else loss)
        if not math.isfinite(value):
            return False
        if len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((v - mean) ** 2 for v in self.history) / (len(self.history) - 1))
            if value > mean + self.sigma * max(std, 1e-8):  # a flat history still needs a real jump
                return True
        self.history.append(value)
        return False
