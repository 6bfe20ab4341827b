"""Study transformer-lm: global-norm clipping at 0.5-1.0 for a Transformer language model."""

NAME = "transformer-lm"
CLAIM = ("For Transformers trained with Adam, clip the global norm at 0.5-1.0: it trains at least as "
         "well as other thresholds or none, and has no more loss spikes than no clipping, also at a "
         "3x higher learning rate.")
SOURCE = "seed tutorial 000 (Transformers 0.5-1.0); BERT, GPT-3, LLaMA, nanoGPT (1.0)"
SCALES = {
    "smoke": {"seeds": "0", "steps": 6, "lr": 1e-3,
              "extra": ["model.d_model=16", "model.d_ff=32", "task.seq_len=16", "eval_every=3"]},
    "quick": {"seeds": "0,1,2", "steps": 400, "lr": 1e-3, "extra": ["model.d_model=64", "model.d_ff=256"]},
    "full": {"seeds": "0,1,2", "steps": 5000, "lr": 6e-4, "extra": ["model.n_layers=6", "model.d_model=384",
                                                                   "model.d_ff=1536", "task.seq_len=256"]},
}


def run(lab, size) -> list:
    from gradlab.experiments.study import arms, within_noise

    lrs = [size["lr"], 3 * size["lr"]]
    base = ["experiment=transformer_lm", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"],
            f"lr={lrs[0]:g},{lrs[1]:g}"]
    runs = lab.sweep("lm", [*base, "clip=none"], [*base, "clip=norm", "max_norm=0.5,1,2"])
    table = lab.table("lm", runs, metric="eval_loss", by=["lr", "clip.mode", "clip.max_norm"],
                      note="Byte-level LM. loss_spikes: steps above 1.5x the median loss of the previous 50.")
    verdict, holds = [], []
    for lr in lrs:
        at = {name.split(" ")[0]: r for name, r in arms(table).items() if name.endswith(f"lr={lr:g}")}
        recommended = min((at["norm0.5"], at["norm1"]), key=lambda r: r["eval_loss_final_mean"])
        ok = (within_noise(recommended, at.values(), "eval_loss_final")
              and recommended["loss_spikes_mean"] <= at["none"]["loss_spikes_mean"])
        holds.append(ok)
        verdict.append(
            f"lr={lr:g}: final eval CE " + ", ".join(f"{n} {r['eval_loss_final_mean']:.4f}" for n, r in at.items())
            + "; loss spikes per run " + ", ".join(f"{n} {r['loss_spikes_mean']:.1f}" for n, r in at.items())
            + "; clip fraction " + ", ".join(f"{n} {r['clip_fraction_mean']:.0%}" for n, r in at.items() if n != "none")
            + (". The better of norm 0.5/1 is within noise of the best arm and spikes no more than none."
               if ok else ". Norm 0.5/1 is not within noise of the best arm, or spikes more than none."))
    verdict.append("The claim holds at both learning rates." if all(holds) else
                   f"The claim holds at {sum(holds)} of {len(holds)} learning rates.")
    return verdict
