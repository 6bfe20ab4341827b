"""Study pascanu-threshold-rule: clip at 0.5-10x the average gradient norm (Pascanu et al. 2013)."""

NAME = "pascanu-threshold-rule"
CLAIM = ("Clipping the global norm anywhere between 0.5x and 10x the average gradient norm still "
         "converges, and clipping matters more as the sequence length T grows.")
SOURCE = "Pascanu, Mikolov & Bengio 2013, sec. 3.2 and 4.1 (temporal order task; threshold 1.0 and the 0.5-10x rule)"
SCALES = {
    "smoke": {"lengths": [10], "seeds": "0", "steps": 6, "pilot": 4, "extra": ["eval_every=3"]},
    "quick": {"lengths": [20, 50], "seeds": "0,1,2", "steps": 3000, "pilot": 200, "extra": []},
    "full": {"lengths": [50, 100, 200], "seeds": "0,1,2,3,4", "steps": 50000, "pilot": 1000,
             "extra": ["task.eval_size=10000"]},
}
MULTIPLES = (0.5, 1, 2, 10)
SUCCESS = 0.99  # held-out accuracy: under 1% error


def run(lab, size) -> list:
    from gradlab.experiments.study import arms, growth, judge, outcomes, reached

    verdict, gaps, measurable = [], {}, False
    for length in size["lengths"]:
        base = ["experiment=pascanu_rnn", f"task.length={length}", f"seed={size['seeds']}", *size["extra"]]
        pilot = lab.sweep(f"pilot-T{length}", [*base, "clip=none", f"steps={size['pilot']}"])
        average = float(pilot["grad_norm_mean"].mean())
        thresholds = sorted({float(f"{m * average:.3g}") for m in MULTIPLES} | {1.0})
        main = [*base, f"steps={size['steps']}"]
        runs = lab.sweep(f"T{length}", [*main, "clip=none"], [*main, "clip=value", "clip_value=1"],
                         [*main, "clip=norm", "max_norm=" + ",".join(f"{t:g}" for t in thresholds)])
        table = lab.table(f"T{length}", runs, metric="eval_acc", target=SUCCESS,
                          by=["clip.mode", "clip.max_norm", "clip.clip_value"],
                          note=f"Temporal order, T={length}. Unclipped pilot ({size['pilot']} steps): average "
                               f"gradient norm {average:.3g}, so 0.5x-10x = {', '.join(f'{m * average:.3g}' for m in MULTIPLES)}.")
        arm = arms(table)
        rule = [arm[f"norm{float(f'{m * average:.3g}'):g}"] for m in MULTIPLES]
        verdict.append(f"T={length}: seeds under 1% error: {outcomes(arm)}. "
                       + judge(arm, rule, "All thresholds from 0.5x to 10x the average norm"))
        measurable |= any(reached(r) for r in arm.values())
        gaps[length] = max(reached(r) for r in rule) - reached(arm["none"])
    if len(gaps) > 1:
        verdict.append(growth(gaps, "the best threshold of the rule", measurable))
    return verdict
