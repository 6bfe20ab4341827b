"""Study accumulation: correct accumulation equals the big batch; the two classic mistakes do not."""

NAME = "accumulation"
CLAIM = ("Accumulating k micro-batches with the loss divided by k and one clip per optimizer step "
         "trains exactly like one batch of k times the size; clipping every micro-batch, or not "
         "dividing the loss by k (a threshold k times looser), changes how often clipping fires and "
         "what the run reaches.")
SOURCE = ("seed tutorial 003 (accumulation k=4, batch 16, combined with clipping; its example forgets "
          "loss / k); PyTorch AMP notes and nanoGPT (order of operations)")
SCALES = {
    "smoke": {"seeds": "0", "steps": 6, "k": 2, "batch": 8, "extra": ["eval_every=3"]},
    "quick": {"seeds": "0,1,2", "steps": 600, "k": 4, "batch": 16, "extra": []},
    "full": {"seeds": "0,1,2,3,4", "steps": 3000, "k": 8, "batch": 16, "extra": []},
}
EXACT = 1e-4  # relative difference of final losses counted as "the same run"


def run(lab, size) -> list:
    from gradlab.experiments.study import arms

    k, b = size["k"], size["batch"]
    base = ["experiment=accumulation", f"steps={size['steps']}", f"seed={size['seeds']}", *size["extra"]]
    accumulated = [*base, f"accum_steps={k}", f"batch_size={b}"]
    runs = lab.sweep("accumulation", [*base, "accum_steps=1", f"batch_size={k * b}"],
                     [*accumulated, "mistake=null,clip_each_micro_batch,no_loss_division"])
    table = lab.table("accumulation", runs, metric="eval_loss", by=["accum_steps", "mistake"],
                      note=f"One batch of {k * b} vs {k} micro-batches of {b}; SGD, norm clipping at 0.5.")
    arm = arms(table)
    big, correct = arm["accum_steps=1 mistake=-"], arm[f"accum_steps={k} mistake=-"]
    gap = abs(correct["eval_loss_final_mean"] - big["eval_loss_final_mean"]) / big["eval_loss_final_mean"]
    verdict = [f"Big batch vs correct accumulation: final eval loss {big['eval_loss_final_mean']:.5f} vs "
               f"{correct['eval_loss_final_mean']:.5f} (relative gap {gap:.1e}), clip fraction "
               f"{big['clip_fraction_mean']:.1%} vs {correct['clip_fraction_mean']:.1%}: "
               + ("the same run." if gap <= EXACT else "NOT the same run: the claim does not hold.")]
    for mistake in ("clip_each_micro_batch", "no_loss_division"):
        r = arm[f"accum_steps={k} mistake={mistake}"]
        verdict.append(f"{mistake}: clip fraction {r['clip_fraction_mean']:.1%} (correct: "
                       f"{correct['clip_fraction_mean']:.1%}), final eval loss {r['eval_loss_final_mean']:.5f} "
                       f"(correct: {correct['eval_loss_final_mean']:.5f})"
                       + ("; it differs from correct accumulation, as claimed." if abs(
                           r["eval_loss_final_mean"] / correct["eval_loss_final_mean"] - 1) > EXACT
                          or r["clip_fraction_mean"] != correct["clip_fraction_mean"]
                          else "; indistinguishable from correct accumulation here."))
    return verdict
