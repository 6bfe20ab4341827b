"""`clip=zclip`: clip the total norm when its z-score against running statistics spikes.

Kumar, Owen, Roy Chowdhury & Güra 2025, "ZClip: Adaptive Spike Mitigation for LLM
Pre-Training" (arXiv 2504.02507), z-score mode with adaptive scaling, as in the
authors' code:

- warm-up: the first zclip_warmup norms are not z-clipped; their mean and (population)
  variance initialise mu and sigma^2 (accumulated online, Welford's update);
- then, per step, z = (g - mu) / (sigma + 1e-6); if z > zclip_z the gradients are
  rescaled (as clip=norm does) to mu + zclip_z * sigma / (z / zclip_z), a threshold that
  tightens as the spike grows;
- mu and sigma^2 are EMAs (factor zclip_alpha) of the norm after z-clipping:
  mu <- a mu + (1 - a) g', sigma^2 <- a sigma^2 + (1 - a) (g' - mu)^2 with the new mu;
- zclip_max_norm (null = none) is a fixed cap on top, applied in warm-up too; like the
  authors' code, it clips the gradients but does not enter the statistics.

Non-finite norm (inf/nan in a gradient): not clipped and not counted in the statistics;
the fp16 scaler skips that step, an fp32 run ends as diverged. Everything stays on the
device and branch-free (torch.where).
"""

import math
from typing import Annotated

import torch

from gradlab.clip import ClipResult, Knob, TensorState
from gradlab.clip.norm import rescale_
from gradlab.errors import bad, positive

EPS = 1e-6  # added to sigma in the z-score (the authors' default)


class ZClip(TensorState):
    """Z-score spike clipping with EMA statistics of the total norm (see the module docstring)."""

    def __init__(
        self,
        zclip_z: Annotated[float, Knob("z-score above which the norm is a spike and is clipped; > 0")] = 2.5,
        zclip_alpha: Annotated[float, Knob("EMA factor of the norm's mean and variance; in (0, 1)")] = 0.97,
        zclip_warmup: Annotated[
            int, Knob("first steps, not z-clipped, whose norms initialise mean and variance; >= 1")
        ] = 25,
        zclip_max_norm: Annotated[
            float | None,
            Knob(
                "fixed cap on the total norm on top (warm-up included; the authors' default 1.0); "
                "> 0, null = none"
            ),
        ] = 1.0,
        *,
        norm_type: float,
        model=None,
    ):
        a = zclip_alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1:
            raise bad("zclip_alpha", a, "must be a number in (0, 1)")
        if isinstance(zclip_warmup, bool) or not isinstance(zclip_warmup, int) or zclip_warmup < 1:
            raise bad(
                "zclip_warmup", zclip_warmup, "must be an integer >= 1 (steps before z-clipping starts)"
            )
        self.zclip_alpha, self.zclip_warmup = float(a), zclip_warmup
        self.zclip_z = positive("zclip_z", zclip_z, "must be a number > 0")
        self.zclip_max_norm = (
            math.inf
            if zclip_max_norm is None
            else positive("zclip_max_norm", zclip_max_norm, "must be a number > 0, or null = no cap")
        )
        # mean, var: statistics of the norm; count: finite norms seen (warm-up while < zclip_warmup)
        self.state = {
            "mean": torch.zeros(()),
            "var": torch.zeros(()),
            "count": torch.zeros((), dtype=torch.long),
        }

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        s = self.on(total_norm.device)
        mean, var, count = s["mean"], s["var"], s["count"]
        g, a, z_max = total_norm.float(), self.zclip_alpha, self.zclip_z
        finite, warm = torch.isfinite(g), count < self.zclip_warmup
        std = var.sqrt()
        z = (g - mean) / (std + EPS)
        spike = finite & ~warm & (z > z_max)
        seen = torch.where(spike, mean + z_max * std / (z / z_max), g)  # g': the norm after z-clipping
        result = rescale_(
            params, total_norm, torch.where(spike, seen, torch.inf).clamp(max=self.zclip_max_norm)
        )
        k = (count + 1).float()  # warm-up: running mean and population variance of the first norms
        warm_mean = mean + (g - mean) / k
        warm_var = var + ((g - mean) * (g - warm_mean) - var) / k
        ema_mean = a * mean + (1 - a) * seen
        ema_var = a * var + (1 - a) * (seen - ema_mean) ** 2
        mean.copy_(torch.where(finite, torch.where(warm, warm_mean, ema_mean), mean))
        var.copy_(torch.where(finite, torch.where(warm, warm_var, ema_var), var))
        count += finite
        return result


STRATEGY = ZClip  # clip=zclip
