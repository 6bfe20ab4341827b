"""Study transformer-lm: does clipping the global norm at 1.0 widen the range of stable learning rates?

The practice under test: nanoGPT (karpathy/nanoGPT train.py: grad_clip = 1.0, AdamW, warm-up),
GPT-3 (Brown et al. 2020: clip at 1.0) and LLaMA (Touvron et al. 2023: clip at 1.0) all clip at 1.0.
"""

NAME = "transformer-lm"
CLAIM = (
    "For a Transformer language model trained with AdamW, clipping the global norm at 1.0 (or 0.5) "
    "widens the range of stable learning rates: at a learning rate too high for training without "
    "clipping (it ends worse than at a comfortable rate), the clipped run ends at a lower loss."
)
SOURCE = (
    "nanoGPT (karpathy/nanoGPT train.py, grad_clip=1.0); GPT-3 (Brown et al. 2020); "
    "LLaMA (Touvron et al. 2023)"
)
DEPARTURES = (
    "A 2-layer, 64-wide byte-level model on this Python's own sources at quick scale, for 400 steps; "
    "warm-up off, and on for a tenth of the run (nanoGPT: 2,000 of 600,000 steps); two learning rates, "
    "a comfortable one and the stress (at quick scale 1e-2 and 1e-1, from a pilot of no clipping at "
    "3e-3 to 1e-1, "
    "seeds 0-1, 400 steps: final eval loss 2.07-2.11, 1.90-1.93, 2.22-2.25, 2.64-2.70, no loss spikes), "
    "where the claim is judged without warm-up. Loss spikes: steps "
    "above 1.5x the median loss of the previous 50 (at least 10)."
)
SCALES = {
    "smoke": {
        "seeds": "0,1",
        "steps": 8,
        "lrs": (1e-3, 1e-2),
        "extra": ["model.d_model=16", "model.d_ff=32", "task.seq_len=16", "eval_every=4"],
    },
    "quick": {
        "seeds": "0,1,2,3,4",
        "steps": 300,
        "lrs": (1e-2, 1e-1),
        "extra": ["model.d_model=64", "model.d_ff=256"],
    },
    "full": {
        "seeds": "0,1,2,3,4",
        "steps": 5000,
        "lrs": (6e-4, 6e-3),
        "extra": ["model.n_layers=6", "model.d_model=384", "model.d_ff=1536", "task.seq_len=256"],
    },
}


def run(lab, size):
    from gradlab.experiments.study import HOLDS, Verdict, better, difference, fired, per_seed

    comfortable, stress = size["lrs"]
    warmup = size["steps"] // 10
    base = [
        "experiment=transformer_lm",
        f"steps={size['steps']}",
        f"seed={size['seeds']}",
        *size["extra"],
        f"lr={comfortable:g},{stress:g}",
        f"optim.warmup_steps=0,{warmup}",
    ]
    runs = lab.sweep("lm", [*base, "clip=none"], [*base, "clip=norm", "max_norm=0.5,1"])
    lab.table(
        "lm",
        runs,
        metric="eval_loss",
        by=["lr", "optim.warmup_steps", "clip.mode", "clip.max_norm"],
        note="Byte-level LM: the stability map, learning rate x warm-up x threshold. loss_spikes: steps "
        "above 1.5x the median loss of the previous 50 (at least 10).",
    )
    worst = (
        2 * runs.loc[runs["status"] == "completed", "eval_loss_final"].max()
    )  # what a diverged run counts as
    runs = runs.assign(final=runs["eval_loss_final"].where(runs["status"] == "completed", worst))
    none = {"clip.mode": "none", "lr": stress, "optim.warmup_steps": 0}
    calm = {**none, "lr": comfortable}
    degraded = better(difference(per_seed(runs, "final", none), per_seed(runs, "final", calm)), True)
    verdict = Verdict()
    verdict.control(
        degraded.outcome == HOLDS,
        f"no clipping at lr {stress:g} against lr {comfortable:g} (no warm-up), "
        f"final eval loss: the comfortable rate must end lower; {degraded.text}",
    )
    for threshold in (1.0, 0.5):
        arm = {**none, "clip.mode": "norm", "clip.max_norm": threshold}
        finding = better(difference(per_seed(runs, "final", none), per_seed(runs, "final", arm)), True)
        verdict.compare(
            f"norm {threshold:g} against none at lr {stress:g}, no warm-up, final eval loss (a diverged "
            "run: twice the worst)",
            finding._replace(text=f"{finding.text}; clipped on {fired(runs, arm):.1%} of steps"),
        )
    spikes = (
        runs[(runs["lr"] == stress) & (runs["optim.warmup_steps"] == 0)]
        .groupby(["clip.mode", "clip.max_norm"], dropna=False)["loss_spikes"]
        .mean()
    )
    verdict.note(
        "Loss spikes per run at the stress lr, no warm-up: "
        + ", ".join(f"{mode}{'' if mode == 'none' else f' {t:g}'} {n:.1f}" for (mode, t), n in spikes.items())
        + "."
    )
    for lr, steps in ((stress, warmup), (comfortable, 0)):
        where = {"clip.mode": "none", "lr": lr, "optim.warmup_steps": steps}
        other = better(
            difference(
                per_seed(runs, "final", where),
                per_seed(runs, "final", {**where, "clip.mode": "norm", "clip.max_norm": 1.0}),
            ),
            True,
        )
        verdict.note(
            f"Not part of the claim: at lr {lr:g} with {steps} warm-up steps, norm 1 against none, final "
            f"eval loss: {other.outcome}, {other.text}."
        )
    return verdict
