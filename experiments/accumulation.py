"""Study accumulation: correct accumulation equals the big batch; the two classic mistakes do not."""

NAME = "accumulation"
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
    "SGD (not Adam, whose update is nearly invariant to the loss scale and would hide "
    "no_loss_division), norm clipping at 0.5 so that clipping fires; an MLP on digits."
)
SCALES = {
    "smoke": {"seeds": "0,1", "steps": 8, "k": 2, "batch": 8, "extra": ["eval_every=4"]},
    "quick": {"seeds": "0,1,2,3,4", "steps": 600, "k": 4, "batch": 16, "extra": []},
    "full": {"seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 3000, "k": 8, "batch": 16, "extra": []},
}


def run(lab, size):
    from gradlab.experiments.study import (
        CONTRADICTED,
        Verdict,
        difference,
        differs,
        per_seed,
        same,
        seed_noise,
    )

    k, b = size["k"], size["batch"]
    base = ["experiment=accumulation", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"]]
    accumulated = [*base, f"accum_steps={k}", f"batch_size={b}"]
    runs = lab.sweep(
        "accumulation",
        [*base, "accum_steps=1", f"batch_size={k * b}"],
        [*accumulated, "mistake=null,clip_each_micro_batch,no_loss_division"],
    )
    lab.table(
        "accumulation",
        runs,
        metric="eval_loss",
        by=["accum_steps", "mistake"],
        note=f"One batch of {k * b} vs {k} micro-batches of {b}; SGD, norm clipping at 0.5.",
    )
    runs = runs.assign(mistake=runs["mistake"].fillna("-"))
    big = per_seed(runs, "eval_loss_final", {"accum_steps": 1})
    margin = seed_noise(big)
    arm = {
        m: per_seed(runs, "eval_loss_final", {"accum_steps": k, "mistake": m})
        for m in ("-", "clip_each_micro_batch", "no_loss_division")
    }
    verdict = Verdict()
    control = same(difference(big, arm["no_loss_division"]), margin)
    verdict.control(
        control.outcome == CONTRADICTED,
        f"no_loss_division against the big batch, final eval loss {control.text}",
    )
    verdict.compare(
        "correct accumulation against the big batch, final eval loss", same(difference(big, arm["-"]), margin)
    )
    verdict.compare(
        "clip_each_micro_batch against correct accumulation, final eval loss",
        differs(difference(arm["-"], arm["clip_each_micro_batch"]), margin),
    )
    verdict.note(f"Margin: half the big batch's seed-to-seed standard deviation, {margin:.3g}.")
    return verdict
