"""Study zhang-lr-clip: smoothness grows with the gradient norm; clipping lets a large lr train.

The paper's setting (Zhang, He, Sra & Jadbabaie 2020; code JingzhaoZhang/why-clipping-accelerates,
main.py): AWD-LSTM on PTB with SGD; clipped SGD at lr 30 with the norm clipped at 0.25 against
unclipped SGD tuned over a grid of learning rates; smoothness estimated along the trajectory
(eval_smooth): both gradients on the same fixed data, at the parameters before a step and at the
midpoint of the step (gradlab's smoothness_every, gradlab/diagnostics.py), against the gradient
norm on that data; the paper fits L = L0 + L1 ||g|| (its Fig. 1).
"""

NAME = "zhang-lr-clip"
CLAIM = (
    "In LSTM language models the local smoothness grows with the gradient norm ((L0, L1)-smoothness: "
    "L ~ L0 + L1 ||g|| with L1 > 0), and clipped SGD at a large learning rate trains better than "
    "unclipped SGD at its best tuned learning rate."
)
SOURCE = (
    'Zhang, He, Sra & Jadbabaie 2020, "Why gradient clipping accelerates training" (ICLR 2020); '
    "code JingzhaoZhang/why-clipping-accelerates"
)
DEPARTURES = (
    "A 64-unit LSTM on this Python's own sources for 400 steps (the paper: AWD-LSTM on PTB); the "
    "smoothness data S is the task's 100 evaluation windows (theirs: a tenth of the training data), "
    "estimated every 20 steps; the L1 slope is fitted per run of unclipped SGD at the tuned lr (least "
    "squares) and judged by its t interval over seeds; the unclipped lr is tuned on seeds 100 and 101, "
    "not the evaluation seeds."
)
SCALES = {
    "smoke": {
        "seeds": "0,1",
        "tune": "100",
        "steps": 8,
        "grid": (1, 30),
        "extra": [
            "model.hidden_size=8",
            "task.seq_len=16",
            "eval_every=4",
            "task.eval_size=8",
            "smoothness_every=1",
        ],
    },
    "quick": {
        "seeds": "0,1,2,3,4",
        "tune": "100,101",
        "steps": 400,
        "grid": (0.3, 1, 3, 10, 30),
        "extra": ["model.hidden_size=64", "task.eval_size=100", "smoothness_every=20"],
    },
    "full": {
        "seeds": "0,1,2,3,4",
        "tune": "100,101,102",
        "steps": 20000,
        "grid": (0.3, 1, 3, 10, 30),
        "extra": ["model.hidden_size=512"],
    },
}
LARGE, CLIP = 30, 0.25  # the paper's clipped setting


def final_losses(runs):
    """Final eval loss, a run that did not complete counting as twice the worst completed one."""
    worst = 2 * runs.loc[runs["status"] == "completed", "eval_loss_final"].max()
    return runs.assign(final=runs["eval_loss_final"].where(runs["status"] == "completed", worst))


def run(lab, size):
    import pandas as pd
    from gradlab.experiments.study import Verdict, better, difference, fired, per_seed

    base = ["experiment=zhang_lstm_lm", f"steps={size['steps']}", *size["extra"]]
    grid = ",".join(f"{lr:g}" for lr in size["grid"])
    tuning = final_losses(lab.sweep("tune", [*base, f"seed={size['tune']}", "clip=none", f"lr={grid}"]))
    tuned = float(tuning.groupby("lr")["final"].mean().idxmin())
    evaluation = [*base, f"seed={size['seeds']}"]
    runs = final_losses(
        lab.sweep(
            "lm",
            [*evaluation, "clip=none", f"lr={tuned:g},{LARGE:g}"],
            [*evaluation, "clip=norm", f"max_norm={CLIP:g}", f"lr={LARGE:g}"],
        )
    )
    lab.table(
        "lm",
        runs,
        metric="eval_loss",
        by=["lr", "clip.mode"],
        note=f"Byte-level LSTM LM, plain SGD. Unclipped lr tuned over {grid} on seeds {size['tune']}: "
        f"{tuned:g}.",
    )
    none_large = {"clip.mode": "none", "lr": float(LARGE)}
    failed = per_seed(runs, "status", none_large) != "completed"
    worse = per_seed(runs, "final", none_large) > per_seed(runs, "final", {"clip.mode": "none", "lr": tuned})
    bad = failed | worse if tuned != LARGE else failed
    verdict = Verdict()
    verdict.control(
        int(bad.sum()) * 2 > len(bad),
        f"unclipped SGD at lr {LARGE:g} diverges, or ends worse than at "
        f"the tuned lr {tuned:g}, in {int(bad.sum())}/{len(bad)} seeds (it must in more than half)",
    )
    clipped = {"clip.mode": "norm", "lr": float(LARGE)}
    finding = better(
        difference(
            per_seed(runs, "final", {"clip.mode": "none", "lr": tuned}), per_seed(runs, "final", clipped)
        ),
        True,
    )
    verdict.compare(
        f"clipped SGD (norm {CLIP:g}, lr {LARGE:g}) against unclipped SGD at its tuned lr {tuned:g}, "
        "final eval loss",
        finding._replace(text=f"{finding.text}; clipped on {fired(runs, clipped):.1%} of steps"),
    )
    tuned_runs = runs[(runs["clip.mode"] == "none") & (runs["lr"] == tuned)]
    slopes = pd.Series(
        {seed: slope(smoothness_pairs([path])) for seed, path in zip(tuned_runs["seed"], tuned_runs["path"])}
    ).dropna()
    growth = better(difference(pd.Series(0.0, index=slopes.index), slopes), lower_is_better=False)
    verdict.compare(
        f"smoothness against gradient norm, slope L1 of L = L0 + L1 ||g|| per run of unclipped SGD "
        f"at lr {tuned:g}",
        growth,
    )
    return verdict


def slope(pairs) -> float:
    """The least-squares L1 of L = L0 + L1 ||g|| over one run's estimates (nan with fewer than 3)."""
    import numpy as np

    if len(pairs) < 3:
        return float("nan")
    return float(np.polyfit(pairs["smoothness_grad_norm"], pairs["smoothness"], 1)[0])


def smoothness_pairs(paths):
    """(smoothness_grad_norm, smoothness) at every step where a smoothness estimate was taken."""
    import numpy as np
    import pandas as pd

    from gradlab.compare import read_history

    columns = ["smoothness_grad_norm", "smoothness"]
    frames = [f for f in (read_history(p, columns) for p in paths) if f is not None]
    if not frames:
        return pd.DataFrame(columns=columns)
    pairs = pd.concat(frames, ignore_index=True)[columns]
    return pairs[np.isfinite(pairs).all(axis=1) & (pairs > 0).all(axis=1)]
