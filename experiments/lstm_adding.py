"""Study lstm-adding: norm clipping at 1-5 (and value clipping at 1) for an LSTM on the adding problem."""

NAME = "lstm-adding"
CLAIM = ("For recurrent networks, clip the global norm at about 1-5: such thresholds train stably and "
         "solve long-range tasks; value clipping at 1 also works; and clipping matters more as the "
         "sequence grows.")
SOURCE = ("seed tutorial 000 (RNN/LSTM thresholds 1-5); Zaremba et al. 2014 (global norm 5); "
          "Arjovsky et al. 2016 uRNN baselines (value 1); Merity et al. 2018 AWD-LSTM (0.25, a tight contrast)")
SCALES = {
    "smoke": {"lengths": [6], "seeds": "0", "steps": 6, "extra": ["model.hidden_size=8", "eval_every=3"]},
    "quick": {"lengths": [50, 100], "seeds": "0,1,2", "steps": 2000, "extra": ["model.hidden_size=64"]},
    "full": {"lengths": [100, 200], "seeds": "0,1,2,3,4", "steps": 10000, "extra": []},
}
TARGET = 0.01  # eval MSE counted as solved; predicting 1 scores 1/6


def arms_of(base: list) -> list:
    return [[*base, "clip=none"], [*base, "clip=norm", "max_norm=0.25,1,5"], [*base, "clip=value", "clip_value=1"]]


def run(lab, size) -> list:
    from gradlab.experiments.study import arms, growth, judge, outcomes, reached

    verdict, gaps, measurable = [], {}, False
    for length in size["lengths"]:
        base = ["experiment=lstm_adding", f"task.length={length}", f"steps={size['steps']}", f"seed={size['seeds']}",
                *size["extra"]]
        runs = lab.sweep(f"T{length}", *arms_of(base))
        table = lab.table(f"T{length}", runs, note=f"Adding problem, T={length}; solved = eval MSE <= {TARGET}.",
                          metric="eval_loss", target=TARGET, by=["clip.mode", "clip.max_norm", "clip.clip_value"])
        arm = arms(table)
        claimed = [arm["norm1"], arm["norm5"]]
        verdict.append(f"T={length}: seeds solved (MSE <= {TARGET}): {outcomes(arm)}. "
                       + judge(arm, claimed, "Norm 1 and norm 5"))
        measurable |= any(reached(r) for r in arm.values())
        gaps[length] = max(reached(r) for r in claimed) - reached(arm["none"])
    if len(gaps) > 1:
        verdict.append(growth(gaps, "the better of norm 1 and 5", measurable))
    return verdict
