"""Study lstm-adding: norm clipping at 1-5 (and value clipping at 1) for an LSTM on the adding problem,
at a learning rate where the unclipped LSTM fails.

The paper's setting (Arjovsky, Shah & Bengio 2016; code amarshah/complex_RNN, adding_problem.py and
models.py): adding problem, an LSTM baseline, batch 20, RMSProp (decay 0.9) at lr 1e-3,
gradients clipped elementwise at ±1 for the baselines; T = 100-750.
"""

NAME = "lstm-adding"
CLAIM = (
    "For an LSTM on the adding problem at a learning rate where training without clipping fails, "
    "clipping the global norm at 1 or at 5, or each gradient value at 1, solves the problem, and "
    "sooner than no clipping."
)
SOURCE = (
    "Arjovsky, Shah & Bengio 2016 (uRNN), code amarshah/complex_RNN: the adding problem and its "
    "LSTM baseline (RMSProp, value clipping at 1); Zaremba et al. 2014 (norm 5); seed tutorial 000 (1-5)"
)
DEPARTURES = (
    "T=50 at quick scale (the paper: 100 to 750) and 64 units, so that five seeds fit a CPU; "
    "RMSProp at 100x the paper's lr (0.1), the stress under test, where the paper used 1e-3; "
    "torch's RMSProp starts its squared-gradient average at 0 (theirs at 1e-3); solved = held-out "
    "MSE <= 0.01 (the paper plots MSE curves; predicting 1 scores 1/6). The stress lr was chosen by "
    "a pilot (T=50, seeds 0-1, 2,000 steps; lr 0.001 to 0.3 without clipping, 0.1 and 0.3 with "
    "norm 1) as the lowest lr at which unclipped training failed; the copy task reuses it."
)
SCALES = {
    "smoke": {"length": 6, "seeds": "0,1", "steps": 8, "extra": ["model.hidden_size=8", "eval_every=4"]},
    "quick": {"length": 50, "seeds": "0,1,2,3,4", "steps": 3000, "extra": ["model.hidden_size=64"]},
    "full": {"length": 200, "seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 20000, "extra": []},
}
TARGET = 0.01  # eval MSE counted as solved
STRESS = ["optim=rmsprop", "lr=0.1", "batch_size=20"]  # unclipped fails here (pilot: T=50, 2 seeds)
ARMS = {
    "none": ["clip=none"],
    "norm 1": ["clip=norm", "max_norm=1"],
    "norm 5": ["clip=norm", "max_norm=5"],
    "value 1": ["clip=value", "clip_value=1"],
}
WHERE = {
    "none": {"clip.mode": "none"},
    "norm 1": {"clip.mode": "norm", "clip.max_norm": 1.0},
    "norm 5": {"clip.mode": "norm", "clip.max_norm": 5.0},
    "value 1": {"clip.mode": "value", "clip.clip_value": 1.0},
}


def run(lab, size):
    return recurrent_study(
        lab,
        size,
        "experiment=lstm_adding",
        TARGET,
        "eval_loss",
        f"Adding problem, T={size['length']}; solved = eval MSE <= {TARGET}.",
    )


def recurrent_study(lab, size, experiment: str, target: float, metric: str, note: str):
    """The design lstm-adding and lstm-copy share: no clipping (the negative control), norm 1, norm 5
    and value 1 at the stress learning rate, on the same seeds, each run stopping at the target."""
    from gradlab.experiments.study import Verdict, against_control, control_fails

    length, budget = size["length"], size["steps"]
    base = [
        experiment,
        *STRESS,
        f"task.length={length}",
        f"steps={budget}",
        f"seed={size['seeds']}",
        f"stop_at_target={metric}:{target:g}",
        *size["extra"],
    ]
    runs = lab.sweep(f"T{length}", *[[*base, *overrides] for overrides in ARMS.values()])
    lab.table(
        f"T{length}",
        runs,
        note=note,
        metric=metric,
        target=target,
        by=["clip.mode", "clip.max_norm", "clip.clip_value"],
    )
    verdict = Verdict()
    verdict.control(*control_fails(runs, WHERE["none"], "no clipping at the stress lr"))
    for name in ("norm 1", "norm 5", "value 1"):
        against_control(verdict, runs, name, WHERE[name], WHERE["none"], budget)
    return verdict
