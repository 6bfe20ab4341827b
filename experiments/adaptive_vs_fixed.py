"""Study adaptive-vs-fixed: under the stress of lstm-adding, do the adaptive modes train where no
clipping fails, as their papers claim, and does ZClip beat a fixed threshold of 1?

The claims, as their papers make them: ZClip (Kumar et al. 2025; code bluorion-com/ZClip): at an lr
where no clipping (and fixed clipping) spikes or diverges, ZClip keeps training stable. AutoClip
(Seetharaman et al. 2020; code pseeth/autoclip): clipping at a percentile of the norm history
improves training over no clipping without tuning a threshold.
"""

from gradlab.experiments import lstm_adding
from gradlab.experiments.protocol import SUPERIORITY, Arm, Comparison, Control, Protocol, Seeds

NAME = "adaptive-vs-fixed"
SCALES = lstm_adding.SCALES
CLAIM = (
    "At a learning rate where training without clipping fails, AutoClip and ZClip at their papers' "
    "defaults solve the task sooner than no clipping, and ZClip sooner than a fixed threshold of 1."
)
SOURCE = (
    "Kumar et al. 2025 (ZClip, sec. 3-4; code bluorion-com/ZClip), Seetharaman et al. 2020 (AutoClip, "
    "sec. 3; code pseeth/autoclip); the task and stress of the study lstm-adding"
)
DEPARTURES = (
    "One task for both (the papers: LLM pre-training, source separation), the adding problem under "
    "lstm-adding's stress (RMSProp at lr 0.01, batch 20).",
    "ZClip without the fixed cap of its code's default (zclip_max_norm=1.0), which would make it never "
    "looser than norm 1 and its comparison with norm 1 partly a comparison of norm 1 with itself.",
    "AGC (Brock et al. 2021) is left out: its claim and its lambda=0.01 are for batches of 4,096 with "
    "SGD and Nesterov momentum on normaliser-free ResNets, a regime this task at batch 20 does not "
    "reach and a CPU cannot run.",
)


def protocol(scale: str) -> Protocol:
    size = SCALES[scale]
    budget = size["steps"]
    effect, why = max(1, budget // 10), f"a tenth of the {budget}-step budget: a speed-up a user would notice"
    return Protocol(
        name=NAME,
        claim=CLAIM,
        source=SOURCE,
        shared=(
            "experiment=adaptive_vs_fixed",  # lstm-adding's stress
            "engine=vectorized",  # an arm's seeds trained together, as in lstm-adding
            f"task.length={size['length']}",
            f"steps={budget}",
            f"stop_at_target=eval_loss:{lstm_adding.TARGET:g}",
            *size["extra"],
        ),
        arms=(
            Arm("none", ("clip=none",)),
            Arm("norm 1", ("clip=norm", "max_norm=1")),
            Arm("autoclip", ("clip=autoclip",)),
            Arm("zclip", ("clip=zclip", "zclip_max_norm=null")),
        ),
        comparisons=(
            Comparison("none", "autoclip", "steps_to_target", SUPERIORITY, effect, why),
            Comparison("none", "zclip", "steps_to_target", SUPERIORITY, effect, why),
            Comparison("norm 1", "zclip", "steps_to_target", SUPERIORITY, effect, why),
        ),
        control=Control(
            Comparison("none", 0.5, "solved", SUPERIORITY, 0.25, "half the seeds", lower_is_better=False),
            "no clipping at the stress lr reaches the target in fewer than half of the seeds",
        ),
        seeds=Seeds(10000, *size["seeds"]),
        departures=DEPARTURES,
    )


table = lstm_adding.table


def notes(runs, protocol, values: dict) -> list[str]:
    return lstm_adding.seeds_solved_notes(runs, ["norm 1", "autoclip", "zclip"])
