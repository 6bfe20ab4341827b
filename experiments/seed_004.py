"""Study seed-004: the tutorials' worked example (random targets) with and without norm clipping."""

NAME = "seed-004"
CLAIM = (
    "In the worked example (MLP 10-50-1, Adam 1e-3, random inputs and targets, clip_grad_norm_ "
    "at 1.0, 100 epochs) the loss wanders around Var(target): there is no signal to learn, and "
    "clipping neither helps nor hurts."
)
SOURCE = "seed tutorial 004 (the printed loss wanders around 0.6-1.5)"
DEPARTURES = "None: the tutorial's own model, data, optimizer and budget."
SCALES = {
    "smoke": {"seeds": "0,1", "steps": 5},
    "quick": {"seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 100},
    "full": {"seeds": ",".join(map(str, range(30))), "steps": 100},
}
NEAR = 0.5  # "around Var(target)": final loss within (1 ± NEAR) x Var(target)
SAME = 0.05  # "neither helps nor hurts": final MSE within 5% of Var(target)
CONTROL = 20  # lr x20: a change the design must see (the loss falls as the net memorises the 64 points)


def run(lab, size):
    from gradlab.experiments.study import CONTRADICTED, Verdict, difference, per_seed, same, within

    from gradlab.tasks.regression import Regression

    base = ["experiment=seed004", f"steps={size['steps']}", f"seed={size['seeds']}"]
    runs = lab.sweep(
        "seed004",
        [*base, "clip=none"],
        [*base, "clip=norm", "max_norm=1"],
        [*base, "clip=none", f"lr={CONTROL * 1e-3:g}"],
    )
    lab.table(
        "seed004",
        runs,
        note="MSE on the 64 training samples (there is no held-out signal).",
        metric="train_loss",
        by=["clip.mode", "lr"],
    )
    task = Regression()
    task.load("cpu")
    variance = task.train[1].var(unbiased=False).item()
    none = per_seed(runs, "train_loss_final", {"clip.mode": "none", "lr": 1e-3})
    norm = per_seed(runs, "train_loss_final", {"clip.mode": "norm"})
    fast = per_seed(runs, "train_loss_final", {"clip.mode": "none", "lr": CONTROL * 1e-3})
    verdict = Verdict()
    control = same(difference(none, fast), SAME * variance)
    verdict.control(control.outcome == CONTRADICTED, f"lr x{CONTROL} changes the final MSE by {control.text}")
    verdict.note(f"Var(target) = {variance:.3f}.")
    for name, values in (("none", none), ("norm 1.0", norm)):
        verdict.compare(
            f"{name}, final MSE around Var(target)",
            within(values / variance, 1 - NEAR, 1 + NEAR, "final MSE / Var(target)"),
        )
    verdict.compare("norm 1.0 against none, final MSE", same(difference(none, norm), SAME * variance))
    return verdict
