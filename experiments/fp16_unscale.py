"""Study fp16-unscale: clip after GradScaler.unscale_, not on the scaled fp16 gradients."""

NAME = "fp16-unscale"
CLAIM = (
    "With fp16 and a GradScaler, gradients must be unscaled before they are measured and clipped: "
    "unscaled first, an fp16 run trains like fp32; clipping the scaled gradients clips (nearly) every "
    "step and trains differently."
)
SOURCE = "PyTorch AMP documentation (gradient clipping with unscale_); anchors section 6"
DEPARTURES = "No paper: the order of operations PyTorch documents. fp16 autocast runs on the CPU here."
SCALES = {
    "smoke": {"seeds": "0,1", "steps": 8, "extra": ["eval_every=4"]},
    "quick": {"seeds": "0,1,2,3,4", "steps": 500, "extra": []},
    "full": {"seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 3000, "extra": []},
}
ALWAYS = 0.9  # "clips (nearly) every step": on at least 90% of steps


def run(lab, size):
    from gradlab.experiments.study import (
        CONTRADICTED,
        Verdict,
        difference,
        differs,
        per_seed,
        same,
        seed_noise,
        within,
    )

    base = ["experiment=fp16_unscale", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"]]
    runs = lab.sweep("fp16", [*base, "precision=fp32"], [*base, "precision=fp16", "mistake=null,clip_scaled"])
    lab.table(
        "fp16",
        runs,
        metric="eval_loss",
        by=["precision", "mistake"],
        note="MLP on digits, Adam 1e-3, norm clipping at 1.0.",
    )
    runs = runs.assign(mistake=runs["mistake"].fillna("-"))
    fp32 = per_seed(runs, "eval_loss_final", {"precision": "fp32"})
    right = per_seed(runs, "eval_loss_final", {"precision": "fp16", "mistake": "-"})
    wrong = {"precision": "fp16", "mistake": "clip_scaled"}
    margin = seed_noise(fp32)
    verdict = Verdict()
    control = same(difference(fp32, per_seed(runs, "eval_loss_final", wrong)), margin)
    verdict.control(
        control.outcome == CONTRADICTED,
        f"clipping the scaled gradients against fp32, final eval loss {control.text}",
    )
    verdict.compare(
        "fp16 unscaled first against fp32, final eval loss", same(difference(fp32, right), margin)
    )
    verdict.compare(
        "clipping the scaled gradients, share of steps clipped",
        within(per_seed(runs, "clip_fraction", wrong), ALWAYS, 1, "clip fraction"),
    )
    verdict.compare(
        "clipping the scaled gradients against fp32, final eval loss",
        differs(difference(fp32, per_seed(runs, "eval_loss_final", wrong)), margin),
    )
    verdict.note(f"Margin: half fp32's seed-to-seed standard deviation, {margin:.3g}.")
    return verdict
