"""Study zhang-lr-clip: smoothness grows with the gradient norm; clipping lets a large lr train.

The paper's setting (Zhang, He, Sra & Jadbabaie 2020; code JingzhaoZhang/why-clipping-accelerates,
main.py): AWD-LSTM on PTB with SGD; clipped SGD at lr 30 with the norm clipped at 0.25 against
unclipped SGD tuned over a grid of learning rates; smoothness estimated along the clipped training
trajectory (eval_smooth): both gradients on the same fixed data, at the parameters before a step
and at the midpoint of the step (gradlab's smoothness_every, gradlab/diagnostics.py), against the
gradient norm on that data; the paper fits L = L0 + L1 ||g|| (its Fig. 1).
"""

from gradlab.experiments.protocol import SUPERIORITY, Arm, Comparison, Control, Protocol, Seeds

NAME = "zhang-lr-clip"
SCALES = {
    "smoke": {
        "steps": 8,
        "grid": (1, 30),
        "extra": [
            "model.hidden_size=8",
            "task.seq_len=16",
            "eval_every=4",
            "task.eval_size=8",
            "smoothness_every=1",
        ],
        "seeds": (3, 3),
    },
    "quick": {
        "steps": 400,
        "grid": (0.3, 1, 3, 10, 30),
        "extra": ["model.hidden_size=64", "task.eval_size=100", "smoothness_every=20"],
        "seeds": (5, 15),
    },
    "full": {
        "steps": 20000,
        "grid": (0.3, 1, 3, 10, 30),
        "extra": ["model.hidden_size=512"],
        "seeds": (5, 15),
    },
}
LARGE, CLIP = 30, 0.25  # the paper's clipped setting
EFFECT = 0.02  # nats of held-out cross-entropy per byte
CORRELATION = 0.3  # a moderate correlation (Cohen 1988): smoothness visibly growing with the norm
CLAIM = (
    "In LSTM language models the local smoothness grows with the gradient norm ((L0, L1)-smoothness: "
    "L ~ L0 + L1 ||g|| with L1 > 0), and clipped SGD at a large learning rate trains better than "
    "unclipped SGD at its best tuned learning rate."
)
SOURCE = (
    'Zhang, He, Sra & Jadbabaie 2020, "Why gradient clipping accelerates training" (ICLR 2020), sec. 3 '
    "and Fig. 1; code JingzhaoZhang/why-clipping-accelerates"
)
DEPARTURES = (
    "A 64-unit LSTM on this Python's own sources for 400 steps (the paper: AWD-LSTM on PTB).",
    "The smoothness data S is the task's 100 evaluation windows (theirs: a tenth of the training data), "
    "estimated every 20 steps along the clipped run's trajectory.",
    "Smoothness growing with the norm is judged by the correlation of the two along each clipped run "
    "(its sign is L1's), not by the fitted L1, whose size has no scale to judge it against.",
    "The unclipped lr is tuned over the grid on the pilot seeds, not the evaluation seeds.",
)


def protocol(scale: str) -> Protocol:
    size = SCALES[scale]
    clipped = f"norm {CLIP:g}, lr {LARGE:g}"
    why = "two hundredths of a nat per byte: the held-out likelihood changes by 2%"
    return Protocol(
        name=NAME,
        claim=CLAIM,
        source=SOURCE,
        shared=("experiment=zhang_lr_clip", f"steps={size['steps']}", *size["extra"]),
        arms=(
            Arm("none, tuned lr", ("clip=none", "lr={tuned}")),
            Arm(f"none, lr {LARGE:g}", ("clip=none", f"lr={LARGE:g}")),
            Arm(clipped, ("clip=norm", f"max_norm={CLIP:g}", f"lr={LARGE:g}")),
        ),
        comparisons=(
            Comparison("none, tuned lr", clipped, "final_loss", SUPERIORITY, EFFECT, why),
            Comparison(
                0.0,
                clipped,
                "smoothness_r",
                SUPERIORITY,
                CORRELATION,
                "a moderate correlation",
                lower_is_better=False,
            ),
        ),
        control=Control(
            Comparison(f"none, lr {LARGE:g}", "none, tuned lr", "final_loss", SUPERIORITY, EFFECT, why),
            f"unclipped SGD at lr {LARGE:g} must end worse than at its tuned lr (a diverged run: twice the "
            "worst final loss)",
        ),
        seeds=Seeds(9000, *size["seeds"]),
        departures=DEPARTURES,
        notes=("The unclipped lr is tuned over the scale's grid on the pilot seeds, by final loss.",),
    )


def pilot(lab, protocol) -> dict:
    """The unclipped lr with the lowest mean final loss over the grid, on the pilot seeds."""
    from gradlab.experiments.study import final_loss, on_pilot_seeds

    grid = ",".join(f"{lr:g}" for lr in SCALES[lab.scale]["grid"])
    runs = on_pilot_seeds(lab, protocol, ["clip=none", f"lr={grid}"], label="tune")
    tuned = float(runs.assign(final=final_loss(runs)).groupby("lr")["final"].mean().idxmin())
    return {"tuned": f"{tuned:g}", "grid": grid}


def derive(runs):
    """smoothness_r: per run, the correlation of the smoothness estimates with the gradient norm."""
    return runs.assign(smoothness_r=[correlation(path) for path in runs["path"]])


def correlation(path) -> float:
    """Pearson's r of smoothness against gradient norm over one run's estimates (nan with < 3)."""
    import numpy as np

    from gradlab.compare import read_history

    pairs = read_history(path, ["smoothness_grad_norm", "smoothness"])
    if pairs is None:
        return float("nan")
    pairs = pairs[np.isfinite(pairs).all(axis=1) & (pairs > 0).all(axis=1)]
    return float(np.corrcoef(pairs.to_numpy().T)[0, 1]) if len(pairs) >= 3 else float("nan")


def table(protocol, values: dict) -> dict:
    return {
        "metric": "eval_loss",
        "note": f"Byte-level LSTM LM, plain SGD. Unclipped lr tuned over {values['grid']} on the pilot "
        "seeds: "
        f"{values['tuned']}.",
    }
