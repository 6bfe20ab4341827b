"""Study lstm-copy: the recurrent thresholds of lstm-adding on the copy (memory) task."""

import math

NAME = "lstm-copy"
CLAIM = ("For recurrent networks, clip the global norm at about 1-5 (value clipping at 1 also works): "
         "on the copy task such runs beat the memoryless baseline and never diverge.")
SOURCE = ("seed tutorial 000 (RNN/LSTM thresholds 1-5); Zaremba et al. 2014 (5); Arjovsky et al. 2016 "
          "(copy task; uRNN baselines clip values at 1)")
SCALES = {
    "smoke": {"length": 5, "seeds": "0", "steps": 6, "extra": ["model.hidden_size=8", "eval_every=3"]},
    "quick": {"length": 20, "seeds": "0,1,2", "steps": 2000, "extra": ["model.hidden_size=64"]},
    "full": {"length": 100, "seeds": "0,1,2,3,4", "steps": 20000, "extra": []},
}


def run(lab, size) -> list:
    from gradlab.experiments.lstm_adding import arms_of
    from gradlab.experiments.study import arms, judge, outcomes

    length = size["length"]
    baseline = 10 * math.log(8) / (length + 20)  # memoryless: blanks right, the 10 symbols uniform over 8
    target = baseline / 2                         # "clearly beats the baseline": half its cross-entropy
    base = ["experiment=lstm_copy", f"task.length={length}", f"steps={size['steps']}", f"seed={size['seeds']}",
            *size["extra"]]
    runs = lab.sweep(f"T{length}", *arms_of(base))
    table = lab.table(f"T{length}", runs, metric="eval_loss", target=target,
                      by=["clip.mode", "clip.max_norm", "clip.clip_value"],
                      note=f"Copy task, T={length}; memoryless baseline {baseline:.4f} nats per position; "
                           f"target = half of it, {target:.4f}.")
    arm = arms(table)
    facts = outcomes(arm, lambda r: f" (final CE {r['eval_loss_final_mean']:.4f})")
    outcome = judge(arm, [arm["norm1"], arm["norm5"], arm["value1"]], "Norm 1, norm 5 and value 1")
    return [f"Seeds reaching CE <= {target:.4f}: {facts}.", outcome]
