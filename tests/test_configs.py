"""Configs: every YAML of every config group composes and builds a run, picks what its
name says, documents each key it sets, and the README's sweep expands as Hydra would."""

import re
from pathlib import Path

import pytest
import yaml
from hydra.errors import HydraException

from gradlab.config import run_id
from gradlab.errors import ConfigError
from gradlab.launch import options
from gradlab.sweep import GROUPS, expand
from gradlab.tasks import build_task
from gradlab.train import build

ROOT = Path(__file__).resolve().parents[1]
CONF, README = ROOT / "conf", ROOT / "README.md"
NEEDS_FILES = ("mnist", "fashion_mnist", "cifar10")  # torchvision data: tests/test_tasks.py fakes it
MODEL_FOR = {"regression": "mlp"}  # the default model (lstm) needs a sequence axis
# the key of each group's YAML that names it: conf/<group>/<name>.yaml sets <key>: <name>
NAMED_BY = {"model": "name", "task": "name", "optim": "name", "clip": "mode"}
CONFIGS = [(group, name) for group in GROUPS for name in options(group)]


def test_every_conf_folder_is_a_group():
    """Every group has a folder of YAML but clip, whose modes' configs come from their classes."""
    folders = {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == set(GROUPS) - {"clip"}
    assert all(options(group) for group in GROUPS)
    assert all(f is None for f in options("clip").values())


@pytest.mark.parametrize("group,name", CONFIGS, ids=[f"{g}={n}" for g, n in CONFIGS])
def test_config_composes_and_builds(compose, group, name):
    overrides = [f"{group}={name}"]
    if name in ("custom", "dataset"):  # the user's own class or data: without it, one line naming the key
        key = f"{group}._target_" if name == "custom" else "task.train._target_"
        with pytest.raises(
            ConfigError, match=rf"^{re.escape(key)}=\?\?\?: name the class as package.module.Class"
        ):
            build(compose(*overrides))
        return
    if group == "task":
        overrides.append(f"model={MODEL_FOR.get(name, 'lstm')}")
    conf = compose(*overrides)
    if group in NAMED_BY:
        assert conf[group][NAMED_BY[group]] == name
    if group == "model":  # its default task (and optimizer) replace the top-level defaults
        source = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
        defaults = {
            key.split("/")[1].split("@")[0]: value
            for entry in source["defaults"]
            for key, value in entry.items()
        }
        assert all(conf[g]["name"] == value for g, value in defaults.items())
    if name in NEEDS_FILES:
        assert build_task({**conf["task"], "download": False}).spec.shape  # builds; data untouched
    else:
        run = build(conf)
        assert run.model.training and any(p.requires_grad for p in run.model.parameters())


KEY_VALUE = re.compile(r"^\s*([\w.@/]+):\s+(\S.*)$")  # `key: value` at any indent; list items start with '-'
EXEMPT = ("name", "mode", "defaults", "_target_")


def undocumented(path: Path) -> list:
    """`key: value` lines without a trailing comment (the hydra: block of config.yaml aside)."""
    missing, in_hydra = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line[:1].strip() and not line.startswith("#"):
            in_hydra = line.startswith("hydra:")
        match = KEY_VALUE.match(line)
        if match and not in_hydra and match[1] not in EXEMPT and "#" not in match[2]:
            missing.append(f"{number}: {line.strip()}")
    return missing


YAMLS = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS)
def test_every_key_has_a_comment(path):
    assert undocumented(CONF / path) == []


def test_undocumented_key_is_found(tmp_path):
    (tmp_path / "x.yaml").write_text(
        "# header\nname: x\na: 1  # documented\nb: 2\nc:\n  d: 3\n  - e: 4\nhydra:\n  f: 5\n"
    )
    assert undocumented(tmp_path / "x.yaml") == ["4: b: 2", "6: d: 3"]


def test_readme_sweep_expands_to_one_job_per_value(compose):
    command = re.search(r"gradlab sweep (model=lstm clip=norm max_norm=1,5)\s", README.read_text())
    assert command, "the README no longer shows the max_norm=1,5 sweep"
    jobs = expand(command[1].split())
    assert jobs == [["model=lstm", "clip=norm", "max_norm=1"], ["model=lstm", "clip=norm", "max_norm=5"]]
    confs = [compose(*job) for job in jobs]
    assert [c["clip"]["max_norm"] for c in confs] == [1, 5]
    assert all(c["model"]["name"] == "lstm" and c["clip"]["mode"] == "norm" for c in confs)


def test_a_grid_expands_as_hydras_sweep_grammar_says():
    """Every combination, in the order given; range() and quoted values; a key given twice: the last."""
    jobs = expand(["clip=none,norm", "seed=range(0,2)", "name='a,b'", "lr=1", "lr=2,3"])
    assert jobs == [
        [c, f"seed={s}", "name='a,b'", f"lr={lr}"]
        for c in ("clip=none", "clip=norm")
        for s in (0, 1)
        for lr in (2, 3)
    ]
    with pytest.raises(HydraException, match="interval"):
        expand(["max_norm=interval(0.1,1)"])


# run ids as they were before components named their classes (`_target_`); a built-in run keeps its id
RUN_IDS = {
    "": "lstm-adding-norm1-s0-4509799f",
    "model=mlp": "mlp-digits-norm1-s0-b7d9d21f",
    "model=rnn": "rnn-adding-norm1-s0-c5c1b297",
    "model=gru": "gru-adding-norm1-s0-6fcab658",
    "model=transformer": "transformer-text-norm1-s0-25a5036d",
    "clip=none": "lstm-adding-none-s0-5b442bd0",
    "clip=value": "lstm-adding-value0.5-s0-3df50b97",
    "clip=norm_per_layer": "lstm-adding-norm_per_layer1-s0-930db201",
    "clip=autoclip": "lstm-adding-autoclip10-s0-cfa1a844",
    "clip=agc": "lstm-adding-agc0.01-s0-8c622b18",
    "clip=zclip": "lstm-adding-zclip2.5-s0-d5903707",
    "optim=sgd lr=0.1": "lstm-adding-norm1-s0-e6cc3c43",
    "optim=adamw": "lstm-adding-norm1-s0-177636ef",
    "optim=rmsprop": "lstm-adding-norm1-s0-36723957",
    "task=copy": "lstm-copy-norm1-s0-2dd1ba1a",
    "task=temporal_order": "lstm-temporal_order-norm1-s0-cb0de676",
    "model=mlp task=regression": "mlp-regression-norm1-s0-f096fab8",
    "model=mlp task=mnist": "mlp-mnist-norm1-s0-d70af8c6",
    "model=mlp task=cifar10": "mlp-cifar10-norm1-s0-beaec264",
    "task=digits": "lstm-digits-norm1-s0-077e6061",
    "experiment=seed_004": "mlp-regression-norm1-s0-062c6d4b",
    "max_norm=5": "lstm-adding-norm5-s0-6629f243",
    "skip_spikes=true": "lstm-adding-norm1-s0-efe9d6e0",
    "model=lstm clip=norm max_norm=1": "lstm-adding-norm1-s0-2ebdc99e",  # the README's main job
}


@pytest.mark.parametrize("overrides", RUN_IDS)
def test_built_in_run_ids_are_unchanged(compose, overrides):
    assert run_id(compose(*overrides.split())) == RUN_IDS[overrides]


def test_a_users_class_is_part_of_the_run_id(compose):
    from gradlab.components import shipped_targets

    assert "gradlab.models.rnn.RecurrentNet" in shipped_targets() and "torch.optim.Adam" in shipped_targets()
    mine = compose("model=lstm", "model._target_=torch.nn.LSTM")  # not gradlab's class: another run
    assert run_id(mine) != RUN_IDS[""] and run_id(mine).startswith("lstm-adding-norm1-s0-")
