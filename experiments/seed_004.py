"""Study seed-004: the tutorials' worked example (random targets) with and without norm clipping."""

NAME = "seed-004"
CLAIM = ("In the worked example (MLP 10-50-1, Adam 1e-3, random inputs and targets, clip_grad_norm_ "
         "at 1.0, 100 epochs) the loss wanders around Var(target): there is no signal to learn, and "
         "clipping neither helps nor hurts.")
SOURCE = "seed tutorial 004 (the printed loss wanders around 0.6-1.5)"
SCALES = {
    "smoke": {"seeds": "0", "steps": 5},
    "quick": {"seeds": "0,1,2", "steps": 100},
    "full": {"seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 100},
}
NEAR = 0.5  # "around Var(target)": final loss within (1 ± NEAR) x Var(target)


def run(lab, size) -> list:
    from gradlab.experiments.study import arms
    from gradlab.tasks.regression import Regression

    base = ["experiment=seed004", f"steps={size['steps']}", f"seed={size['seeds']}"]
    runs = lab.sweep("seed004", [*base, "clip=none"], [*base, "clip=norm", "max_norm=1"])
    table = lab.table("seed004", runs, note="MSE on the 64 training samples (there is no held-out signal).",
                      metric="train_loss", by=["clip.mode", "clip.max_norm"])
    task = Regression()
    task.load("cpu")
    variance = task.train[1].var(unbiased=False).item()
    arm = arms(table)
    none, norm = arm["none"], arm["norm1"]
    near = all(abs(r["train_loss_final_mean"] / variance - 1) <= NEAR for r in (none, norm))
    stds = [s for s in (none["train_loss_final_std"], norm["train_loss_final_std"]) if s == s]  # nan: one seed
    spread = max(stds, default=0.0)
    difference = norm["train_loss_final_mean"] - none["train_loss_final_mean"]
    tolerance = max(2 * spread, 0.05 * variance)  # within noise: 2 seed std, at least 5% of Var(target)
    return [
        f"Var(target) = {variance:.3f}. Final MSE: none {none['train_loss_final_mean']:.3f} ± "
        f"{none['train_loss_final_std']:.3f}, norm 1.0 {norm['train_loss_final_mean']:.3f} ± "
        f"{norm['train_loss_final_std']:.3f}; clipping fired on {norm['clip_fraction_mean']:.0%} of steps.",
        ("Both stay within ±50% of Var(target): the loss wanders around it, as claimed."
         if near else "The loss falls well below Var(target): the network memorises the 64 random points, "
                      "so the claim that the loss stays around Var(target) does not hold."),
        f"Clipping changes the final MSE by {difference:+.3f} (noise tolerance ±{tolerance:.3f}): "
        + ("it neither helps nor hurts, as claimed." if abs(difference) <= tolerance else
           "it does change the outcome, against the claim."),
    ]
