"""Study fp16-unscale: clip after GradScaler.unscale_, not on the scaled fp16 gradients."""

NAME = "fp16-unscale"
CLAIM = ("With fp16 and a GradScaler, gradients must be unscaled before they are measured and clipped; "
         "clipping the scaled gradients clips (nearly) every step and trains differently from fp32.")
SOURCE = "PyTorch AMP documentation (gradient clipping with unscale_); anchors section 6"
SCALES = {
    "smoke": {"seeds": "0", "steps": 6, "extra": ["eval_every=3"]},
    "quick": {"seeds": "0,1,2", "steps": 500, "extra": []},
    "full": {"seeds": "0,1,2,3,4", "steps": 3000, "extra": ["device=cuda"]},
}


def run(lab, size) -> list:
    from gradlab.experiments.study import arms

    base = ["experiment=fp16_unscale", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"]]
    runs = lab.sweep("fp16", [*base, "precision=fp32"], [*base, "precision=fp16", "mistake=null,clip_scaled"])
    if (runs["status"] == "failed").all():
        return [f"Every run failed on this machine ({runs['error'].iloc[0]}): fp16 needs a GPU here, "
                "run with device=cuda."]
    table = lab.table("fp16", runs, metric="eval_loss", by=["precision", "mistake"],
                      note="MLP on digits, Adam 1e-3, norm clipping at 1.0.")
    arm = arms(table)
    fp32, right, wrong = arm["precision=fp32 mistake=-"], arm["precision=fp16 mistake=-"], \
        arm["precision=fp16 mistake=clip_scaled"]
    close = abs(right["clip_fraction_mean"] - fp32["clip_fraction_mean"]) <= 0.05
    always = wrong["clip_fraction_mean"] >= 0.9
    return [f"Clip fraction: fp32 {fp32['clip_fraction_mean']:.1%}, fp16 unscaled first "
            f"{right['clip_fraction_mean']:.1%}, fp16 clipping scaled gradients {wrong['clip_fraction_mean']:.1%}; "
            f"final eval loss {fp32['eval_loss_final_mean']:.4f} / {right['eval_loss_final_mean']:.4f} / "
            f"{wrong['eval_loss_final_mean']:.4f}; steps skipped by the scaler per run {right['scaler_skips_mean']:.1f} "
            f"/ {wrong['scaler_skips_mean']:.1f}.",
            ("Unscaling first clips as often as fp32, and clipping scaled gradients clips nearly every step: "
             "the claim holds." if close and always else "The claim does not hold here: "
             + ("unscaled fp16 clips unlike fp32. " if not close else "")
             + ("clipping scaled gradients does not clip nearly every step." if not always else ""))]
