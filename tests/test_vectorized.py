"""engine=vectorized: each member of a batch of models computes the run it would compute alone.

Tolerance: the shared pass runs the K models as batched matmuls (and the recurrent nets as a
written-out recurrence instead of torch's fused kernel), so sums are taken in another order.
Every recorded figure of every step must agree to rtol 1e-4 (atol 1e-6), and clipping must
fire at the same steps.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from gradlab.config import run_id, sweep_dir
from gradlab.train import train
from gradlab.vectorized import groups, train_group

SMALL = {"mlp": ["model.hidden=[16,16]"], "lstm": ["model.hidden_size=12", "task.length=8"],
         "gru": ["model.hidden_size=12", "task.length=8"], "rnn": ["model.hidden_size=12", "task.length=8"],
         "transformer": ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "task.seq_len=12"]}
# members: seeds, learning rates and clip modes all differ; thresholds low enough to fire
MEMBERS = [["clip=none", "seed=0"], ["clip=value", "clip_value=0.005", "seed=1", "lr=0.01"],
           ["clip=norm", "max_norm=0.05", "seed=2"], ["clip=norm_per_layer", "max_norm=0.02", "seed=3"],
           ["clip=autoclip", "clip_percentile=50", "seed=4"], ["clip=agc", "agc_lambda=0.001", "seed=5"],
           ["clip=zclip", "zclip_warmup=2", "zclip_z=0.5", "seed=6", "lr=0.003"]]
COMPARED = ["loss", "grad_norm", "grad_norm_clipped", "eval_loss", "lr"]
COMMON = ["steps=8", "log_every=4", "eval_every=4", "layer_norms_every=4", "wandb=off", "engine=vectorized"]


def histories(confs: list[dict]) -> list[pd.DataFrame]:
    return [pd.read_csv(sweep_dir(c) / run_id(c) / "history.csv") for c in confs]


@pytest.mark.parametrize("model", list(SMALL))
def test_every_member_matches_its_run_alone(model, compose, tmp_path):
    together = [compose(f"model={model}", *SMALL[model], *COMMON, *m, "name=together") for m in MEMBERS]
    assert len(groups(together)) == 1
    summaries = train_group(together)
    alone = [compose(f"model={model}", *SMALL[model], *COMMON, *m, "name=alone") for m in MEMBERS]
    for conf in alone:
        train(conf)
    for conf, summary, h, expected in zip(together, summaries, histories(together), histories(alone)):
        assert summary["status"] == "completed", (conf["clip"], summary)
        assert len(h) == conf["steps"]
        assert (h["clipped"] == expected["clipped"]).all(), conf["clip"]
        pd.testing.assert_frame_equal(h[COMPARED], expected[COMPARED], rtol=1e-4, atol=1e-6)
    assert sum(h["clipped"].sum() > 0 for h in histories(together)) >= len(MEMBERS) - 1  # the clips do fire


def test_a_diverging_member_is_frozen_and_the_others_finish(compose):
    confs = [compose("model=mlp", *SMALL["mlp"], *COMMON, "clip=none", "optim=sgd", f"lr={lr}", "seed=0")
             for lr in (0.01, 1e30)]
    summaries = train_group(confs)
    assert [s["status"] for s in summaries] == ["completed", "diverged"]
    good, bad = histories(confs)
    assert len(good) == 8 and len(bad) == summaries[1]["diverged_step"] <= 4  # found at its log flush
    alone = compose("model=mlp", *SMALL["mlp"], *COMMON, "clip=none", "optim=sgd", "lr=0.01", "seed=0", "name=alone")
    train(alone)
    pd.testing.assert_frame_equal(good[COMPARED], histories([alone])[0][COMPARED], rtol=1e-4, atol=1e-6)


def test_runs_that_cannot_share_a_batch_are_split_into_groups(compose):
    confs = [compose("model=lstm", *SMALL["lstm"], "engine=vectorized", "group_size=2", *extra) for extra in
             (["seed=0"], ["seed=1"], ["seed=2"], ["seed=0", "batch_size=32"], ["seed=0", "accum_steps=2"],
              ["seed=0", "precision=fp16"], ["seed=0", "model=gru"])]
    parts = groups(confs)
    assert sorted(len(g) for g in parts) == [1, 1, 1, 1, 1, 2]  # seeds 0 and 1 together; 2 split off at group_size
    assert [c["seed"] for c in parts[0]] == [0, 1] and [c["seed"] for c in parts[1]] == [2]


def test_dry_run_shows_the_groups(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gradlab", "sweep", "model=lstm", "seed=0,1,2", "batch_size=32,64",
                          "engine=vectorized", "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "engine: vectorized, 2 group(s)" in out.stdout
    assert out.stdout.count("3 run(s) together: lstm on adding, batch") == 2


def test_vectorized_sweep_records_every_run_as_alone(tmp_path):
    args = ["sweep", "model=mlp", *SMALL["mlp"], "clip=none,norm", "max_norm=0.05", "seed=0,1", "steps=6",
            "wandb=offline", "name=v"]
    for engine in ("sequential", "vectorized"):
        out = subprocess.run([sys.executable, "-m", "gradlab", *args, f"engine={engine}", f"results_root={engine}"],
                             cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "sweep finished: 4 runs (4 completed)" in out.stdout
    runs = sorted(p.parent.name for p in (tmp_path / "sequential" / "v").glob("*/summary.json"))
    assert runs == sorted(p.parent.name for p in (tmp_path / "vectorized" / "v").glob("*/summary.json"))
    for run in runs:
        alone, together = (pd.read_csv(tmp_path / e / "v" / run / "history.csv") for e in ("sequential", "vectorized"))
        pd.testing.assert_frame_equal(together[COMPARED], alone[COMPARED], rtol=1e-4, atol=1e-6)
        assert len(list((tmp_path / "vectorized" / "v" / run / "wandb").glob("offline-run-*/*.wandb"))) == 1


def test_vectorized_needs_the_basic_launcher(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gradlab", "sweep", "model=mlp", "seed=0,1", "engine=vectorized",
                          "launcher=local"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: engine=vectorized: ")
    assert not (tmp_path / "results").exists()


def test_a_group_too_large_for_memory_is_trained_in_parts(compose, monkeypatch, capsys):
    from gradlab import vectorized

    confs = [compose("model=mlp", *SMALL["mlp"], *COMMON, f"seed={seed}", "progress=lines") for seed in range(4)]
    need = vectorized.member_bytes(confs[0])
    assert need > 0
    monkeypatch.setattr(vectorized, "available", lambda device: 4 * need + 1)  # room for 2 at half the free memory
    vectorized.run_groups(confs)
    out = capsys.readouterr().out
    assert "4 runs (mlp on digits, batch 64, 8 steps) do not fit in memory together" in out
    assert "training them 2 at a time" in out and out.count("[vectorized] 2 run(s) together") == 2
    assert [s["status"] for s in map(vectorized_summary, confs)] == ["completed"] * 4


def vectorized_summary(conf: dict) -> dict:
    from gradlab import records

    return records.read(sweep_dir(conf) / run_id(conf))


# --- engine=auto: together only where gradlab bench measured it faster

def auto_part(compose, runs: int, *overrides):
    from gradlab.vectorized import schedule

    (part,) = schedule([compose(*overrides, f"seed={seed}") for seed in range(runs)])
    return part


@pytest.mark.parametrize("model,runs,engine,figure", [
    ("mlp", 16, "vectorized", "1.5x faster"),
    ("mlp", 8, "sequential", "4-8 runs 0.9-1.4x, not safe"),
    ("rnn", 4, "vectorized", "1.5x faster"),
    ("gru", 4, "vectorized", "1.3x faster"),
    ("lstm", 16, "sequential", "0.55x"),
    ("transformer", 8, "sequential", "0.64-0.94x"),
])
def test_auto_trains_together_only_what_was_measured_faster(compose, model, runs, engine, figure):
    part = auto_part(compose, runs, f"model={model}")
    assert part.engine == engine and len(part.runs) == runs and figure in part.why


def test_auto_leaves_what_was_not_measured_sequential_and_the_engines_can_be_forced(compose):
    mine = auto_part(compose, 16, "model=custom", "model._target_=mynets.nets.ResidualMLP")
    assert mine.engine == "sequential" and mine.why == "auto: not measured on model residualmlp, so sequential"
    assert auto_part(compose, 16, "model=lstm", "engine=vectorized").engine == "vectorized"
    assert auto_part(compose, 16, "model=mlp", "engine=sequential").engine == "sequential"


def test_dry_run_says_which_engine_each_group_gets_and_why(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gradlab", "sweep", "model=rnn,lstm", "seed=0,1,2,3", "--dry-run"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "engine: auto, 2 group(s)" in out.stdout
    assert "4 run(s) together: rnn on adding, batch 64, 1500 steps (auto: rnn: 4 and 16 runs 1.5x faster together)" in out.stdout
    assert "4 run(s) one at a time: lstm on adding, batch 64, 1500 steps (auto: lstm: 16 runs 0.55x together" in out.stdout


def test_an_auto_sweep_trains_the_measured_groups_together(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gradlab", "sweep", "model=rnn", "model.hidden_size=8", "task.length=8",
                          "seed=0,1,2,3", "steps=6", "eval_every=3", "wandb=off", "name=auto"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "[vectorized] 4 run(s) together: rnn on adding" in out.stdout
    assert "sweep finished: 4 runs (4 completed)" in out.stdout
