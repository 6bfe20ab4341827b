"""Study adaptive-vs-fixed: do adaptive modes match the best fixed threshold without tuning?"""

NAME = "adaptive-vs-fixed"
CLAIM = ("Adaptive clipping (AutoClip, ZClip, AGC) matches the best fixed norm threshold without being "
         "tuned, also at a deliberately too-high learning rate.")
SOURCE = ("Seetharaman et al. 2020 (AutoClip); Kumar et al. 2025 (ZClip); Brock et al. 2021 (AGC); the best "
          "fixed thresholds come from the studies lstm-adding and transformer-lm at the same scale")
SCALES = {"smoke": "smoke", "quick": "quick", "full": "full"}  # the scale of the threshold studies it reuses
# matching: on the adding problem, solving (MSE <= 0.01) as many seeds as the best fixed threshold,
# without divergence; on the LM, a final eval loss within noise of it (experiments/study.py within_noise)
HIGH_LR = 10  # the too-high learning rate, as a multiple of the task's own
ADAPTIVE = ("autoclip", "zclip", "agc")


def best_fixed(lab, study, section: str) -> tuple:
    """The threshold study's best norm arm (lowest mean final eval loss) and its sweep's overrides."""
    from gradlab.experiments.study import Lab, arms

    source = Lab(study, lab.scale, lab.dir.parent.parent, lab.extra)
    study.run(source, study.SCALES[lab.scale])  # finished runs are reused
    comparison = next(c for label, _, c in source.sections if label == section)
    norms = {name: r for name, r in arms(comparison).items() if name.startswith("norm")}
    name = min(norms, key=lambda n: norms[n]["eval_loss_final_mean"])
    command = next(c for c in source.commands if f" name={section} " in f"{c} ")
    return float(norms[name]["clip.max_norm"]), command.split()[2:]


def run(lab, scale) -> list:
    from gradlab.experiments import lstm_adding, transformer_lm
    from gradlab.experiments.study import arms, reached, within_noise

    verdict, matches = [], {mode: [] for mode in ADAPTIVE}
    # the adding problem is judged as lstm-adding judges it (seeds solved); the LM by final eval loss
    tasks = [("adding", lstm_adding, f"T{max(lstm_adding.SCALES[scale]['lengths'])}", 3e-3, lstm_adding.TARGET),
             ("lm", transformer_lm, "lm", transformer_lm.SCALES[scale]["lr"], None)]
    for label, study, section, lr, target in tasks:
        threshold, base = best_fixed(lab, study, section)
        base = [o for o in base if o not in lab.extra and not o.startswith(
            ("clip=", "max_norm=", "clip_value=", "lr=", "name=", "results_root="))]
        lrs = f"lr={lr:g},{HIGH_LR * lr:g}"
        runs = lab.sweep(label, [*base, lrs, "clip=none"], [*base, lrs, "clip=norm", f"max_norm={threshold:g}"],
                         *[[*base, lrs, f"clip={mode}"] for mode in ADAPTIVE])
        table = lab.table(label, runs, metric="eval_loss", by=["lr", "clip.mode"], target=target,
                          note=f"Best fixed threshold from {study.NAME}: max_norm={threshold:g}. Adaptive modes "
                               f"at their defaults. The second lr is {HIGH_LR}x the task's own.")
        for value in (lr, HIGH_LR * lr):
            at = {name.split(" ")[0]: r for name, r in arms(table).items() if name.endswith(f"lr={value:g}")}
            fixed = at[next(n for n in at if n.startswith("norm"))]
            line = []
            for mode in ADAPTIVE:
                r = at[mode]
                if target is None:
                    ok = r["completed"] > 0 and within_noise(r, [fixed, r], "eval_loss_final")
                else:
                    ok = reached(r) >= reached(fixed) and r["diverged"] == 0
                matches[mode].append(ok)
                solved = f", solved {r['reached_target']}" if target else ""
                line.append(f"{mode} {r['eval_loss_final_mean']:.4f}{solved} ({'matches' if ok else 'worse'})")
            solved = f", solved {fixed['reached_target']}" if target else ""
            verdict.append(f"{label}, lr={value:g}: best fixed norm {threshold:g} {fixed['eval_loss_final_mean']:.4f}"
                           f"{solved}, none {at['none']['eval_loss_final_mean']:.4f}; " + ", ".join(line) + ".")
    winners = [mode for mode, oks in matches.items() if all(oks)]
    verdict.append(("Matching the best fixed threshold everywhere without tuning: " + ", ".join(winners) + "."
                    if winners else "No adaptive mode matches the best fixed threshold in every setting: "
                    "the claim does not hold here."))
    return verdict
