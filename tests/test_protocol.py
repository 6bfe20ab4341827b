"""Study protocols (experiments/protocol.py): every study has one that can be followed, its arms
declared once, its evaluation seeds never used before, and `--protocol` prints every field."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from gradlab.experiments import STUDIES, study_module
from gradlab.experiments.protocol import (
    PILOT_SEEDS,
    SUPERIORITY,
    USED_BEFORE,
    Arm,
    Comparison,
    Control,
    Protocol,
    Seeds,
)
from gradlab.experiments.study import SCALES
from test_records import run


def protocols(scale: str = "quick") -> dict[str, Protocol]:
    return {name: study_module(name).protocol(scale) for name in STUDIES}


def test_one_name_per_study_module_and_experiment_config():
    from importlib import resources

    configs = {f.name[:-5] for f in resources.files("gradlab.conf").joinpath("experiment").iterdir()}
    for name, module in STUDIES.items():
        assert study_module(name).NAME == name == protocols()[name].name and module == name.replace("-", "_")
        assert module in configs and f"experiment={module}" in protocols()[name].shared, name


@pytest.mark.parametrize("scale", SCALES)
def test_every_study_at_every_scale_has_a_protocol_that_can_be_followed(scale):
    for protocol in protocols(scale).values():
        protocol.check()
        assert protocol.departures and protocol.comparisons


def test_arms_are_declared_once_and_runs_are_picked_by_arm_not_by_filters():
    for name, protocol in protocols().items():
        overrides = [a.overrides for a in protocol.arms]
        assert len(set(overrides)) == len(overrides), name  # no two arms make the same runs
        source = inspect.getsource(study_module(name))
        assert "clip.mode" not in source and "WHERE" not in source, name  # no filter typed beside the arms


def test_evaluation_seeds_were_never_used_before_nor_by_another_study():
    taken: dict[int, str] = {}
    for name, protocol in protocols("full").items():
        evaluation = protocol.seeds.evaluation(protocol.seeds.cap)
        assert not set(evaluation) & set(USED_BEFORE) and not set(evaluation) & set(PILOT_SEEDS), name
        assert set(protocol.seeds.pilot) <= set(PILOT_SEEDS), name
        clash = {taken[s] for s in evaluation if s in taken}
        assert not clash, f"{name} shares evaluation seeds with {clash}"
        taken |= dict.fromkeys(evaluation, name)


def test_protocol_prints_every_field_and_runs_nothing(tmp_path):
    for name, protocol in protocols().items():
        out = run(["reproduce", name, "--protocol"], tmp_path, code=0).stdout
        said = [protocol.claim, protocol.source, " ".join(protocol.shared), protocol.control.failed]
        said += [f"{a.name}: {' '.join(a.overrides)}" for a in protocol.arms]
        said += [*protocol.departures, *protocol.notes, protocol.digest()]
        for c in (*protocol.comparisons, protocol.control.comparison):
            said += [c.name, c.kind, f"{c.effect:g}: {c.why}"]
        s = protocol.seeds
        said += [f"from {s.first}, in batches of {s.batch} up to {s.cap}", ", ".join(map(str, s.pilot))]
        said += [s.spending.replace("_", "-")]
        assert [text for text in said if text not in out] == [], name
    assert not (tmp_path / "results").exists()


def tiny(**changes) -> Protocol:
    c = Comparison("none", "norm", "eval_loss_final", SUPERIORITY, 0.05, "a test")
    fields = dict(
        name="t",
        claim="c",
        source="s",
        shared=(),
        arms=(Arm("none", ("clip=none",)), Arm("norm", ("clip=norm",))),
        comparisons=(c,),
        control=Control(c, "f"),
        seeds=Seeds(1000, 5, 20),
        departures=("d",),
    )
    return Protocol(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes,said",
    [
        ({"arms": (Arm("none", ("clip=none",)), Arm("none", ("clip=norm",)))}, "declared twice"),
        (
            {"comparisons": (Comparison("none", "nrom", "eval_loss_final", SUPERIORITY, 0.05, "typo"),)},
            "no such arm",
        ),
        ({"comparisons": (Comparison("none", "norm", "eval_loss_final", "better", 0.05, "?"),)}, "kind in"),
        ({"seeds": Seeds(10, 5, 20)}, "evaluation seeds must lie in"),
        ({"seeds": Seeds(1000, 5, 20, pilot=(1001,))}, "evaluation seeds must lie in"),
        ({"seeds": Seeds(1000, 5, 20, spending="haybittle")}, "spending haybittle"),
    ],
)
def test_a_protocol_that_cannot_be_followed_is_refused(changes, said):
    tiny().check()
    with pytest.raises(ValueError, match=said):
        tiny(**changes).check()


def test_the_hash_follows_every_field():
    base = tiny()
    assert tiny().digest() == base.digest()
    for field in dataclasses.fields(Protocol):
        value = getattr(base, field.name)
        other = (
            dataclasses.replace(value, first=2000)
            if isinstance(value, Seeds)
            else (*value, "x")
            if isinstance(value, tuple)
            else dataclasses.replace(value, failed="g")
            if dataclasses.is_dataclass(value)
            else value + "x"
        )
        assert tiny(**{field.name: other}).digest() != base.digest(), field.name
