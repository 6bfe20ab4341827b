"""Study lstm-copy: the recurrent thresholds of lstm-adding on the copy (memory) task.

The paper's setting (Arjovsky, Shah & Bengio 2016; code amarshah/complex_RNN, memory_problem.py):
copy 10 symbols from an alphabet of 8 after T blanks, LSTM baseline, batch 20, RMSProp (decay 0.9)
at lr 1e-3, values clipped at ±1; T = 100-500; the memoryless baseline is 10 log 8 / (T + 20) nats.
"""

import math

NAME = "lstm-copy"
CLAIM = (
    "For an LSTM on the copy task at a learning rate where training without clipping fails, clipping "
    "the global norm at 1 or 5, or each gradient value at 1, learns to copy (half the memoryless "
    "baseline's cross-entropy), and sooner than no clipping."
)
SOURCE = (
    "Arjovsky, Shah & Bengio 2016 (uRNN), code amarshah/complex_RNN: the copy task and its LSTM "
    "baseline (RMSProp, value clipping at 1); seed tutorial 000 (1-5); Zaremba et al. 2014 (5)"
)
DEPARTURES = (
    "T=20 at quick scale (the paper: 100 to 500), which an LSTM learns on a CPU; 64 units; RMSProp "
    "at 100x the paper's lr (0.1), the stress under test; target = half the memoryless "
    "baseline's cross-entropy (the paper plots curves against that baseline)."
)
SCALES = {
    "smoke": {"length": 5, "seeds": "0,1", "steps": 8, "extra": ["model.hidden_size=8", "eval_every=4"]},
    "quick": {"length": 20, "seeds": "0,1,2,3,4", "steps": 3000, "extra": ["model.hidden_size=64"]},
    "full": {"length": 100, "seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 20000, "extra": []},
}


def run(lab, size):
    from gradlab.experiments.lstm_adding import recurrent_study

    length = size["length"]
    baseline = 10 * math.log(8) / (length + 20)  # memoryless: blanks right, the 10 symbols uniform over 8
    target = round(baseline / 2, 6)
    return recurrent_study(
        lab,
        size,
        "experiment=lstm_copy",
        target,
        "eval_loss",
        f"Copy task, T={length}; memoryless baseline {baseline:.4f} nats per position; "
        f"target = half of it, {target:.4f}.",
    )
