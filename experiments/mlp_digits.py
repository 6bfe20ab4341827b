"""Study mlp-digits: on a well-conditioned MLP problem, clipping rarely fires and changes little."""

NAME = "mlp-digits"
CLAIM = "For a well-conditioned MLP (digits), gradient clipping rarely fires and changes little."
SOURCE = "seed tutorials 000-004 (clipping matters for RNNs, Transformers, RL, GANs; not singled out for MLPs)"
SCALES = {
    "smoke": {"seeds": "0", "steps": 6, "extra": ["eval_every=3"]},
    "quick": {"seeds": "0,1,2", "steps": 1000, "extra": []},
    "full": {"seeds": "0,1,2,3,4", "steps": 5000, "extra": []},
}
RARE = 0.05        # a clip fraction at or under this is "rarely fires"
LITTLE = 0.01      # an accuracy change at or under this (1 point) is "changes little"


def run(lab, size) -> list:
    from gradlab.experiments.study import arms

    base = ["experiment=mlp_digits", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"]]
    runs = lab.sweep("digits", [*base, "clip=none"], [*base, "clip=norm", "max_norm=1,5"],
                     [*base, "clip=value", "clip_value=0.5,1"])
    table = lab.table("digits", runs, note="MLP 64-128-128-10 on digits, Adam 1e-3.", metric="eval_acc",
                      by=["clip.mode", "clip.max_norm", "clip.clip_value"])
    arm = arms(table)
    reference = arm["none"]["eval_acc_final_mean"]
    verdict, rare, little = [], [], []
    for name, r in arm.items():
        if name == "none":
            continue
        change = r["eval_acc_final_mean"] - reference
        rare.append(r["clip_fraction_mean"] <= RARE)
        little.append(abs(change) <= LITTLE)
        verdict.append(f"{name}: fires on {r['clip_fraction_mean']:.1%} of steps; held-out accuracy "
                       f"{r['eval_acc_final_mean']:.4f} vs {reference:.4f} without clipping ({change:+.4f}).")
    verdict.append(f"{sum(rare)}/{len(rare)} clipped arms fire on at most {RARE:.0%} of steps and "
                   f"{sum(little)}/{len(little)} change accuracy by at most {LITTLE:.0%}: "
                   + ("the claim holds." if all(rare) and all(little) else
                      "changes little holds, but clipping is not rare at every threshold."
                      if all(little) else "the claim does not hold."))
    return verdict
