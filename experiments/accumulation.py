"""Study accumulation: correct accumulation equals the big batch; the two classic mistakes do not."""

from gradlab.experiments.protocol import DIFFERENCE, EQUIVALENCE, Arm, Comparison, Control, Protocol, Seeds

NAME = "accumulation"
SCALES = {
    "smoke": {"steps": 8, "k": 2, "batch": 8, "extra": ["eval_every=4"], "seeds": (3, 3)},
    "quick": {"steps": 600, "k": 4, "batch": 16, "extra": [], "seeds": (5, 20)},
    "full": {"steps": 3000, "k": 8, "batch": 16, "extra": [], "seeds": (5, 30)},
}
EFFECT = 0.01  # nats of held-out cross-entropy: the held-out likelihood changes by 1% (e^0.01)
CLAIM = (
    "Accumulating k micro-batches with the loss divided by k and one clip per optimizer step "
    "trains like one batch of k times the size; clipping every micro-batch, or not dividing the "
    "loss by k (a threshold k times looser), trains differently."
)
SOURCE = (
    "seed tutorial 003 (accumulation k=4, batch 16, combined with clipping; its example forgets "
    "loss / k); PyTorch AMP notes and nanoGPT (order of operations)"
)
DEPARTURES = (
    "SGD (not Adam, whose update is nearly invariant to the loss scale and would hide no_loss_division).",
    "An MLP on digits. no_loss_division is judged at norm 0.5 (clipping fires on about 75% of steps), "
    "clip_each_micro_batch at norm 0.1 (on every step, the micro-batches too). On the pilot seeds "
    "900-902, clipping each micro-batch at 0.5 changed the final loss by 0.0017 nats, within the "
    "effect of interest; at 0.1 by 0.084.",
)
WHY = "a hundredth of a nat: the held-out likelihood changes by 1%"
# Each mistake where it matters (chosen on the pilot seeds 900-902, quick scale): not dividing the loss
# by k makes the threshold k times looser, which shows where clipping fires on some steps only;
# clipping each micro-batch changes the update where the micro-batches themselves are clipped.
LOOSE, TIGHT = 0.5, 0.1


def protocol(scale: str) -> Protocol:
    size = SCALES[scale]
    k, b = size["k"], size["batch"]
    micro = (f"accum_steps={k}", f"batch_size={b}")
    big, small = ("accum_steps=1", f"batch_size={k * b}"), ("accum_steps=1", f"batch_size={b}")
    arms = {}
    for norm in (LOOSE, TIGHT):
        arms[f"one batch of {k * b}, norm {norm:g}"] = (*big, f"max_norm={norm:g}")
        arms[f"accumulated, norm {norm:g}"] = (*micro, f"max_norm={norm:g}")
    arms[f"no_loss_division, norm {LOOSE:g}"] = (*micro, f"max_norm={LOOSE:g}", "mistake=no_loss_division")
    arms[f"clip_each_micro_batch, norm {TIGHT:g}"] = (
        *micro,
        f"max_norm={TIGHT:g}",
        "mistake=clip_each_micro_batch",
    )
    arms[f"one batch of {b}, norm {LOOSE:g}"] = (*small, f"max_norm={LOOSE:g}")

    def compared(a: str, b_: str, kind: str) -> Comparison:
        return Comparison(a, b_, "eval_loss_final", kind, EFFECT, WHY)

    return Protocol(
        name=NAME,
        claim=CLAIM,
        source=SOURCE,
        shared=("experiment=accumulation", f"steps={size['steps']}", *size["extra"]),
        arms=tuple(Arm(name, overrides) for name, overrides in arms.items()),
        comparisons=(
            *[
                compared(f"one batch of {k * b}, norm {n:g}", f"accumulated, norm {n:g}", EQUIVALENCE)
                for n in (LOOSE, TIGHT)
            ],
            compared(f"accumulated, norm {LOOSE:g}", f"no_loss_division, norm {LOOSE:g}", DIFFERENCE),
            compared(f"accumulated, norm {TIGHT:g}", f"clip_each_micro_batch, norm {TIGHT:g}", DIFFERENCE),
        ),
        control=Control(
            compared(
                f"one batch of {k * b}, norm {LOOSE:g}", f"one batch of {b}, norm {LOOSE:g}", DIFFERENCE
            ),
            f"one batch of {b} (k times fewer samples per step, no accumulation) must train differently "
            f"from the batch of {k * b}: the design sees a difference of the claim's size",
        ),
        seeds=Seeds(5000, *size["seeds"]),
        departures=DEPARTURES,
    )


def table(protocol, values: dict) -> dict:
    return {
        "metric": "eval_loss",
        "note": f"SGD, norm clipping at {LOOSE:g} and {TIGHT:g}; an MLP on digits.",
    }
