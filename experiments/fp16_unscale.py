"""Study fp16-unscale: clip after GradScaler.unscale_, not on the scaled fp16 gradients."""

from gradlab.experiments.protocol import EQUIVALENCE, SUPERIORITY, Arm, Comparison, Control, Protocol, Seeds

NAME = "fp16-unscale"
SCALES = {
    "smoke": {"steps": 8, "extra": ["eval_every=4"], "seeds": (3, 3)},
    "quick": {"steps": 500, "extra": [], "seeds": (5, 20)},
    "full": {"steps": 3000, "extra": [], "seeds": (5, 30)},
}
ALWAYS = 0.9  # "clips (nearly) every step": on at least 90% of steps
EFFECT = 0.01  # nats of held-out cross-entropy: the held-out likelihood changes by 1% (e^0.01)
WHY = "a hundredth of a nat: the held-out likelihood changes by 1%"
CLAIM = (
    "With fp16 and a GradScaler, gradients must be unscaled before they are measured and clipped: "
    "unscaled first, an fp16 run trains like fp32; clipping the scaled gradients clips (nearly) every "
    "step and trains differently."
)
SOURCE = "PyTorch AMP documentation (gradient clipping with unscale_); anchors section 6"
DEPARTURES = (
    "No paper: the order of operations PyTorch documents. fp16 autocast runs on the CPU here.",
    "SGD at lr 0.05, not Adam: Adam's update hardly depends on the gradient's scale, so it undoes most "
    "of the mistake (on the pilot seeds 900-902 with Adam, clipping the scaled gradients ended 0.005 "
    "nats lower than fp32; with SGD it does not train).",
)


def protocol(scale: str) -> Protocol:
    size = SCALES[scale]
    return Protocol(
        name=NAME,
        claim=CLAIM,
        source=SOURCE,
        shared=("experiment=fp16_unscale", f"steps={size['steps']}", *size["extra"]),
        arms=(
            Arm("fp32", ("precision=fp32",)),
            Arm("fp16", ("precision=fp16",)),
            Arm("fp16, clip_scaled", ("precision=fp16", "mistake=clip_scaled")),
        ),
        comparisons=(
            Comparison("fp32", "fp16", "eval_loss_final", EQUIVALENCE, EFFECT, WHY),
            Comparison(
                ALWAYS,
                "fp16, clip_scaled",
                "clip_fraction",
                SUPERIORITY,
                0.05,
                "one step in twenty",
                lower_is_better=False,
            ),
        ),
        control=Control(
            Comparison("fp16, clip_scaled", "fp32", "eval_loss_final", SUPERIORITY, EFFECT, WHY),
            "clipping the scaled gradients must end with a higher held-out loss than fp32",
        ),
        seeds=Seeds(6000, *size["seeds"]),
        departures=DEPARTURES,
    )


def table(protocol, values: dict) -> dict:
    return {"metric": "eval_loss", "note": "MLP on digits, SGD 0.05, norm clipping at 1.0."}
