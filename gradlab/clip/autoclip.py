"""`clip=autoclip`: global-norm clipping at a percentile of the run's own norm history.

Seetharaman, Wichern, Pardo & Le Roux 2020, "AutoClip: Adaptive Gradient Clipping for
Source Separation Networks" (MLSP 2020): record every step's total gradient norm (before
clipping; p = norm_type, the paper's is 2); clip the step's gradients, as clip=norm
does, at the clip_percentile-th percentile of all norms recorded so far, the current one
included.

- Percentile: linear interpolation between the two nearest ranks, the default of
  numpy.percentile and torch.quantile (what the paper's code calls, np.percentile).
  With one norm recorded the threshold is that norm: the first step is never clipped.
- History: a preallocated device ring buffer of the last autoclip_window norms, sorted
  each step (unfilled slots hold +inf and sort last). autoclip_window=0 keeps the whole
  run, as the paper does: the buffer starts at CAPACITY slots and doubles when full
  (decided on the host from the call count, so no sync); each step then sorts up to
  twice the steps run so far, cheap at the scale of gradlab's runs.
- Non-finite norm (inf/nan in a gradient): not recorded and not clipped; the fp16
  scaler skips that step, an fp32 run ends as diverged.
"""

import torch

from gradlab.clip import ClipResult, TensorState
from gradlab.clip.norm import rescale_
from gradlab.errors import bad


class AutoClip(TensorState):
    """Clip at the `clip_percentile` (0-100] percentile of the last `autoclip_window` total norms (0 = all)."""

    CAPACITY = 1024  # first size of the unbounded history

    def __init__(self, clip_percentile: float, autoclip_window: int, norm_type: float, model=None):
        p = clip_percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise bad("clip_percentile", p, "must be a number in (0, 100]")
        w = autoclip_window
        if isinstance(w, bool) or not isinstance(w, int) or not (w == 0 or w >= 2):
            raise bad("autoclip_window", w, "must be an integer >= 2 (steps of history), or 0 = the whole run")
        self.q, self.window = p / 100, w
        self.resizable = ("history",) if w == 0 else ()
        # history: recorded norms (+inf = empty slot); count: norms recorded so far
        self.state = {"history": torch.full((w or self.CAPACITY,), torch.inf),
                      "count": torch.zeros((), dtype=torch.long)}
        self._calls = 0  # host-side bound on count: when to grow the unbounded history

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        s = self.on(total_norm.device)
        if self.window == 0 and self._calls >= len(s["history"]):
            s["history"] = torch.cat([s["history"], torch.full_like(s["history"], torch.inf)])
        self._calls += 1
        history, count = s["history"], s["count"]
        finite = torch.isfinite(total_norm)
        slot = (count % len(history)).view(1)
        history.index_copy_(0, slot, torch.where(finite, total_norm.float(), history.index_select(0, slot)))
        count += finite
        threshold = torch.where(finite, self._percentile(history, torch.clamp(count, 1, len(history))), torch.inf)
        return rescale_(params, total_norm, threshold)

    def _percentile(self, history: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """The q-quantile of the n (>= 1) recorded values, linearly interpolated (numpy's default)."""
        ranked = torch.sort(history).values
        position = (n - 1).double() * self.q
        below = position.floor().long()
        above = torch.minimum(below + 1, n - 1)
        low, high = ranked.index_select(0, below.view(1))[0], ranked.index_select(0, above.view(1))[0]
        return low + (high - low) * (position - below).float()

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._calls = int(self.state["count"])  # the one read of the state, at load time only
