"""`clip=autoclip`: norm clipping at a percentile of the run's own norm history.

Seetharaman, Wichern, Pardo & Le Roux 2020, "AutoClip: Adaptive Gradient Clipping for
Source Separation Networks" (MLSP 2020; code: pseeth/autoclip, the `AutoClip` of the
paper's experiments): record every step's total gradient norm (before clipping;
p = norm_type, the paper's is 2); clip the step's gradients, as clip=norm does, at the
clip_percentile-th percentile of all norms recorded so far, the current one included.

The `autoclip` package the authors published later (autoclip/torch/quantile.py,
`QuantileClip`) changes three things, each a knob here, the paper's setting the default:
- autoclip_window: a bounded history (the package keeps the last 1,000 norms);
- autoclip_current=false: the threshold comes from earlier steps only, the current norm
  is recorded after; the first step is not clipped (threshold +inf);
- autoclip_scope=per_parameter (the package's default): every parameter tensor has its
  own history of its own norm and is clipped at its own percentile, as clip=norm_per_layer
  clips; `last_fired` then says which tensors were clipped. global: one history of the
  total norm, as in the paper.
The package's quantile is torch.quantile of a fraction (0.9 by default): clip_percentile
90 here. Its learning-rate regularisation (an option of `as_optimizer`) is not offered.

- Percentile: linear interpolation between the two nearest ranks, the default of
  numpy.percentile and torch.quantile. With the current norm included and one norm
  recorded, the threshold is that norm: the first step is never clipped.
- History: a preallocated device ring buffer per history (one row each) of the last
  autoclip_window norms, sorted each step (unfilled slots hold +inf and sort last).
  autoclip_window=0 keeps the whole run, as the paper does: the buffer starts at
  CAPACITY slots and doubles when full (decided on the host from the call count, so no
  sync); each step then sorts up to twice the steps run so far, cheap at the scale of
  gradlab's runs.
- Non-finite norm (inf/nan in a gradient): not recorded and not clipped; the fp16
  scaler skips that step, an fp32 run ends as diverged.
"""

from typing import Annotated

import torch

from gradlab.clip import ClipResult, Knob, TensorState, per_member, scale_, tensor_norms, total_norm_of
from gradlab.clip.norm import clip_coef, rescale_
from gradlab.errors import bad

SCOPES = ("global", "per_parameter")


class AutoClip(TensorState):
    """Clip at the `clip_percentile` (0-100] percentile of the last `autoclip_window` norms (0 = all)."""

    CAPACITY = 1024  # first size of the unbounded history

    def __init__(
        self,
        clip_percentile: Annotated[float, Knob("percentile of the norm history to clip at; (0, 100]")] = 10,
        autoclip_window: Annotated[
            int, Knob("steps of history kept, >= 2; 0 = the whole run (the paper's setting)", stacked=False)
        ] = 0,
        autoclip_current: Annotated[
            bool,
            Knob(
                "true: this step's norm is in the history it is clipped by (the paper's code) | false: "
                "earlier steps only (the autoclip package)",
                stacked=False,
            ),
        ] = True,
        autoclip_scope: Annotated[
            str,
            Knob(
                "global: the total norm, one history (the paper) | per_parameter: each tensor's norm, its "
                "own history (the autoclip package's default)",
                stacked=False,
            ),
        ] = "global",
        *,
        norm_type: float,
        model=None,
    ):
        p = clip_percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise bad("clip_percentile", p, "must be a number in (0, 100]")
        w = autoclip_window
        if isinstance(w, bool) or not isinstance(w, int) or not (w == 0 or w >= 2):
            raise bad(
                "autoclip_window", w, "must be an integer >= 2 (steps of history), or 0 = the whole run"
            )
        if not isinstance(autoclip_current, bool):
            raise bad("autoclip_current", autoclip_current, "must be true or false")
        if autoclip_scope not in SCOPES:
            raise bad("autoclip_scope", autoclip_scope, f"choose from {', '.join(SCOPES)}")
        self.per_parameter = autoclip_scope == "per_parameter"
        if self.per_parameter and model is None:
            raise bad(
                "autoclip_scope",
                autoclip_scope,
                "needs the model to count its tensors (build_clip(..., model))",
            )
        rows = sum(p.requires_grad for p in model.parameters()) if self.per_parameter else 1
        self.clip_percentile, self.window, self.current, self.norm_type = p, w, autoclip_current, norm_type
        self.resizable = ("history",) if w == 0 else ()
        # history: recorded norms, one row per history (+inf = empty slot); count: norms recorded in each
        self.state = {
            "history": torch.full((rows, w or self.CAPACITY), torch.inf),
            "count": torch.zeros(rows, dtype=torch.long),
        }
        if self.per_parameter:
            self.last_fired = torch.zeros(0, dtype=torch.bool)  # per tensor: clipped by the last call
        self._calls = 0  # host-side bound on count: when to grow the unbounded history

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        s = self.on(total_norm.device)
        if self.window == 0 and self._calls >= s["history"].shape[-1]:
            s["history"] = torch.cat([s["history"], torch.full_like(s["history"], torch.inf)], dim=-1)
        self._calls += 1
        history, count = s["history"], s["count"]  # (rows, slots), (rows); stacked members: (K, rows, ...)
        grads, stacked = [p.grad for p in params if p.grad is not None], total_norm.dim() > 0
        if self.per_parameter and len(grads) != history.shape[-2]:
            raise RuntimeError(
                f"autoclip_scope=per_parameter keeps {history.shape[-2]} histories, one per trainable "
                f"tensor, but {len(grads)} tensors have gradients"
            )
        norms = (
            tensor_norms(grads, self.norm_type, stacked) if self.per_parameter else total_norm.unsqueeze(-1)
        ).float()
        finite = torch.isfinite(norms)
        before = None if self.current else self._percentile(history, count)
        slot = (count % history.shape[-1]).unsqueeze(-1)
        history.scatter_(
            -1, slot, torch.where(finite.unsqueeze(-1), norms.unsqueeze(-1), history.gather(-1, slot))
        )
        count += finite
        threshold = torch.where(
            finite, self._percentile(history, count) if self.current else before, torch.inf
        )
        if not self.per_parameter:
            return rescale_(params, total_norm, threshold[..., 0])
        coefs = clip_coef(norms, threshold)
        scale_(grads, coefs.unbind(-1))
        self.last_fired = coefs < 1
        return ClipResult(total_norm_of(grads, self.norm_type, stacked), self.last_fired.any(-1))

    def _percentile(self, history: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Per row, the q-quantile of its recorded values (the last `window` of count),
        linearly interpolated (numpy's default); +inf for a row with none."""
        n = torch.clamp(count, max=history.shape[-1])
        last = (n - 1).clamp(min=0)
        ranked = torch.sort(history, dim=-1).values
        p = per_member(self.clip_percentile, last)
        position = last.double() * ((p.double() if isinstance(p, torch.Tensor) else p) / 100)
        below = position.floor().long()
        above = torch.minimum(below + 1, last)
        low, high = (
            ranked.gather(-1, below.unsqueeze(-1))[..., 0],
            ranked.gather(-1, above.unsqueeze(-1))[..., 0],
        )
        value = low + (high - low) * (position - below).float()
        return torch.where(n > 0, value, torch.inf)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._calls = int(self.state["count"].max())  # the one read of the state, at load time only


STRATEGY = AutoClip  # clip=autoclip
