"""Study transformer-lm: does clipping the global norm near the model's own gradient norm widen the
range of stable learning rates, as nanoGPT, GPT-3 and LLaMA's clip at 1.0 is meant to?

The practice under test: nanoGPT (karpathy/nanoGPT train.py: grad_clip = 1.0, AdamW, warm-up),
GPT-3 (Brown et al. 2020: clip at 1.0) and LLaMA (Touvron et al. 2023: clip at 1.0) all clip at 1.0,
about the gradient norm of those models in training; this model's norm is smaller (about 0.3), so
the thresholds are set relative to it.
"""

from gradlab.experiments.protocol import SUPERIORITY, Arm, Comparison, Control, Protocol, Seeds

NAME = "transformer-lm"
SCALES = {
    "smoke": {
        "steps": 8,
        "lrs": (1e-3, 1e-2),
        "extra": ["model.d_model=16", "model.d_ff=32", "task.seq_len=16", "eval_every=4"],
        "seeds": (3, 3),
    },
    "quick": {
        "steps": 300,
        "lrs": (1e-2, 1e-1),
        "extra": ["model.d_model=64", "model.d_ff=256"],
        "seeds": (5, 15),
    },
    "full": {
        "steps": 5000,
        "lrs": (6e-4, 6e-3),
        "extra": ["model.n_layers=6", "model.d_model=384", "model.d_ff=1536", "task.seq_len=256"],
        "seeds": (5, 15),
    },
}
MULTIPLES = (1.0, 0.5)  # thresholds: these multiples of the unclipped pilot's median gradient norm
EFFECT = 0.02  # nats of held-out cross-entropy per byte
CLAIM = (
    "For a Transformer language model trained with AdamW, clipping the global norm at about the "
    "model's own gradient norm (nanoGPT, GPT-3, LLaMA: 1.0) widens the range of stable learning "
    "rates: at a learning rate where training without clipping spikes, the clipped run ends at a "
    "lower loss."
)
SOURCE = (
    "nanoGPT (karpathy/nanoGPT train.py, grad_clip=1.0); GPT-3 (Brown et al. 2020); "
    "LLaMA (Touvron et al. 2023)"
)
DEPARTURES = (
    "A 2-layer, 64-wide byte-level model on this Python's own sources at quick scale, for 300 steps, no "
    "warm-up (nanoGPT: 2,000 of 600,000 steps).",
    "Thresholds at 1x and 0.5x the median gradient norm of unclipped pilot runs at the comfortable lr "
    "(pilot seeds), not at 1.0: this model's norm is about 0.3, so 1.0 would never fire.",
    "Loss spikes: steps above 1.5x the median loss of the previous 50 (at least 10).",
    "Expected before the runs: not stressed. No unclipped pilot run spiked: 28 runs on the pilot seeds "
    "900-904 (d_model 64; lr 0.003 to 0.3; AdamW beta2 0.95 and 0.999; 300 and 1,000 steps), the "
    "largest step over its median 1.21x. At this scale a too-large lr raises the loss without spikes; "
    "the control, fixed before the runs, says whether the evaluation runs spike, and the comparisons "
    "say whether clipping lowers the loss at the large lr all the same.",
)


def protocol(scale: str) -> Protocol:
    size = SCALES[scale]
    calm, stress = size["lrs"]
    clipped = [f"norm {m:g}x" for m in MULTIPLES]
    why = "two hundredths of a nat per byte: the held-out likelihood changes by 2%"
    return Protocol(
        name=NAME,
        claim=CLAIM,
        source=SOURCE,
        shared=("experiment=transformer_lm", f"steps={size['steps']}", *size["extra"]),
        arms=(
            Arm(f"none, lr {calm:g}", ("clip=none", f"lr={calm:g}")),
            Arm(f"none, lr {stress:g}", ("clip=none", f"lr={stress:g}")),
            *[
                Arm(f"{name}, lr {stress:g}", ("clip=norm", f"max_norm={{threshold{i}}}", f"lr={stress:g}"))
                for i, name in enumerate(clipped)
            ],
        ),
        comparisons=tuple(
            Comparison(
                f"none, lr {stress:g}", f"{name}, lr {stress:g}", "final_loss", SUPERIORITY, EFFECT, why
            )
            for name in clipped
        ),
        control=Control(
            Comparison(
                f"none, lr {stress:g}", f"none, lr {calm:g}", "loss_spikes", SUPERIORITY, 1, "one spike"
            ),
            f"without clipping, lr {stress:g} must spike more than lr {calm:g}: the stress is an instability",
        ),
        seeds=Seeds(7000, *size["seeds"]),
        departures=DEPARTURES,
        notes=("A diverged run's final loss counts as twice the worst completed run's.",),
    )


def pilot(lab, protocol) -> dict:
    """The thresholds: multiples of the median gradient norm of unclipped runs at the comfortable lr."""
    from gradlab.experiments.study import on_pilot_seeds

    runs = on_pilot_seeds(lab, protocol, list(protocol.arms[0].overrides))  # the comfortable lr
    median = float(runs["grad_norm_median"].median())
    return {
        "median": median,
        **{f"threshold{i}": float(f"{m * median:.3g}") for i, m in enumerate(MULTIPLES)},
    }


def table(protocol, values: dict) -> dict:
    return {
        "metric": "eval_loss",
        "note": "Byte-level LM. Thresholds from the unclipped pilot at the comfortable lr: "
        + f"median gradient norm {values['median']:.3g}, so "
        + ", ".join(f"{m:g}x = {values[f'threshold{i}']:g}" for i, m in enumerate(MULTIPLES))
        + ". loss_spikes: steps above 1.5x the median loss of the previous 50 (at least 10).",
    }


def notes(runs, protocol, values: dict) -> list[str]:
    from gradlab.experiments.study import per_seed

    return [
        "Loss spikes per run and share of steps clipped: "
        + "; ".join(
            f"{a.name} {per_seed(runs, 'loss_spikes', a.name).mean():.1f}, "
            f"{per_seed(runs, 'clip_fraction', a.name).mean():.0%}"
            for a in protocol.arms
        )
        + "."
    ]
