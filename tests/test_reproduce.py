"""`gradlab reproduce`: every study end to end at smoke scale, and verdicts that follow the data."""

from __future__ import annotations

import json
from pathlib import Path

from gradlab.cli import app
from gradlab.experiments import STUDIES
from gradlab.experiments.study import OUTCOMES
from test_records import run
from typer.testing import CliRunner


def reproduce(args, cwd):
    """`gradlab reproduce ARGS` from the folder cwd, in this process."""
    return run(["reproduce", *args], cwd, code=0)


def verdict(report: Path) -> tuple[str, list[str]]:
    """The report's outcome and its verdict lines."""
    text = report.read_text().split("## Verdict: ")[1]
    outcome, rest = text.split("\n", 1)
    return outcome, [line[2:] for line in rest.split("\n\n")[1].splitlines()]


def test_list_names_every_study():
    result = CliRunner().invoke(app, ["reproduce", "--list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == list(STUDIES)
    assert len(STUDIES) == 10


def test_every_study_runs_and_reports_at_smoke_scale(tmp_path):
    from gradlab.experiments import study_module

    out = reproduce(["all", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    for name in STUDIES:
        report = tmp_path / "results" / name / "smoke" / "report.md"
        assert f"{name}: report -> {report.relative_to(tmp_path)}" in out.stdout
        text = report.read_text()
        protocol = study_module(name).protocol("smoke")
        assert text.startswith(f"# {name} (smoke scale)")
        assert f"**Claim.** {protocol.claim}" in text and f"**Protocol.** {protocol.digest()}" in text
        outcome, lines = verdict(report)
        assert outcome in OUTCOMES and lines[0].startswith("Negative control: "), name
        assert all(c.name in text for c in protocol.comparisons), name
        assert (
            "Stopped: " in text
            and "**Power, before the evaluation runs**" in text
            and "gradlab sweep " in text
        )
        assert "**Statistics.**" in text and all(d in text for d in protocol.departures)
        for image in Path(report.parent).glob("*/curves.png"):
            assert f"({image.parent.name}/curves.png)" in text


def test_verdict_follows_the_records_and_finished_runs_are_reused(tmp_path):
    reproduce(["seed-004", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    report = tmp_path / "results" / "seed-004" / "smoke" / "report.md"
    _, before = verdict(report)
    compared = next(line for line in before if line.startswith("norm 1 against none, mse_over_var"))
    assert ": **holds**." in compared  # clipping at 1.0 leaves the tutorial's run as it was
    summaries = sorted(report.parent.glob("*/*/summary.json"))
    written = [p.stat().st_mtime_ns for p in summaries]
    clipped = [p for p in summaries if "norm" in p.parent.name and p.parent.parent.name == "main"]
    for p in clipped:
        record = json.loads(p.read_text())
        record["train_loss_final"] = 9.0 + record["seed"] % 7  # as if clipping had wrecked the run
        p.write_text(json.dumps(record))

    reproduce(["seed-004", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    outcome, after = verdict(report)
    assert [p.stat().st_mtime_ns for p in summaries if p not in clipped] == [
        t for p, t in zip(summaries, written) if p not in clipped
    ]  # no run was trained again
    compared = next(line for line in after if line.startswith("norm 1 against none, mse_over_var"))
    assert ": **contradicted**." in compared and outcome in ("contradicted", "not stressed")


def test_unknown_study_and_scale_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["reproduce", "lstm-addding"])
    assert result.exit_code == 2 and result.stderr.startswith("error: study=lstm-addding: choose from")
    result = CliRunner().invoke(app, ["reproduce", "seed-004", "--scale", "huge"])
    assert result.exit_code == 2 and "--scale huge: choose from smoke, quick, full" in result.stderr
    assert not (tmp_path / "results").exists()


def test_accumulation_study_finds_correct_accumulation_equals_the_big_batch(tmp_path):
    reproduce(["accumulation", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    _, lines = verdict(tmp_path / "results" / "accumulation" / "smoke" / "report.md")
    correct = next(
        line for line in lines if line.startswith("accumulated, norm 0.5 against one batch of 16, norm 0.5")
    )
    assert ": **holds**. +0 [+0, +0]" in correct  # the same run, to the last bit


def test_every_study_looks_at_five_seeds_or_more_at_a_time_at_quick_scale():
    from gradlab.experiments import study_module

    for name in STUDIES:
        seeds = study_module(name).protocol("quick").seeds
        assert seeds.batch >= 5 and seeds.cap >= 2 * seeds.batch, name
