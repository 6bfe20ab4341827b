"""Study transformer-lm: does clipping the global norm at 1.0 widen the range of stable learning rates?

The practice under test: nanoGPT (karpathy/nanoGPT train.py: grad_clip = 1.0, AdamW, warm-up),
GPT-3 (Brown et al. 2020: clip at 1.0) and LLaMA (Touvron et al. 2023: clip at 1.0) all clip at 1.0.
"""

NAME = "transformer-lm"
CLAIM = ("For a Transformer language model trained with AdamW, clipping the global norm at 1.0 (or 0.5) "
         "widens the range of stable learning rates: at a learning rate where training without clipping "
         "spikes or diverges, the clipped run has fewer loss spikes and a lower final loss.")
SOURCE = "nanoGPT (karpathy/nanoGPT train.py, grad_clip=1.0); GPT-3 (Brown et al. 2020); LLaMA (Touvron et al. 2023)"
DEPARTURES = ("A 2-layer, 64-wide byte-level model on this Python's own sources at quick scale, for 400 steps, "
              "without warm-up (nanoGPT warms up for 2,000 steps); two learning rates, a comfortable one and "
              "10x it, the stress. Loss spikes: steps above 1.5x the median loss of the previous 50.")
SCALES = {
    "smoke": {"seeds": "0,1", "steps": 8, "lrs": (1e-3, 1e-2),
              "extra": ["model.d_model=16", "model.d_ff=32", "task.seq_len=16", "eval_every=4"]},
    "quick": {"seeds": "0,1,2,3,4", "steps": 400, "lrs": (1e-3, 1e-2), "extra": ["model.d_model=64", "model.d_ff=256"]},
    "full": {"seeds": "0,1,2,3,4", "steps": 5000, "lrs": (6e-4, 6e-3),
             "extra": ["model.n_layers=6", "model.d_model=384", "model.d_ff=1536", "task.seq_len=256"]},
}


def run(lab, size):
    from gradlab.experiments.study import Verdict, better, difference, fired, per_seed

    comfortable, stress = size["lrs"]
    base = ["experiment=transformer_lm", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"],
            f"lr={comfortable:g},{stress:g}"]
    runs = lab.sweep("lm", [*base, "clip=none"], [*base, "clip=norm", "max_norm=0.5,1"])
    lab.table("lm", runs, metric="eval_loss", by=["lr", "clip.mode", "clip.max_norm"],
              note="Byte-level LM. loss_spikes: steps above 1.5x the median loss of the previous 50.")
    worst = 2 * runs.loc[runs["status"] == "completed", "eval_loss_final"].max()  # what a diverged run counts as
    runs = runs.assign(final=runs["eval_loss_final"].where(runs["status"] == "completed", worst))
    none = {"clip.mode": "none", "lr": stress}
    unstable = (per_seed(runs, "loss_spikes", none) > 0) | (per_seed(runs, "status", none) == "diverged")
    verdict = Verdict()
    verdict.control(int(unstable.sum()) * 2 > len(unstable),
                    f"no clipping at lr {stress:g} spikes or diverges in {int(unstable.sum())}/{len(unstable)} seeds "
                    "(it must in more than half)")
    for threshold in (1.0, 0.5):
        arm = {"clip.mode": "norm", "clip.max_norm": threshold, "lr": stress}
        for figure, what in (("loss_spikes", "loss spikes"), ("final", "final eval loss (a diverged run: twice the worst)")):
            finding = better(difference(per_seed(runs, figure, none), per_seed(runs, figure, arm)), True)
            verdict.compare(f"norm {threshold:g} against none at lr {stress:g}, {what}",
                            finding._replace(text=f"{finding.text}; clipped on {fired(runs, arm):.1%} of steps"))
    calm = better(difference(per_seed(runs, "final", {"clip.mode": "none", "lr": comfortable}),
                             per_seed(runs, "final", {"clip.mode": "norm", "clip.max_norm": 1.0, "lr": comfortable})),
                  True)
    verdict.note(f"At the comfortable lr {comfortable:g}, norm 1 against none, final eval loss (not part of the "
                 f"claim): {calm.outcome}, {calm.text}.")
    return verdict
