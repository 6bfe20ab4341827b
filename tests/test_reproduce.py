"""`gradlab reproduce`: every study end to end at smoke scale, and verdicts that follow the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.experiments import STUDIES


def reproduce(args, cwd):
    out = subprocess.run([sys.executable, "-m", "gradlab", "reproduce", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out


def verdict(report: Path) -> list[str]:
    lines = report.read_text().split("## Verdict (computed from the tables below)\n\n")[1].split("\n\n")[0]
    return lines.splitlines()


def test_list_names_every_study():
    result = CliRunner().invoke(app, ["reproduce", "--list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == list(STUDIES)
    assert len(STUDIES) == 10


def test_every_study_runs_and_reports_at_smoke_scale(tmp_path):
    out = reproduce(["all", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    for name in STUDIES:
        report = tmp_path / "results" / name / "smoke" / "report.md"
        assert f"{name}: report -> {report.relative_to(tmp_path)}" in out.stdout
        text = report.read_text()
        assert text.startswith(f"# {name} (smoke scale)")
        assert "**Claim.**" in text and "**Source.**" in text and "gradlab sweep " in text
        assert verdict(report), name  # at least one computed verdict line
        for image in Path(report.parent).glob("*/curves.png"):
            assert f"({image.parent.name}/curves.png)" in text


def test_verdict_follows_the_records_and_finished_runs_are_reused(tmp_path):
    reproduce(["seed-004", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    report = tmp_path / "results" / "seed-004" / "smoke" / "report.md"
    before = verdict(report)
    assert before[-1].endswith("it neither helps nor hurts, as claimed.")
    summaries = sorted(report.parent.glob("*/*/summary.json"))
    written = [p.stat().st_mtime_ns for p in summaries]
    clipped = next(p for p in summaries if "norm" in p.parent.name)
    record = json.loads(clipped.read_text())
    record["train_loss_final"] = 9.0  # as if clipping had wrecked the run
    clipped.write_text(json.dumps(record))

    reproduce(["seed-004", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    after = verdict(report)
    assert [p.stat().st_mtime_ns for p in summaries if p != clipped] == [
        t for p, t in zip(summaries, written) if p != clipped]  # no run was trained again
    assert "norm 1.0 9.000" in after[0] and after[-1].endswith("it does change the outcome, against the claim.")


def test_unknown_study_and_scale_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["reproduce", "lstm-addding"])
    assert result.exit_code == 2 and result.stderr.startswith("error: study=lstm-addding: choose from")
    result = CliRunner().invoke(app, ["reproduce", "seed-004", "--scale", "huge"])
    assert result.exit_code == 2 and "--scale huge: choose from smoke, quick, full" in result.stderr
    assert not (tmp_path / "results").exists()


def test_accumulation_study_finds_correct_accumulation_equals_the_big_batch(tmp_path):
    reproduce(["accumulation", "--scale", "smoke", "wandb=off", "-q"], tmp_path)
    lines = verdict(tmp_path / "results" / "accumulation" / "smoke" / "report.md")
    assert lines[0].endswith("the same run.")
