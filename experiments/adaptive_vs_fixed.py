"""Study adaptive-vs-fixed: do adaptive modes match the best fixed threshold without tuning?"""

NAME = "adaptive-vs-fixed"
CLAIM = ("Adaptive clipping (AutoClip, ZClip, AGC) matches the best fixed norm threshold without being "
         "tuned, also at a deliberately too-high learning rate.")
SOURCE = ("Seetharaman et al. 2020 (AutoClip); Kumar et al. 2025 (ZClip); Brock et al. 2021 (AGC); the best "
          "fixed thresholds come from the studies lstm-adding and transformer-lm at the same scale")
SCALES = {"smoke": "smoke", "quick": "quick", "full": "full"}  # the scale of the threshold studies it reuses
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
    from gradlab.experiments.study import arms, within_noise

    verdict, matches = [], {mode: [] for mode in ADAPTIVE}
    tasks = [("adding", lstm_adding, f"T{max(lstm_adding.SCALES[scale]['lengths'])}", 3e-3),
             ("lm", transformer_lm, "lm", transformer_lm.SCALES[scale]["lr"])]
    for label, study, section, lr in tasks:
        threshold, base = best_fixed(lab, study, section)
        base = [o for o in base if o not in lab.extra and not o.startswith(
            ("clip=", "max_norm=", "clip_value=", "lr=", "name=", "results_root="))]
        lrs = f"lr={lr:g},{HIGH_LR * lr:g}"
        runs = lab.sweep(label, [*base, lrs, "clip=none"], [*base, lrs, "clip=norm", f"max_norm={threshold:g}"],
                         *[[*base, lrs, f"clip={mode}"] for mode in ADAPTIVE])
        table = lab.table(label, runs, metric="eval_loss", by=["lr", "clip.mode"],
                          note=f"Best fixed threshold from {study.NAME}: max_norm={threshold:g}. Adaptive modes "
                               f"at their defaults. The second lr is {HIGH_LR}x the task's own.")
        for value in (lr, HIGH_LR * lr):
            at = {name.split(" ")[0]: r for name, r in arms(table).items() if name.endswith(f"lr={value:g}")}
            fixed = at[next(n for n in at if n.startswith("norm"))]
            line = []
            for mode in ADAPTIVE:
                ok = at[mode]["completed"] > 0 and within_noise(at[mode], [fixed, at[mode]], "eval_loss_final")
                matches[mode].append(ok)
                line.append(f"{mode} {at[mode]['eval_loss_final_mean']:.4f} ({'matches' if ok else 'worse'})")
            verdict.append(f"{label}, lr={value:g}: best fixed norm {threshold:g} {fixed['eval_loss_final_mean']:.4f}, "
                           f"none {at['none']['eval_loss_final_mean']:.4f}; " + ", ".join(line) + ".")
    winners = [mode for mode, oks in matches.items() if all(oks)]
    verdict.append(("Matching the best fixed threshold everywhere without tuning: " + ", ".join(winners) + "."
                    if winners else "No adaptive mode matches the best fixed threshold in every setting: "
                    "the claim does not hold here."))
    return verdict
