"""The user's own model, task and configs (`_target_`, `--config-dir`, task=dataset), treated
exactly like the built-ins: through the CLI, across launchers, resume, compare and plot."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from patience import PATIENCE
from test_records import process as cli_process
from test_records import run
from torch import nn

from gradlab import launch
from gradlab.components import option
from gradlab.errors import ConfigError
from gradlab.tasks import Task, TaskSpec, build_task

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHORT = ["steps=30", "eval_every=10", "log_every=5", "wandb=off"]


def gradlab(args, cwd: Path, code: int = 0, process: bool = False) -> SimpleNamespace:
    """`gradlab ARGS` from the folder cwd with the example package importable: in this process, or
    with `process` in a real one (for what needs its own: the parallel launchers' workers, W&B's
    service)."""
    if process:
        path = os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])
        return cli_process(args, cwd, {**os.environ, "PYTHONPATH": path}, code)
    sys.path.insert(0, str(EXAMPLES))
    try:
        return run(args, cwd, code)
    finally:
        sys.path.remove(str(EXAMPLES))


def records(sweep: Path) -> dict:
    return {
        d.name: json.loads((d / "summary.json").read_text())
        for d in sorted(sweep.iterdir())
        if (d / "summary.json").exists()
    }


@pytest.fixture(scope="module")
def example_sweep(tmp_path_factory) -> Path:
    """The example package's model on its task, 2 clip modes x 2 seeds, made once for the tests below."""
    cwd = tmp_path_factory.mktemp("example")
    gradlab(
        [
            "sweep",
            "--config-dir",
            str(EXAMPLES / "conf"),
            "model=resmlp",
            "task=spirals",
            "clip=none,norm",
            "max_norm=0.5",
            "seed=0,1",
            "name=example",
            "-q",
            *SHORT,
        ],
        cwd,
    )
    return cwd / "results" / "example"


def test_example_sweep_trains_the_users_model_on_the_users_data(example_sweep):
    made = records(example_sweep)
    assert len(made) == 4 and all(s["status"] == "completed" for s in made.values())
    assert sorted(s["name"] for s in made.values()) == [
        "resmlp-spirals-none-s0",
        "resmlp-spirals-none-s1",
        "resmlp-spirals-norm0.5-s0",
        "resmlp-spirals-norm0.5-s1",
    ]
    chance = torch.log(torch.tensor(3.0)).item()  # cross-entropy of guessing among the 3 arms
    assert all(s["eval_loss_final"] < chance for s in made.values())  # it learnt something in 30 steps
    clipped = [s["clip_fraction"] for s in made.values() if "norm" in s["name"]]
    assert all(f > 0 for f in clipped)
    config = (example_sweep / next(iter(made)) / "config.yaml").read_text()
    assert "_target_: mynets.nets.ResidualMLP" in config and "_target_: mynets.data.Spirals" in config


def test_dry_run_resume_compare_and_plot_treat_it_like_a_built_in(example_sweep):
    cwd = example_sweep.parent.parent
    command = [
        "sweep",
        "--config-dir",
        str(EXAMPLES / "conf"),
        "model=resmlp",
        "task=spirals",
        "clip=none,norm",
        "max_norm=0.5",
        "seed=0,1",
        "name=example",
        *SHORT,
    ]
    dry = gradlab([*command, "--dry-run"], cwd).stdout
    assert dry.count("done (completed)") == 4
    victim = sorted(example_sweep.glob("resmlp-spirals-norm0.5-s1-*"))[0]
    kept = {name: json.dumps(s) for name, s in records(example_sweep).items() if name != victim.name}
    (victim / "summary.json").unlink()  # as if that run had been killed before its record was complete
    out = gradlab([*command, "progress=lines"], cwd).stdout
    assert "4 runs (1 completed, 3 skipped)" in out
    assert {name: json.dumps(s) for name, s in records(example_sweep).items() if name != victim.name} == kept
    assert records(example_sweep)[victim.name]["status"] == "completed"

    gradlab(["compare", str(example_sweep)], cwd)
    rows = pd.read_csv(example_sweep / "comparison.csv")
    assert sorted(rows["clip.mode"]) == ["none", "norm"] and set(rows["completed"]) == {2}
    written = gradlab(["plot", str(example_sweep)], cwd).stdout
    assert all(Path(p).exists() for p in written.removeprefix("wrote ").strip().split(", "))


def test_example_trains_alone_and_logs_to_wandb_offline(tmp_path):
    gradlab(
        [
            "train",
            "--config-dir",
            str(EXAMPLES / "conf"),
            "model=resmlp",
            "task=spirals",
            "steps=20",
            "wandb=offline",
            "-q",
        ],
        tmp_path,
        process=True,  # what wandb writes: its service belongs to the process
    )
    (run,) = (tmp_path / "results").glob("*/resmlp-spirals-norm1-s0-*")
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))  # the real wandb library's own file


@pytest.mark.parametrize("launcher", ["local", "slurm_local"])
def test_example_runs_under_the_parallel_launchers(tmp_path, launcher):
    gradlab(
        [
            "sweep",
            "--config-dir",
            str(EXAMPLES / "conf"),
            "model=resmlp",
            "task=spirals",
            "seed=0,1",
            f"launcher={launcher}",
            "workers=2",
            "name=par",
            "-q",
            *SHORT,
        ],
        tmp_path,
        process=True,
    )
    made = records(tmp_path / "results" / "par")
    assert len(made) == 2 and all(s["status"] == "completed" for s in made.values())


def test_model_custom_takes_any_importable_class_and_its_knobs(tmp_path):
    gradlab(
        [
            "sweep",
            "model=custom",
            "model._target_=mynets.nets.ResidualMLP",
            "+model.width=16",
            "task=digits",
            "clip=norm",
            "max_norm=0.5,5",
            "name=mine",
            "-q",
            *SHORT,
        ],
        tmp_path,
    )
    made = records(tmp_path / "results" / "mine")
    assert sorted(s["name"] for s in made.values()) == [
        "residualmlp-digits-norm0.5-s0",
        "residualmlp-digits-norm5-s0",
    ]
    run = next((tmp_path / "results" / "mine").glob("residualmlp-digits-norm5-*"))
    model = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())["model"]))
    assert model == {"_target_": "mynets.nets.ResidualMLP", "width": 16, "name": "residualmlp"}


def test_list_shows_the_users_options_beside_the_built_ins(tmp_path):
    out = gradlab(["list", "--config-dir", str(EXAMPLES / "conf")], tmp_path).stdout
    assert (
        "resmlp           A residual MLP from the example package (code: examples/mynets/nets.py). "
        f"[{EXAMPLES / 'conf'}]" in out
    )
    assert "  spirals " in out and "  lstm " in out and "  custom " in out


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["model=custom", "model._target_=mynets.nets.ResidualMLP", "+model.widht=16"],
            "model.widht: unknown key for model=residualmlp (mynets.nets.ResidualMLP); allowed: width, depth",
        ),
        (
            ["model=custom", "model._target_=mynets.nets.NoSuchNet"],
            "model._target_=mynets.nets.NoSuchNet: cannot import it",
        ),
        (["model=custom"], "model._target_=???: name the class as package.module.Class"),
        (
            ["model=custom", "model._target_=mynets.nets.ResidualMLP", "task=copy"],
            "model=residualmlp: cannot train on task=copy (input tokens (70,), output token_classes (70, 9))",
        ),
        (["model=resmlp", "task=spirals", "task.classes=1"], "task.classes=1: an integer >= 2"),
        (
            ["model=resmlp", "task=spirals", "task.train.n_points=5"],
            "task.train.n_points: unknown key of task=spirals; did you mean task.train.n?",
        ),
        (
            ["model=resmlp", "task=spirals", "+task.train.n_points=5"],
            "task.train.n_points: unknown key for task.train=spirals (mynets.data.Spirals); "
            "allowed: n, arms, noise, seed",
        ),
        (
            ["model=resmlpp"],
            "model=resmlpp: choose from custom, gru, lstm, lstm_urnn, mlp, resmlp, rnn, transformer",
        ),
    ],
)
def test_bad_user_components_fail_in_one_line_and_write_nothing(tmp_path, args, message):
    out = gradlab(["sweep", "--config-dir", str(EXAMPLES / "conf"), *args, "max_norm=1,5"], tmp_path, code=2)
    assert out.stderr.startswith(f"error: {message}") and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "results").exists()


def test_config_dir_that_is_not_a_folder_is_refused(tmp_path):
    out = gradlab(["train", "--config-dir", "nowhere", "model=resmlp"], tmp_path, code=2)
    assert (
        out.stderr
        == "error: --config-dir=nowhere: not a folder; give one that holds model/, task/, clip/ ... "
        "folders of YAML\n"
    )


# --- a sweep builds each model once


class CountingNet(nn.Module):
    """A user's model that notes the device of every construction."""

    built: list = []

    def __init__(self, spec, width: int = 8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(spec.shape), width), nn.ReLU(), nn.Linear(width, spec.n_out)
        )
        CountingNet.built.append(self.net[1].weight.device.type)

    def forward(self, x):
        return self.net(x)


def test_a_sweep_builds_each_model_once_on_the_device(tmp_path):
    CountingNet.built.clear()
    swept = launch.sweep(
        [
            "model=custom",
            f"model._target_={__name__}.CountingNet",
            "task=digits",
            "clip=norm",
            "max_norm=0.5,5",
            "seed=0,1",
            "steps=3",
            "wandb=off",
            "progress=none",
            f"results_root={tmp_path}",
        ]
    )
    assert swept.counts["completed"] == 4
    # checking the sweep built it once on the meta device (shapes only, no memory); each run once for real
    assert CountingNet.built == ["meta", "cpu", "cpu", "cpu", "cpu"]
    CountingNet.built.clear()
    assert (
        launch.sweep(
            [
                "model=custom",
                f"model._target_={__name__}.CountingNet",
                "task=digits",
                "clip=norm",
                "max_norm=0.5,5",
                "seed=0,1",
                "steps=3",
                "wandb=off",
                "progress=none",
                f"results_root={tmp_path}",
            ]
        ).counts["skipped"]
        == 4
    )
    assert CountingNet.built == ["meta"]  # finished runs are not built again


# --- the task contract: the Task interface, or two Datasets


class TinyTask(Task):
    """A user's task on the Task interface: y = sum of the inputs, on the device."""

    def __init__(self, features: int = 4):
        self.spec = TaskSpec("vector", (features,), "regression", 1)

    def load(self, device):
        self.device = device
        g = torch.Generator().manual_seed(123)
        x = torch.randn(64, self.spec.shape[0], generator=g)
        self.eval = [(x.to(device), x.sum(1, keepdim=True).to(device))]

    def batches(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        while True:
            x = torch.randn(n, self.spec.shape[0], generator=g)
            yield x.to(self.device), x.sum(1, keepdim=True).to(self.device)

    def eval_batches(self):
        return self.eval


def test_a_task_on_the_task_interface_trains(compose):
    from gradlab.train import train

    conf = compose(
        "model=mlp",
        "task=custom",
        f"task._target_={__name__}.TinyTask",
        "+task.features=3",
        "steps=200",
        "eval_every=0",
        "wandb=off",
        "lr=0.01",
    )
    summary = train(conf)
    assert summary["status"] == "completed" and summary["name"] == "mlp-tinytask-norm1-s0"
    assert summary["eval_loss_final"] < 0.1 * 3  # Var(sum of 3 standard normals) = 3: the fit is far better


class Pairs(torch.utils.data.Dataset):
    """n samples (x, y) made from `seed`; y an int class, or a float target (`regression`)."""

    def __init__(self, n: int, seed: int, regression: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x.sum(1) if regression else (self.x[:, 0] > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def dataset_task(**changes):
    train = {"_target_": f"{__name__}.Pairs", "n": 50, "seed": 0}
    held_out = {"_target_": f"{__name__}.Pairs", "n": 30, "seed": 1}
    return build_task(
        option("task", "dataset", **{"train": train, "eval": held_out, "classes": 2, **changes})
    )


def test_dataset_task_reads_its_spec_and_serves_seeded_batches():
    task = dataset_task()
    assert task.spec == TaskSpec("vector", (5,), "classes", 2)
    task.load("cpu")

    def take(seed):  # 128 samples: across epoch ends
        return list(itertools.islice(task.batches(16, seed), 8))

    first, again, other = take(0), take(0), take(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    epoch = torch.cat([x for x, _ in first])[:48]  # the first 3 batches hold 48 of the 50 samples, none twice
    assert len({tuple(row.tolist()) for row in epoch}) == 48
    ((x, y),) = task.eval_batches()
    assert torch.equal(x, Pairs(30, 1).x) and torch.equal(y, Pairs(30, 1).y)  # whole, in its own order


def test_dataset_task_with_mse_gives_targets_as_columns():
    task = dataset_task(
        loss="mse",
        classes=None,
        train={"_target_": f"{__name__}.Pairs", "n": 50, "seed": 0, "regression": True},
    )
    assert task.spec.output == "regression" and task.spec.n_out == 1
    task.load("cpu")
    x, y = next(task.batches(8, 0))
    assert y.shape == (8, 1) and torch.allclose(y[:, 0], x.sum(1))


def test_dataset_task_refuses_a_loss_it_does_not_know():
    with pytest.raises(ConfigError, match=r"^task.loss=hinge: choose from cross_entropy, mse$"):
        dataset_task(loss="hinge")


# --- the README's "Your own model" and "Clipping in your own loop" sections, run as written

README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def python_blocks(text: str) -> list[str]:
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def commands(text: str) -> list[str]:
    """The section's shell commands: its indented lines that start with one."""
    return [
        line.strip()
        for line in text.splitlines()
        if line.startswith("    ") and line.strip().startswith(("gradlab ", "PYTHONPATH="))
    ]


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    out = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=PATIENCE
    )
    assert out.returncode == 0, f"{command}\n{out.stdout}\n{out.stderr}"
    return out


def test_readme_your_own_model_runs_as_written(tmp_path):
    (tmp_path / "examples").symlink_to(EXAMPLES)
    run = commands(section("Your own model"))
    assert len(run) == 3 and all(
        c.startswith(("PYTHONPATH=examples gradlab ", "gradlab compare ")) for c in run
    )
    for command in run:
        shell(command, tmp_path)
    made = records(tmp_path / "results" / "resmlp_spirals_none,norm_max_norm-0.1,1_seed-0,1,2")
    assert len(made) == 9 and all(s["status"] == "completed" for s in made.values())  # none: once per seed
    custom = records(next((tmp_path / "results").glob("custom_digits_norm_*")))
    assert sorted(s["name"] for s in custom.values()) == [
        f"residualmlp-digits-norm{c}-s0" for c in ("0.5", "1", "5")
    ]
    shown = shell("PYTHONPATH=examples gradlab list --config-dir examples/conf", tmp_path).stdout
    assert "  resmlp " in shown and "  spirals " in shown


def test_readme_clipping_in_your_own_loop_runs_as_written(tmp_path):
    text = section("Clipping in your own loop")
    blocks = python_blocks(text)
    assert len(blocks) == 4
    outputs = [shell(f"python - <<'EOF'\n{block}EOF", tmp_path).stdout for block in blocks]
    assert "zclip state: ['count', 'mean', 'var']" in outputs[0]
    assert "->" in outputs[1]
    for output in outputs[2:]:  # Lightning, then transformers: each prints its run's folder
        run_dir = Path(tmp_path / output.strip().splitlines()[-1])
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    for compare, trainer in zip(commands(text), ["lightning", "transformers"], strict=True):
        shell(compare, tmp_path)
        table = pd.read_csv(tmp_path / "results" / trainer / "comparison.csv")
        assert table["completed"].tolist() == [1] and table["eval_loss_final_mean"].notna().all()


# --- the clipping library


def grads_of(model) -> list:
    return [p.grad.clone() for p in model.parameters()]


def model_with_grads(seed: int = 0, scale: float = 10.0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    (scale * model(torch.randn(8, 6)).square().mean()).backward()
    return model


def test_make_clips_as_torch_does_and_reports_both_norms():
    from gradlab.clip import make

    model, reference = model_with_grads(), model_with_grads()
    result = make("norm", max_norm=0.5)(model.parameters())
    before = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert torch.equal(result.norm_before, before) and bool(result.fired)
    assert all(torch.equal(a, b) for a, b in zip(grads_of(model), grads_of(reference)))
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert torch.allclose(result.norm_after, after) and after <= 0.5 + 1e-6


def test_make_takes_short_and_config_names_and_refuses_others():
    from gradlab.clip import config, make

    assert config("zclip", z=3.0) == config("zclip", zclip_z=3.0) != config("zclip")
    assert (
        config("value", value=0.1)["clip_value"] == 0.1
        and config("autoclip", percentile=5)["clip_percentile"] == 5
    )
    with pytest.raises(ConfigError, match="^max_nrm=1: not a knob of clip mode norm; allowed: max_norm$"):
        make("norm", max_nrm=1)
    with pytest.raises(ConfigError, match="^clip=normal: choose from"):
        make("normal")


def test_chain_applies_each_mode_to_what_the_one_before_left():
    from gradlab.clip import chain, make

    model, reference = model_with_grads(), model_with_grads()
    result = chain(make("value", value=0.05), make("norm", max_norm=0.1))(model.parameters())
    torch.nn.utils.clip_grad_value_(reference.parameters(), 0.05)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(grads_of(model), grads_of(reference)))
    assert bool(result.fired) and result.norm_after <= 0.1 + 1e-6
    again = chain(make("value", value=0.05), make("norm", max_norm=0.1))(model.parameters())
    assert not bool(again.fired) and torch.allclose(
        again.norm_before, result.norm_after
    )  # clipping twice: no change


def test_an_adaptive_clippers_state_carries_over():
    from gradlab.clip import make

    first, second = make("autoclip", percentile=50), make("autoclip", percentile=50)
    for seed in range(5):
        first(model_with_grads(seed, scale=seed + 1).parameters())
    second.load_state_dict(first.state_dict())
    a, b = model_with_grads(9), model_with_grads(9)
    assert torch.equal(first(a.parameters()).norm_after, second(b.parameters()).norm_after)
    assert all(torch.equal(x, y) for x, y in zip(first.state_dict().values(), second.state_dict().values()))


def test_a_chain_is_a_clip_mode_in_a_users_config(tmp_path):
    gradlab(
        [
            "sweep",
            "--config-dir",
            str(EXAMPLES / "conf"),
            "model=resmlp",
            "task=spirals",
            "clip=agc_capped",
            "max_norm=0.05,100",
            "agc_lambda=0.001",
            "layer_norms_every=5",
            "name=chain",
            "-q",
            *SHORT,
        ],
        tmp_path,
    )
    runs = {s["run_id"]: s for s in records(tmp_path / "results" / "chain").values()}
    assert len(runs) == 2 and all(s["status"] == "completed" for s in runs.values())
    for run_id in runs:
        history = pd.read_csv(tmp_path / "results" / "chain" / run_id / "history.csv")
        cap = 0.05 if "0.05" in (tmp_path / "results" / "chain" / run_id / "config.yaml").read_text() else 100
        assert (history["grad_norm_clipped"] <= cap * (1 + 1e-5)).all()
        assert history["clipped"].all()  # AGC at lambda 1e-3 fires on every step, whatever the cap
        layers = pd.read_csv(tmp_path / "results" / "chain" / run_id / "layer_norms.csv")
        assert layers["clip_fraction"].notna().any()  # AGC's per-tensor clip fractions, through the chain


def test_suggest_for_your_own_model_and_task(tmp_path):
    """The pilot trains the user's model on the user's task; the sweep it prints keeps their config folder."""
    out = gradlab(
        [
            "suggest",
            "--config-dir",
            str(EXAMPLES / "conf"),
            "model=resmlp",
            "task=spirals",
            "steps=40",
            "--pilot-steps",
            "20",
            "wandb=off",
        ],
        tmp_path,
    ).stdout
    (pilot,) = tmp_path.glob("results/suggest_*/*/config.yaml")
    assert pilot.parent.name.startswith("resmlp-spirals-none-s0-")
    assert (
        f"gradlab sweep --config-dir {EXAMPLES / 'conf'} model=resmlp task=spirals steps=40 wandb=off "
        "clip=none,norm" in out
    )
