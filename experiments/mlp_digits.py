"""Study mlp-digits: on a well-conditioned MLP problem, clipping rarely fires and changes little."""

NAME = "mlp-digits"
CLAIM = (
    "For a well-conditioned MLP (digits, Adam 1e-3), clipping the global norm at 1 or 5 rarely fires "
    "(on under 5% of steps) and changes held-out accuracy by under one point."
)
SOURCE = (
    "seed tutorials 000-004 (clipping matters for RNNs, Transformers, RL, GANs; not singled out for MLPs)"
)
DEPARTURES = "No paper states this claim; it is the tutorials' implicit one, tested at their thresholds."
SCALES = {
    "smoke": {"seeds": "0,1", "steps": 8, "extra": ["eval_every=4"]},
    "quick": {"seeds": "0,1,2,3,4,5,6,7", "steps": 1000, "extra": []},
    "full": {"seeds": "0,1,2,3,4,5,6,7,8,9", "steps": 5000, "extra": []},
}
RARE = 0.05  # "rarely fires": on under 5% of steps
LITTLE = 0.01  # "changes little": held-out accuracy within one point
CONTROL = 1e-4  # value clipping this tight changes every update's direction: it must change the outcome


def run(lab, size):
    from gradlab.experiments.study import CONTRADICTED, Verdict, difference, per_seed, same, within

    base = ["experiment=mlp_digits", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"]]
    runs = lab.sweep(
        "digits",
        [*base, "clip=none"],
        [*base, "clip=norm", "max_norm=1,5"],
        [*base, "clip=value", f"clip_value={CONTROL:g}"],
    )
    lab.table(
        "digits",
        runs,
        note="MLP 64-128-128-10 on digits, Adam 1e-3.",
        metric="eval_acc",
        by=["clip.mode", "clip.max_norm", "clip.clip_value"],
    )
    none = per_seed(runs, "eval_acc_final", {"clip.mode": "none"})
    verdict = Verdict()
    control = same(difference(none, per_seed(runs, "eval_acc_final", {"clip.mode": "value"})), LITTLE)
    verdict.control(
        control.outcome == CONTRADICTED, f"value clipping at {CONTROL:g} changes accuracy by {control.text}"
    )
    for threshold in (1.0, 5.0):
        arm = {"clip.mode": "norm", "clip.max_norm": threshold}
        verdict.compare(
            f"norm {threshold:g}, share of steps clipped",
            within(per_seed(runs, "clip_fraction", arm), 0, RARE, "clip fraction"),
        )
        verdict.compare(
            f"norm {threshold:g} against none, held-out accuracy",
            same(difference(none, per_seed(runs, "eval_acc_final", arm)), LITTLE),
        )
    return verdict
