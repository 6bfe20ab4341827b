"""Study seed-004: the tutorials' worked example (random targets) with and without norm clipping."""

from gradlab.experiments.protocol import EQUIVALENCE, SUPERIORITY, Arm, Comparison, Control, Protocol, Seeds

NAME = "seed-004"
SCALES = {
    "smoke": {"steps": 5, "seeds": (3, 3)},
    "quick": {"steps": 100, "seeds": (10, 30)},
    "full": {"steps": 100, "seeds": (10, 60)},
}
NEAR = 0.5  # "around Var(target)": final MSE within (1 +- NEAR) x Var(target)
SAME = 0.05  # "neither helps nor hurts": final MSE within 5% of Var(target)
FAST = 20  # the control: lr x20, where the net memorises the 64 points and the MSE falls
CLAIM = (
    "In the worked example (MLP 10-50-1, Adam 1e-3, random inputs and targets, clip_grad_norm_ "
    "at 1.0, 100 epochs) the loss wanders around Var(target): there is no signal to learn, and "
    "clipping neither helps nor hurts."
)
SOURCE = "seed tutorial 004 (the printed loss wanders around 0.6-1.5)"
DEPARTURES = ("None: the tutorial's own model, data, optimizer and budget.",)


def protocol(scale: str) -> Protocol:
    size = SCALES[scale]
    return Protocol(
        name=NAME,
        claim=CLAIM,
        source=SOURCE,
        shared=("experiment=seed_004", f"steps={size['steps']}"),
        arms=(
            Arm("none", ("clip=none",)),
            Arm("norm 1", ("clip=norm", "max_norm=1")),
            Arm(f"none, lr x{FAST}", ("clip=none", f"lr={FAST * 1e-3:g}")),
        ),
        comparisons=(
            *[
                Comparison(1.0, arm, "mse_over_var", EQUIVALENCE, NEAR, "the tutorial's 0.6-1.5 band")
                for arm in ("none", "norm 1")
            ],
            Comparison(
                "none",
                "norm 1",
                "mse_over_var",
                EQUIVALENCE,
                SAME,
                "5% of Var(target): a loss change too small to see among the tutorial's printed values",
            ),
        ),
        control=Control(
            Comparison(
                "none", f"none, lr x{FAST}", "mse_over_var", SUPERIORITY, SAME, "as the claim's margin"
            ),
            f"at lr x{FAST} the net memorises the 64 points: its final MSE must be lower than at the "
            "tutorial's lr, which shows the design sees a change of the claim's size",
        ),
        seeds=Seeds(4000, *size["seeds"]),
        departures=DEPARTURES,
    )


def variance() -> float:
    """Var(target) of the example's 64 random targets (the MSE of predicting their mean)."""
    from gradlab.tasks.regression import Regression

    task = Regression()
    task.load("cpu")
    return task.train[1].var(unbiased=False).item()


def derive(runs):
    """mse_over_var: the final training MSE over Var(target)."""
    return runs.assign(mse_over_var=runs["train_loss_final"] / variance())


def table(protocol, values: dict) -> dict:
    return {
        "metric": "train_loss",
        "note": "MSE on the 64 training samples (there is no held-out signal); "
        f"Var(target) = {variance():.3f}.",
    }
