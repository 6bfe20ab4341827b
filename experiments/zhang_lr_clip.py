"""Study zhang-lr-clip: smoothness grows with the gradient norm; clipping lets a large lr train."""

NAME = "zhang-lr-clip"
CLAIM = ("In LSTM language models the local smoothness grows with the gradient norm ((L0, L1)-smoothness), "
         "and clipping lets a much larger learning rate train than without clipping.")
SOURCE = "Zhang, He, Sra & Jadbabaie 2020, \"Why gradient clipping accelerates training\" (ICLR 2020)"
SCALES = {
    "smoke": {"seeds": "0", "steps": 12, "lrs": (1, 30), "extra": ["model.hidden_size=8", "task.seq_len=16",
                                                                    "eval_every=6", "smoothness_every=3"]},
    "quick": {"seeds": "0,1,2", "steps": 400, "lrs": (1, 30), "extra": ["model.hidden_size=64"]},
    "full": {"seeds": "0,1,2", "steps": 20000, "lrs": (1, 30), "extra": ["model.hidden_size=512"]},
}


def smoothness_pairs(paths):
    """(grad_norm, smoothness) at every step where a smoothness estimate was taken."""
    import pandas as pd

    from gradlab.compare import read_history

    import numpy as np

    frames = [read_history(p, ["grad_norm", "smoothness"]) for p in paths]
    pairs = pd.concat([f for f in frames if f is not None], ignore_index=True)
    return pairs[np.isfinite(pairs).all(axis=1) & (pairs["grad_norm"] > 0) & (pairs["smoothness"] > 0)]


def run(lab, size) -> list:
    from gradlab.experiments.study import arms

    small, large = size["lrs"]
    base = ["experiment=zhang_lstm_lm", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"],
            f"lr={small},{large}"]
    runs = lab.sweep("lm", [*base, "clip=none"], [*base, "clip=norm", "max_norm=0.25,5"])
    table = lab.table("lm", runs, metric="eval_loss", by=["lr", "clip.mode", "clip.max_norm"],
                      note="Byte-level LSTM LM, plain SGD. Smoothness: ||g(t+1) - g(t)|| / ||w(t+1) - w(t)||.")
    pairs = smoothness_pairs(runs["path"])
    correlation = pairs["grad_norm"].corr(pairs["smoothness"], method="spearman") if len(pairs) > 2 else float("nan")
    arm = arms(table)
    at_large = {name.split(" ")[0]: r for name, r in arm.items() if name.endswith(f"lr={large:g}")}
    none, clipped = at_large["none"], [at_large["norm0.25"], at_large["norm5"]]
    best_clipped = min(clipped, key=lambda r: r["eval_loss_final_mean"] if r["completed"] else float("inf"))
    trains = best_clipped["completed"] > 0 and (none["completed"] == 0 or
                                                best_clipped["eval_loss_final_mean"] < none["eval_loss_final_mean"])
    return [
        f"Smoothness against gradient norm ({len(pairs)} finite estimates over all runs): Spearman "
        f"correlation {correlation:.2f}: "
        + ("smoothness grows with the gradient norm, as claimed." if correlation > 0.3 else
           "no clear growth of smoothness with the gradient norm here."),
        f"At lr={large:g}: " + ", ".join(
            f"{n} {r['completed']}/{r['runs']} completed ({r['diverged']} diverged), final eval CE "
            f"{r['eval_loss_final_mean']:.4f}" for n, r in at_large.items())
        + ("; clipping lets the large learning rate train better than no clipping, as claimed." if trains else
           "; clipping does not let the large learning rate train better than no clipping here."),
    ]
