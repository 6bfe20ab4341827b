"""Configs: every YAML of every config group composes and builds a run, picks what its
name says, documents each key it sets, and the README's sweep expands as Hydra would."""

import re
from pathlib import Path

import pytest
import yaml

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
    assert {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")} == set(GROUPS)
    assert all(options(group) for group in GROUPS)


@pytest.mark.parametrize("group,name", CONFIGS, ids=[f"{g}={n}" for g, n in CONFIGS])
def test_config_composes_and_builds(compose, group, name):
    overrides = [f"{group}={name}"]
    if group == "task":
        overrides.append(f"model={MODEL_FOR.get(name, 'lstm')}")
    conf = compose(*overrides)
    if group in NAMED_BY:
        assert conf[group][NAMED_BY[group]] == name
    if group == "model":  # its default task (and optimizer) replace the top-level defaults
        source = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
        defaults = {key.split("/")[1].split("@")[0]: value for entry in source["defaults"] for key, value in entry.items()}
        assert all(conf[g]["name"] == value for g, value in defaults.items())
    if name in NEEDS_FILES:
        assert build_task({**conf["task"], "download": False}).spec.shape  # builds; data untouched
    else:
        run = build(conf)
        assert run.model.training and any(p.requires_grad for p in run.model.parameters())


KEY_VALUE = re.compile(r"^\s*([\w.@/]+):\s+(\S.*)$")  # `key: value` at any indent; list items start with '-'
EXEMPT = ("name", "mode", "defaults")


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
        "# header\nname: x\na: 1  # documented\nb: 2\nc:\n  d: 3\n  - e: 4\nhydra:\n  f: 5\n")
    assert undocumented(tmp_path / "x.yaml") == ["4: b: 2", "6: d: 3"]


def test_readme_sweep_expands_to_one_job_per_value(compose):
    command = re.search(r"gradlab sweep (model=lstm clip=norm max_norm=1,5)\s", README.read_text())
    assert command, "the README no longer shows the max_norm=1,5 sweep"
    jobs = expand(command[1].split())
    assert jobs == [["model=lstm", "clip=norm", "max_norm=1"], ["model=lstm", "clip=norm", "max_norm=5"]]
    confs = [compose(*job) for job in jobs]
    assert [c["clip"]["max_norm"] for c in confs] == [1, 5]
    assert all(c["model"]["name"] == "lstm" and c["clip"]["mode"] == "norm" for c in confs)
