"""engine=vectorized: each member of a batch of models computes the run it would compute alone.

Tolerance: the shared pass runs the K models as batched matmuls (and the recurrent nets as a
written-out recurrence instead of torch's fused kernel), so sums are taken in another order;
the stacked optimizer computes torch's formulas with per-member lrs as tensors, and float32
knobs where a run alone has Python floats. Every recorded figure of every step must agree to
rtol 1e-4 (atol 1e-6), and clipping must fire at the same steps. The stacked parts on their
own (one clip call, one optimizer step, given the same gradients) agree to rtol 1e-6.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_records import process
from test_records import run as cli

from gradlab import devices
from gradlab.config import run_id, sweep_dir
from gradlab.train import train
from gradlab.vectorized import choose, groups, measured, train_group

SMALL = {
    "mlp": ["model.hidden=[16,16]"],
    "lstm": ["model.hidden_size=12", "task.length=8"],
    "gru": ["model.hidden_size=12", "task.length=8"],
    "rnn": ["model.hidden_size=12", "task.length=8"],
    "lstm_urnn": ["model.hidden_size=12", "task.length=8"],
    "transformer": ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "task.seq_len=12"],
}
# members: seeds, learning rates and clip modes all differ; thresholds low enough to fire
MEMBERS = [
    ["clip=none", "seed=0"],
    ["clip=value", "clip_value=0.005", "seed=1", "lr=0.01"],
    ["clip=norm", "max_norm=0.05", "seed=2"],
    ["clip=norm_per_layer", "max_norm=0.02", "seed=3"],
    ["clip=autoclip", "clip_percentile=50", "seed=4"],
    ["clip=agc", "agc_lambda=0.001", "seed=5"],
    ["clip=zclip", "zclip_warmup=2", "zclip_z=0.5", "seed=6", "lr=0.003"],
]
COMPARED = ["loss", "grad_norm", "grad_norm_clipped", "eval_loss", "lr"]
COMMON = ["steps=8", "log_every=4", "eval_every=4", "layer_norms_every=4", "wandb=off", "engine=vectorized"]


def histories(confs: list[dict], name: str = "history.csv") -> list[pd.DataFrame]:
    return [pd.read_csv(sweep_dir(c) / run_id(c) / name) for c in confs]


def assert_members_match_alone(compose, together: list, *extra):
    """Train `together` as one group and each run alone; every figure and every clip agree."""
    assert len(groups(together)) == 1
    summaries = train_group(together)
    alone = [{**conf, "name": "alone"} for conf in together]
    for conf in alone:
        train(conf)
    for conf, summary, h, expected in zip(together, summaries, histories(together), histories(alone)):
        assert summary["status"] == "completed", (conf["clip"], summary)
        assert len(h) == conf["steps"]
        assert (h["clipped"] == expected["clipped"]).all(), conf["clip"]
        pd.testing.assert_frame_equal(h[COMPARED], expected[COMPARED], rtol=1e-4, atol=1e-6)
    for layers, expected in zip(histories(together, "layer_norms.csv"), histories(alone, "layer_norms.csv")):
        pd.testing.assert_frame_equal(layers, expected, rtol=1e-4, atol=1e-6)
    assert sum(h["clipped"].sum() > 0 for h in histories(together)) >= len(together) - 1  # the clips do fire


@pytest.mark.parametrize("model", list(SMALL))
def test_every_member_matches_its_run_alone(model, compose):
    assert_members_match_alone(
        compose, [compose(f"model={model}", *SMALL[model], *COMMON, *m, "name=together") for m in MEMBERS]
    )


# every option the stacked optimizer takes, each on; lrs differ between members (MEMBERS)
OPTIMIZERS = {
    "sgd": ["optim=sgd", "optim.momentum=0.9", "optim.weight_decay=0.01", "+optim.dampening=0.1"],
    "sgd_nesterov": ["optim=sgd", "optim.momentum=0.9", "+optim.nesterov=true", "optim.schedule=cosine"],
    "adam": ["optim=adam", "optim.weight_decay=0.01", "optim.warmup_steps=3"],
    "adam_amsgrad": ["optim=adam", "+optim.amsgrad=true"],
    "adamw": ["optim=adamw", "optim.schedule=cosine", "optim.warmup_steps=2"],
    "rmsprop": ["optim=rmsprop", "optim.momentum=0.5", "optim.weight_decay=0.01"],
    "rmsprop_centered": ["optim=rmsprop", "+optim.centered=true"],
    "rmsprop_urnn": ["optim=rmsprop_urnn", "optim.momentum=0.5"],
}


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_every_member_matches_its_run_alone_under_every_optimizer(optim, compose):
    lrs = ["lr=0.05"] if optim.startswith("sgd") else []  # plain SGD at 1e-3 barely moves
    together = [
        compose("model=mlp", *SMALL["mlp"], *COMMON, *OPTIMIZERS[optim], *m, *lrs, "name=together")
        for m in MEMBERS
    ]
    assert_members_match_alone(compose, together)


def test_members_that_end_early_leave_the_others_as_they_were(compose):
    """A member that diverges in the middle of a clip mode's range of adaptive members: the group
    goes on without it, each adaptive state kept for the members that stay."""
    runs = [
        ["clip=zclip", "zclip_warmup=2", "zclip_z=0.5", "seed=0"],
        ["clip=zclip", "zclip_warmup=2", "zclip_z=0.5", "seed=1", "optim=sgd", "lr=1e30"],
        ["clip=zclip", "zclip_warmup=3", "zclip_z=0.8", "seed=2"],
        ["clip=autoclip", "clip_percentile=50", "seed=3", "optim=sgd", "lr=1e30"],
        ["clip=autoclip", "clip_percentile=30", "seed=4"],
    ]
    optim = ["optim=sgd", "lr=0.05", "optim.momentum=0.9"]
    together = [
        compose("model=mlp", *SMALL["mlp"], *COMMON, *optim, *r, "steps=12", "name=together") for r in runs
    ]
    summaries = train_group(together)
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed", "diverged", "completed"]
    alone = [{**conf, "name": "alone"} for conf in together]
    for conf in alone:
        train(conf)
    for i in (0, 2, 4):
        h, expected = histories([together[i]])[0], histories([alone[i]])[0]
        assert (h["clipped"] == expected["clipped"]).all() and h["clipped"].sum() > 0
        pd.testing.assert_frame_equal(h[COMPARED], expected[COMPARED], rtol=1e-4, atol=1e-6)


def test_a_member_that_reaches_its_target_stops_there_as_it_would_alone(compose):
    """Members reach stop_at_target at different evaluations (their lrs differ); each stops where
    it stops alone, and the ones after it go on to theirs."""
    runs = [
        compose(
            "model=mlp",
            *SMALL["mlp"],
            *COMMON,
            "steps=40",
            "eval_every=2",
            "stop_at_target=eval_acc:0.5",
            f"lr={lr}",
            "seed=0",
            "name=together",
        )
        for lr in (0.03, 0.01, 0.001)
    ]
    summaries = train_group(runs)
    alone = [train({**conf, "name": "alone"}) for conf in runs]
    assert [s.get("target_step") for s in summaries] == [s.get("target_step") for s in alone]
    stops = [s.get("target_step") for s in summaries]
    assert stops[0] < stops[1] < 40 and stops[2] is None, stops  # one stops first, one later, one never
    for h, expected in zip(histories(runs), histories([{**c, "name": "alone"} for c in runs])):
        pd.testing.assert_frame_equal(h[COMPARED], expected[COMPARED], rtol=1e-4, atol=1e-6)


# --- the stacked parts on their own, against each member's own strategy and torch's optimizer


def member_grads(k: int, shapes: list, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, *s, generator=g) * torch.logspace(-2, 1, k).view(k, *[1] * len(s)) for s in shapes]


STACKED_CLIPS = [
    ("none", [{}] * 3),
    ("value", [{"clip_value": v} for v in (0.01, 0.1, 100.0)]),
    ("norm", [{"max_norm": v} for v in (0.1, 1.0, 100.0)]),
    ("norm_per_layer", [{"max_norm": v} for v in (0.05, 0.5, 100.0)]),
    ("agc", [{"agc_lambda": v, "agc_eps": e} for v, e in ((0.01, 1e-3), (0.1, 1e-2), (10.0, 1e-3))]),
    ("autoclip", [{"clip_percentile": p} for p in (10, 50, 90)]),
    (
        "autoclip",
        [
            {
                "clip_percentile": p,
                "autoclip_scope": "per_parameter",
                "autoclip_current": False,
                "autoclip_window": 3,
            }
            for p in (10, 50, 90)
        ],
    ),
    (
        "zclip",
        [
            {"zclip_z": z, "zclip_warmup": w, "zclip_alpha": a, "zclip_max_norm": c}
            for z, w, a, c in ((0.5, 2, 0.9, None), (1.0, 3, 0.5, 5.0), (2.5, 2, 0.97, None))
        ],
    ),
]


@pytest.mark.parametrize(
    "mode,knobs", STACKED_CLIPS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(STACKED_CLIPS)]
)
def test_a_stacked_strategy_clips_each_member_as_its_own_would(mode, knobs):
    from gradlab.clip import Slab, build_clip, config, stack, tensor_norms

    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    names = [n for n, _ in model.named_parameters()]
    own = [build_clip(config(mode, **k), 2.0, model) for k in knobs]
    stacked = stack(own, torch.device("cpu"))
    weights = member_grads(len(knobs), [p.shape for p in model.parameters()], seed=1)
    fired_steps = 0
    for step in range(6):  # adaptive state carried over steps
        grads = member_grads(len(knobs), [p.shape for p in model.parameters()], seed=10 + step)
        slabs = [Slab(n, w, g.clone()) for n, w, g in zip(names, weights, grads)]
        total = torch.linalg.vector_norm(tensor_norms([s.grad for s in slabs], 2.0, stacked=True), dim=-1)
        result = stacked(slabs, total)
        for k, strategy in enumerate(own):
            params = list(model.parameters())  # agc knows the final layer of the model by its parameters
            with torch.no_grad():
                for p, w, g in zip(params, weights, grads):
                    p.copy_(w[k])
                    p.grad = g[k].clone()
            alone = strategy(params, torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
            assert bool(result.fired[k]) == bool(alone.fired), (mode, k, step)
            fired_steps += bool(alone.fired)
            torch.testing.assert_close(result.norm_after[k], alone.norm_after, rtol=1e-6, atol=1e-7)
            for s, p in zip(slabs, params):
                torch.testing.assert_close(s.grad[k], p.grad, rtol=1e-6, atol=1e-7)
            if hasattr(strategy, "last_fired"):
                assert torch.equal(stacked.last_fired[k], strategy.last_fired)
    assert mode == "none" or fired_steps > 0


@pytest.mark.parametrize(
    "optim",
    [
        "sgd",
        "sgd_nesterov",
        "adam",
        "adam_amsgrad",
        "adamw",
        "rmsprop",
        "rmsprop_centered",
        "rmsprop_urnn",
        "adagrad",
        "adamax",
        "nadam",
        "radam",
    ],
)
@pytest.mark.parametrize("lrs", [[1e-3, 3e-2, 0.1], [0.05, 0.05, 1e-3]], ids=["3 lrs", "2 lrs"])
def test_the_stacked_optimizer_steps_each_member_as_its_own_optimizer(optim, lrs):
    """Each member, and each that stays when another leaves, is stepped as its own torch optimizer."""
    from gradlab.optim import RMSprop, StackedOptimizer

    options = {
        "sgd": (torch.optim.SGD, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
        "sgd_nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
        "adam": (torch.optim.Adam, {"weight_decay": 0.01}),
        "adam_amsgrad": (torch.optim.Adam, {"amsgrad": True}),
        "adamw": (torch.optim.AdamW, {"weight_decay": 0.1, "betas": (0.9, 0.95)}),
        "rmsprop": (torch.optim.RMSprop, {"momentum": 0.5, "weight_decay": 0.01, "alpha": 0.9}),
        "rmsprop_centered": (torch.optim.RMSprop, {"centered": True}),
        "rmsprop_urnn": (RMSprop, {"square_avg_init": 1e-3, "alpha": 0.9, "centered": True, "momentum": 0.5}),
        "adagrad": (torch.optim.Adagrad, {"lr_decay": 0.01}),
        "adamax": (torch.optim.Adamax, {"weight_decay": 0.01}),
        "nadam": (torch.optim.NAdam, {"momentum_decay": 0.004}),
        "radam": (torch.optim.RAdam, {"decoupled_weight_decay": True, "weight_decay": 0.01}),
    }
    kind, opts = options[optim]
    shapes = [(4, 5), (4,), (3, 4)]
    weights = member_grads(3, shapes, seed=2)
    stacked_params = [w.clone().requires_grad_() for w in weights]
    for p in stacked_params:
        p.grad = torch.zeros_like(p)  # lives as long as the parameter, as a group's does
    members = [[torch.nn.Parameter(w[k].clone()) for w in weights] for k in range(3)]
    torch_optims = [kind(params, lr=lr, **opts) for params, lr in zip(members, lrs)]
    stacked = StackedOptimizer(torch_optims[0], stacked_params, lrs)
    assert len(stacked.slices) == len(set(lrs))  # members with one lr share a param group
    staying = [0, 1, 2]
    for step in range(8):
        if step == 4:  # member 1 leaves
            staying = [0, 2]
            stacked_params = [p.detach()[staying].clone().requires_grad_() for p in stacked_params]
            for p in stacked_params:
                p.grad = torch.zeros_like(p)
            stacked.select(torch.tensor(staying), stacked_params)
        grads = member_grads(3, shapes, seed=20 + step)
        for p, g in zip(stacked_params, grads):
            p.grad.copy_(g[staying])
        stacked.lrs = [lrs[k] * (0.5 if step >= 3 else 1.0) for k in staying]  # a schedule moves the lrs
        stacked.step()
        for i, k in enumerate(staying):
            params, opt = members[k], torch_optims[k]
            opt.param_groups[0]["lr"] = stacked.lrs[i]
            for p, g in zip(params, grads):
                p.grad = g[k].clone()
            opt.step()
            for s, p in zip(stacked_params, params):
                torch.testing.assert_close(s.detach()[i], p.detach(), rtol=1e-6, atol=1e-7)


def test_an_optimizer_whose_update_is_not_elementwise_trains_alone(compose):
    from gradlab.optim import why_not_stacked
    from gradlab.vectorized import why_alone

    factored = {"_target_": "torch.optim.Adafactor"}  # its second moment is factored by rows and columns
    assert why_not_stacked(factored).startswith("optim Adafactor (batched: SGD, Adam")
    assert why_not_stacked({"_target_": "torch.optim.NAdam"}) is None
    assert why_alone(compose("model=mlp", "optim=sgd")) is None


def test_a_diverging_member_is_frozen_and_the_others_finish(compose):
    confs = [
        compose("model=mlp", *SMALL["mlp"], *COMMON, "clip=none", "optim=sgd", f"lr={lr}", "seed=0")
        for lr in (0.01, 1e30)
    ]
    summaries = train_group(confs)
    assert [s["status"] for s in summaries] == ["completed", "diverged"]
    good, bad = histories(confs)
    assert len(good) == 8 and len(bad) == summaries[1]["diverged_step"] <= 4  # found at its log flush
    alone = compose(
        "model=mlp", *SMALL["mlp"], *COMMON, "clip=none", "optim=sgd", "lr=0.01", "seed=0", "name=alone"
    )
    train(alone)
    pd.testing.assert_frame_equal(good[COMPARED], histories([alone])[0][COMPARED], rtol=1e-4, atol=1e-6)


def test_runs_that_cannot_share_a_batch_are_split_into_groups(compose):
    confs = [
        compose("model=lstm", *SMALL["lstm"], "engine=vectorized", "group_size=2", *extra)
        for extra in (
            ["seed=0"],
            ["seed=1"],
            ["seed=2"],
            ["seed=0", "batch_size=32"],
            ["seed=0", "accum_steps=2"],
            ["seed=0", "precision=fp16"],
            ["seed=0", "model=gru"],
        )
    ]
    parts = groups(confs)
    assert sorted(len(g) for g in parts) == [
        1,
        1,
        1,
        1,
        1,
        2,
    ]  # seeds 0 and 1 together; 2 split off at group_size
    assert [c["seed"] for c in parts[0]] == [0, 1] and [c["seed"] for c in parts[1]] == [2]


def test_dry_run_shows_the_groups(tmp_path):
    out = cli(
        [
            "sweep",
            "model=lstm",
            "seed=0,1,2",
            "batch_size=32,64",
            "engine=vectorized",
            "--dry-run",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "engine: vectorized, 2 group(s)" in out.stdout
    assert out.stdout.count("3 run(s) together: lstm on adding, batch") == 2


def test_vectorized_sweep_records_every_run_as_alone(tmp_path):
    args = [
        "sweep",
        "model=mlp",
        *SMALL["mlp"],
        "clip=none,norm",
        "max_norm=0.05",
        "seed=0,1",
        "steps=6",
        "wandb=offline",
        "name=v",
    ]
    for engine in ("sequential", "vectorized"):
        out = process([*args, f"engine={engine}", f"results_root={engine}"], tmp_path)
        assert "sweep finished: 4 runs (4 completed)" in out.stdout
    runs = sorted(p.parent.name for p in (tmp_path / "sequential" / "v").glob("*/summary.json"))
    assert runs == sorted(p.parent.name for p in (tmp_path / "vectorized" / "v").glob("*/summary.json"))
    for run in runs:
        alone, together = (
            pd.read_csv(tmp_path / e / "v" / run / "history.csv") for e in ("sequential", "vectorized")
        )
        pd.testing.assert_frame_equal(together[COMPARED], alone[COMPARED], rtol=1e-4, atol=1e-6)
        assert len(list((tmp_path / "vectorized" / "v" / run / "wandb").glob("offline-run-*/*.wandb"))) == 1


def test_vectorized_needs_the_basic_launcher(tmp_path):
    out = cli(
        [
            "sweep",
            "model=mlp",
            "seed=0,1",
            "engine=vectorized",
            "launcher=local",
        ],
        tmp_path,
    )
    assert out.returncode == 2 and out.stderr.startswith("error: engine=vectorized: ")
    assert not (tmp_path / "results").exists()


def test_a_group_too_large_for_memory_is_trained_in_parts(compose, monkeypatch, capsys):
    from gradlab import vectorized

    confs = [
        compose("model=mlp", *SMALL["mlp"], *COMMON, f"seed={seed}", "progress=lines") for seed in range(4)
    ]
    need = vectorized.member_bytes(confs[0])
    assert need > 0
    monkeypatch.setattr(
        devices, "free_memory", lambda device: 4 * need + 1
    )  # room for 2 at half the free memory
    vectorized.run_groups(confs)
    out = capsys.readouterr().out
    assert "4 runs (mlp on digits, batch 64, adam, 8 steps) do not fit in memory together" in out
    assert "training them 2 at a time" in out and out.count("[vectorized] 2 run(s) together") == 2
    assert [s["status"] for s in map(vectorized_summary, confs)] == ["completed"] * 4


def vectorized_summary(conf: dict) -> dict:
    from gradlab import records

    return records.read(sweep_dir(conf) / run_id(conf))


# --- engine=auto: together only where gradlab bench measured it faster


def auto_parts(compose, runs: int, *overrides) -> list:
    from gradlab.vectorized import schedule

    return schedule([compose(*overrides, f"seed={seed}") for seed in range(runs)])


def auto_part(compose, runs: int, *overrides):
    (part,) = auto_parts(compose, runs, *overrides)
    return part


def test_auto_splits_a_group_larger_than_was_measured_faster_into_even_parts(compose, monkeypatch):
    from test_devices import FIGURES

    from gradlab import vectorized

    monkeypatch.setattr(vectorized, "measured", lambda: FIGURES)  # rnn: 16 together the most measured faster
    parts = auto_parts(compose, 40, "model=rnn")
    assert [len(p.runs) for p in parts] == [14, 13, 13] and {p.engine for p in parts} == {"vectorized"}
    assert sorted(c["seed"] for p in parts for c in p.runs) == list(range(40))
    assert "in parts of at most 16" in parts[0].why


def test_auto_leaves_what_was_not_measured_sequential_and_the_engines_can_be_forced(compose):
    mine = auto_part(compose, 16, "model=custom", "model._target_=mynets.nets.ResidualMLP")
    assert (
        mine.engine == "sequential"
        and mine.why == "auto: model residualmlp not measured on cpu, so sequential"
    )
    assert auto_part(compose, 16, "model=lstm", "engine=vectorized").engine == "vectorized"
    assert auto_part(compose, 16, "model=mlp", "engine=sequential").engine == "sequential"


def test_dry_run_says_which_engine_each_group_gets_and_why(tmp_path):
    out = cli(["sweep", "model=rnn,lstm", "seed=0,1,2,3", "--dry-run"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "engine: auto, 2 group(s)" in out.stdout
    for model in (
        "rnn",
        "lstm",
    ):  # each group's engine and the figure that decided it (gradlab/measured.json)
        size, why = choose(
            4, {"_target_": "gradlab.models.rnn.RecurrentNet", "name": model, "cell": model}, "cpu", 1500
        )
        how = "together" if size > 1 else "one at a time"
        assert f"4 run(s) {how}: {model} on adding, batch 64, adam, 1500 steps ({why})" in out.stdout


def test_an_auto_sweep_trains_the_measured_groups_together(tmp_path):
    out = cli(
        [
            "sweep",
            "model=mlp",
            "model.hidden=[8]",
            "seed=0,1,2,3",
            f"steps={measured()['cpu']['steps']}",  # as long as the runs measured
            "eval_every=20",
            "wandb=off",
            "name=auto",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "[vectorized] 4 run(s) together: mlp on digits" in out.stdout
    assert "sweep finished: 4 runs (4 completed)" in out.stdout
