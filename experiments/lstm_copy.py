"""Study lstm-copy: the recurrent thresholds of lstm-adding on the copy (memory) task.

The paper's setting (Arjovsky, Shah & Bengio 2016; code amarshah/complex_RNN, memory_problem.py):
copy 10 symbols from an alphabet of 8 after T blanks, LSTM baseline, batch 20, RMSProp (decay 0.9)
at lr 1e-3, values clipped at +-1; T = 100-500; the memoryless baseline is 10 log 8 / (T + 20) nats.
"""

import math

from gradlab.experiments import lstm_adding

NAME = "lstm-copy"
SCALES = {
    **lstm_adding.SCALES,
    "smoke": {**lstm_adding.SCALES["smoke"], "length": 5},
    "quick": {**lstm_adding.SCALES["quick"], "length": 20},
    "full": {**lstm_adding.SCALES["full"], "length": 100},
}
FIRST = 2000  # this study's evaluation seeds: 2000 on
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
    "T=20 at quick scale (the paper: 100 to 500), which an LSTM learns on a CPU; 64 units.",
    "RMSProp at 10x the paper's lr (0.01), lstm-adding's stress.",
    "target = half the memoryless baseline's cross-entropy (the paper plots curves against that baseline).",
)


def baseline(length: int) -> float:
    """The memoryless cross-entropy per position: blanks right, the 10 symbols uniform over 8."""
    return 10 * math.log(8) / (length + 20)


def target(scale: str) -> float:
    return round(baseline(SCALES[scale]["length"]) / 2, 6)


def protocol(scale: str):
    return lstm_adding.design(
        scale, SCALES, NAME, "lstm_copy", target(scale), FIRST, CLAIM, SOURCE, DEPARTURES
    )


def table(protocol, values: dict) -> dict:
    length = int(next(o for o in protocol.shared if o.startswith("task.length=")).split("=")[1])
    return {
        "metric": "eval_loss",
        "target": round(baseline(length) / 2, 6),
        "note": f"Copy task; memoryless baseline {baseline(length):.4f} nats per position; "
        "target = half of it.",
    }


notes = lstm_adding.notes
