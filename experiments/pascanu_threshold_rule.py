"""Study pascanu-threshold-rule: clip at 0.5-10x the average gradient norm (Pascanu et al. 2013).

The paper's setting (Pascanu, Mikolov & Bengio 2013; code pascanur/trainingRNNs, RNN_theano.py and
train.py): tanh RNN with 50 hidden units, SGD at lr 0.01, batch 20, norm clipping, temporal order
task (success: under 1% error), T = 50 to 200; sec. 3.2: "a good heuristic for setting this
threshold is to look at statistics on the average norm over a sufficiently large number of
updates. In our experiments we have noticed that for a given task and model size, training is
not very sensitive to this hyperparameter and the algorithm behaves well even for rather small
thresholds."
"""

NAME = "pascanu-threshold-rule"
CLAIM = ("Clipping the global norm at 0.5x to 10x the average unclipped gradient norm trains a tanh RNN on "
         "the temporal order task, where the same RNN without clipping does not.")
SOURCE = ("Pascanu, Mikolov & Bengio 2013, \"On the difficulty of training recurrent neural networks\", "
          "sec. 3.2 and 4.1; code pascanur/trainingRNNs")
DEPARTURES = ("T=40 at quick scale (the paper: 50 to 200) and 5,000 steps of 20 sequences (the paper: up to "
              "5 million sequences); T=40 was chosen by a pilot (seeds 0-1, 5,000 steps, clip none and norm 1 "
              "at T=30 and 40, T=50 and 100 at 3,000 steps) as a length at which unclipped training failed "
              "(T=40: 0.28 accuracy) while T=30 was solved by one of two seeds; the average norm is measured "
              "by an unclipped pilot of the same seeds, as the paper's heuristic says; without the paper's "
              "regulariser Omega (its sec. 3.3), which this claim does not need.")
SCALES = {
    "smoke": {"length": 10, "seeds": "0,1", "steps": 8, "pilot": 4, "extra": ["eval_every=4"]},
    "quick": {"length": 40, "seeds": "0,1,2,3,4", "steps": 5000, "pilot": 200, "extra": []},
    "full": {"length": 100, "seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 50000, "pilot": 1000,
             "extra": ["task.eval_size=10000"]},
}
MULTIPLES = (0.5, 1, 2, 10)
SUCCESS = 0.99  # held-out accuracy: under 1% error


def run(lab, size):
    from gradlab.experiments.study import Verdict, against_control, control_fails

    length, budget = size["length"], size["steps"]
    base = ["experiment=pascanu_rnn", f"task.length={length}", f"seed={size['seeds']}", *size["extra"]]
    pilot = lab.sweep(f"pilot-T{length}", [*base, "clip=none", f"steps={size['pilot']}"])
    average = float(pilot["grad_norm_mean"].mean())
    thresholds = [float(f"{m * average:.3g}") for m in MULTIPLES]
    main = [*base, f"steps={budget}", f"stop_at_target=eval_acc:{SUCCESS}"]
    runs = lab.sweep(f"T{length}", [*main, "clip=none"],
                     [*main, "clip=norm", "max_norm=" + ",".join(f"{t:g}" for t in thresholds)])
    lab.table(f"T{length}", runs, metric="eval_acc", target=SUCCESS, by=["clip.mode", "clip.max_norm"],
              note=f"Temporal order, T={length}. Unclipped pilot ({size['pilot']} steps): average gradient norm "
                   f"{average:.3g}, so 0.5x-10x = {', '.join(f'{t:g}' for t in thresholds)}.")
    verdict = Verdict()
    none = {"clip.mode": "none"}
    verdict.control(*control_fails(runs, none, "no clipping"))
    for multiple, threshold in zip(MULTIPLES, thresholds):
        against_control(verdict, runs, f"norm {threshold:g} ({multiple:g}x the average)",
                        {"clip.mode": "norm", "clip.max_norm": threshold}, none, budget)
    return verdict
