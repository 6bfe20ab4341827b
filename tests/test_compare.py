"""`gradlab compare` and `gradlab plot`: tables checked against figures worked out by hand from
run records written here, bad input as a user meets it, and a real sweep end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from gradlab.cli import app
from matplotlib.image import imread
from scipy import stats
from test_records import run as cli
from typer.testing import CliRunner
from wandb_records import read_run, wandb_files

from gradlab import compare as cmp
from gradlab.config import display_name, plain, run_id
from gradlab.figures import figure_name
from gradlab.launch import compose_all
from gradlab.tracking import wandb_id

EVAL_EVERY = 10  # steps between the eval points of a hand-made history
CURVES, THRESHOLD, SUCCESS = (
    (1320, 935),
    (1320, 506),
    (770, 506),
)  # (12, 8.5), (12, 4.6), (7, 4.6) inches, 110 dpi


def spec(
    overrides: str, evals: list, accs: list | None = None, status: str = "completed", loss=None, **figures
):
    """A run to record: its overrides, its eval points (every EVAL_EVERY steps) and summary figures."""
    accs = accs or [1 - v for v in evals]
    summary = {
        "status": status,
        "eval_loss_final": evals[-1],
        "eval_loss_best": min(evals),
        "eval_acc_final": accs[-1],
        "eval_acc_best": max(accs),
        "train_loss_final": 1.0,
        "train_loss_best": 0.9,
        "grad_norm_mean": 2.0,
        "grad_norm_median": 2.0,
        "grad_norm_max": 4.0,
        "clip_fraction": 0.5,
        "steps_per_s": 100.0,
        **figures,
    }
    return overrides.split(), summary, history(evals, accs, loss)


def history(evals: list, accs: list, loss=None) -> pd.DataFrame:
    steps = len(evals) * EVAL_EVERY
    frame = pd.DataFrame({"step": range(1, steps + 1)})
    frame["loss"] = np.linspace(2.0, 0.5, steps) if loss is None else loss
    frame["grad_norm"] = np.linspace(4.0, 1.0, steps)
    frame["grad_norm_clipped"] = np.minimum(frame["grad_norm"], 1.5)
    frame["clip_fraction"] = 0.5
    at_eval = frame["step"] % EVAL_EVERY == 0
    frame.loc[at_eval, "eval_loss"] = evals
    frame.loc[at_eval, "eval_acc"] = accs
    return frame


def write_records(sweep: Path, specs: list) -> Path:
    """Finished run records as gradlab writes them: real resolved configs, the given summaries and series."""
    confs = [plain(c) for c in compose_all([overrides for overrides, _, _ in specs])]
    for i, (conf, (_, figures, series)) in enumerate(zip(confs, specs)):
        conf.update(name=sweep.name, results_root=str(sweep.parent))
        # numbered: records that differ only in a knob their mode ignores (clip=none at two max_norm)
        # are one run today, but folders written by older versions can still hold such twins
        run_dir = sweep / f"{run_id(conf)}-{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
        series.to_csv(run_dir / "history.csv", index=False)
        summary = {
            "run_id": run_dir.name,
            "name": display_name(conf),
            "sweep": sweep.name,
            "seed": conf["seed"],
            **figures,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return sweep


# Four norm-clipping groups. Target 0.65 on the raw eval points: 2 of the 5 runs at max_norm=1
# reach it (steps 20 and 10; a smoothed series would say never and 10), 1 of 2 at max_norm=5
# (step 30), none at 10; the diverged and failed runs reach it first but are not completed.
HAND = [
    spec("clip=norm max_norm=1 seed=0", [1.0, 0.6, 0.5], accs=[0.5, 0.6, 0.8], steps_per_s=50.0),
    spec("clip=norm max_norm=1 seed=1", [0.9, 0.8, 0.7], accs=[0.5, 0.6, 0.9], steps_per_s=50.0),
    spec("clip=norm max_norm=1 seed=2", [0.6, 0.7, 0.9], accs=[0.5, 0.6, 0.7], steps_per_s=50.0),
    spec(
        "clip=norm max_norm=1 seed=3", [0.1, 0.1, 50.0], accs=[0.99] * 3, status="diverged", steps_per_s=1e6
    ),
    spec("clip=norm max_norm=1 seed=4", [0.1, 0.1, 60.0], accs=[0.99] * 3, status="failed", steps_per_s=1e6),
    spec("clip=norm max_norm=5 seed=0", [0.8, 0.7, 0.4], accs=[0.5, 0.5, 0.6], steps_per_s=20.0),
    spec("clip=norm max_norm=5 seed=1", [0.9, 0.9, 0.66], accs=[0.5, 0.5, 0.5], steps_per_s=20.0),
    spec("clip=norm max_norm=10 seed=0", [0.9, 0.9, 0.9], accs=[0.5, 0.9, 0.95], steps_per_s=10.0),
    spec("clip=norm max_norm=20 seed=0", [0.2, 0.2, 99.0], status="diverged"),
    spec("clip=norm max_norm=20 seed=1", [0.2, 0.2, 99.0], status="diverged"),
]
FINALS = {
    "1": [0.5, 0.7, 0.9],
    "5": [0.4, 0.66],
    "10": [0.9],
    "20": [],
}  # eval_loss_final of the completed runs
COUNTS = {"1": (5, 3, 1, 1), "5": (2, 2, 0, 0), "10": (1, 1, 0, 0), "20": (2, 0, 2, 0)}


@pytest.fixture(scope="module")
def hand_records(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("records") / "hand", HAND)


@pytest.fixture
def hand(hand_records, tmp_path):
    """A fresh copy of the hand-made sweep, for a test to write into."""
    return Path(shutil.copytree(hand_records, tmp_path / "results" / "hand"))


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def csv_table(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "comparison.csv", dtype={"clip.max_norm": str})


def test_figures_and_counts_equal_those_worked_out_by_hand(hand):
    table = cmp.compare(cmp.load_runs([hand]), target=0.65).table.set_index("clip.max_norm")
    for max_norm, finals in FINALS.items():
        row, n = table.loc[max_norm], len(finals)
        mean = sum(finals) / n if n else math.nan
        std = math.sqrt(sum((x - mean) ** 2 for x in finals) / (n - 1)) if n > 1 else math.nan
        ci = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n >= 3 else math.nan
        assert row["eval_loss_final_mean"] == pytest.approx(mean, nan_ok=True), max_norm
        assert row["eval_loss_final_std"] == pytest.approx(std, nan_ok=True), max_norm
        assert row["eval_loss_final_ci95"] == pytest.approx(ci, nan_ok=True), max_norm
        assert tuple(row[["runs", "completed", "diverged", "failed"]]) == COUNTS[max_norm]
    assert table.loc["1", "eval_loss_final_ci95"] == pytest.approx(4.302653 * 0.2 / math.sqrt(3))
    assert table.loc["1", "steps_per_s_mean"] == pytest.approx(50.0)  # the diverged and failed 1e6 left out


def test_steps_to_target_counts_every_run_of_the_group(hand):
    comparison = cmp.compare(cmp.load_runs([hand]), target=0.65)
    table = comparison.table.set_index("clip.max_norm")
    assert table.loc["1", "steps_to_target_mean"] == pytest.approx(15)  # steps 20 and 10
    assert table.loc["5", "steps_to_target_mean"] == pytest.approx(30)
    assert table.loc[["10", "20"], "steps_to_target_mean"].isna().all()
    assert dict(table["reached_target"]) == {"1": "2/5", "5": "1/2", "10": "0/1", "20": "0/2"}
    shown = cmp.readable(comparison).set_index("clip.max_norm")
    assert dict(shown["steps_to_target"]) == {
        "5": "30 (1/2)",
        "1": "15 (2/5)",
        "10": "never (0/1)",
        "20": "never (0/2)",
    }
    assert dict(shown["eval_loss_final"]) == {
        "5": "0.53 ± 0.18",
        "1": "0.7 ± 0.2 [±0.5]",
        "10": "0.9",
        "20": "-",
    }


@pytest.mark.parametrize(
    "metric, target, step",
    [
        ("eval_loss_final", 0.65, 20),  # the raw eval points 1.0, 0.6: their running mean would not reach it
        ("eval_acc_best", 0.85, 20),  # accuracy is reached upwards: 0.5, 0.9
        (
            "train_loss_best",
            1.1,
            15,
        ),  # the 10-step mean of the loss; the raw loss (2 then 0) reaches it at 11
        ("eval_loss_final", 0.05, None),
    ],
)
def test_steps_to_target_of_one_history(tmp_path, metric, target, step):
    series = history([1.0, 0.6, 0.5], [0.5, 0.9, 0.8], loss=[2.0] * 10 + [0.0] * 20)
    series.to_csv(tmp_path / "history.csv", index=False)
    found = cmp.steps_to_target(str(tmp_path), metric, target)
    assert found == step if step is not None else math.isnan(found)


@pytest.mark.parametrize(
    "metric, order",
    [
        ("eval_loss", ["5", "1", "10", "20"]),  # lower is better; the all-diverged group last
        ("eval_acc", ["10", "1", "5", "20"]),  # higher is better
        ("steps_per_s", ["1", "5", "10", "20"]),
    ],
)
def test_sorted_by_the_metric_with_the_best_marked(hand, metric, order):
    comparison = cmp.compare(cmp.load_runs([hand]), metric=metric)
    assert comparison.metric == figure_name(metric)
    assert list(comparison.table["clip.max_norm"]) == order
    assert list(comparison.table["best"]) == ["*", "", "", ""]


def test_the_sort_metric_is_shown_as_sorted(tmp_path):
    sweep = write_records(
        tmp_path / "peaks",
        [
            spec(f"clip=norm max_norm={m} seed={s}", [0.5], grad_norm_max=peak)
            for m, peaks in ((1, [3.0, 5.5]), (5, [4.4, 4.6]))
            for s, peak in enumerate(peaks)
        ],
    )
    shown = cmp.readable(cmp.compare(cmp.load_runs([sweep]), metric="grad_norm_max"))
    assert list(shown["grad_norm_max"]) == ["4.25 ± 1.8", "4.5 ± 0.14"]


@pytest.fixture(scope="module")
def models_records(tmp_path_factory):
    """mlp and lstm, clip none and norm, max_norm 1 and 5, seeds 0 and 1: none ignores max_norm."""
    return write_records(
        tmp_path_factory.mktemp("records") / "models",
        [
            spec(f"model={model} clip={clip} max_norm={max_norm} seed={seed}", [0.5])
            for model in ("mlp", "lstm")
            for clip in ("none", "norm")
            for max_norm in (1, 5)
            for seed in (0, 1)
        ],
    )


TASK = {"mlp": "digits", "lstm": "adding"}


def test_knob_free_mode_is_one_group_and_keys_are_found(models_records):
    comparison = cmp.compare(cmp.load_runs([models_records]))
    # each model trains on its own task: the task leads, so that no row is ranked against another task's
    assert (
        comparison.by == ["task.name", "model.name", "clip.mode", "clip.max_norm"] and comparison.tasks == 2
    )
    groups = {tuple(r[comparison.by]): r["runs"] for _, r in comparison.table.iterrows()}
    assert groups == {(TASK[m], m, "none", "-"): 2 for m in ("mlp", "lstm")} | {
        (TASK[m], m, "norm", t): 2 for m in ("mlp", "lstm") for t in ("1", "5")
    }
    assert list(comparison.table["task.name"]) == ["adding"] * 3 + ["digits"] * 3
    assert list(comparison.table["best"]) == ["*", "", "", "*", "", ""]  # one best per task


@pytest.mark.parametrize(
    "by, runs",
    [
        ("model.name", {("mlp",): 6, ("lstm",): 6}),
        ("clip.mode", {("none",): 4, ("norm",): 8}),
        (
            "model.name,clip.mode",
            {("mlp", "none"): 2, ("mlp", "norm"): 4, ("lstm", "none"): 2, ("lstm", "norm"): 4},
        ),
    ],
)
def test_by_overrides_the_grouping(models_records, tmp_path, by, runs):
    """--by chooses the grouping; runs of different tasks are still never ranked together."""
    result = invoke("compare", models_records, "--by", by, "--format", "csv", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table.columns[1:2]) == ["task.name"]
    table = table.groupby(by.split(","), as_index=False, sort=False)["runs"].sum()
    keys = by.split(",")
    assert {tuple(r[keys]): r["runs"] for _, r in table.iterrows()} == runs


def test_knob_free_mode_alone_is_one_group(tmp_path):
    sweep = write_records(
        tmp_path / "none",
        [spec(f"clip=none max_norm={m} seed={s}", [0.5]) for m in (1, 5) for s in (0, 1, 2)],
    )
    table = cmp.compare(cmp.load_runs([sweep])).table
    assert list(table["runs"]) == [3]


def test_output_formats(hand):
    result = invoke("compare", hand)
    assert result.exit_code == 0, result.output
    csv = csv_table(hand)
    assert list(csv["clip.max_norm"]) == ["5", "1", "10", "20"] and list(csv["runs"]) == [2, 5, 1, 2]

    lines = (hand / "comparison.md").read_text().splitlines()
    assert lines[0].startswith("Sorted by eval_loss_final") and lines[1] == ""
    header, rule, *rows = lines[2:]
    assert header.startswith("| best | clip.max_norm | runs |")
    assert set(rule) == {"|", "-"}
    assert [row.split(" | ")[1] for row in rows] == ["5", "1", "10", "20"]
    assert {line.count("|") for line in lines[2:]} == {header.count("|")}

    tex = (hand / "comparison.tex").read_text()
    body = tex[tex.index("\\midrule") : tex.index("\\bottomrule")].splitlines()[1:]
    assert tex.startswith("\\begin{tabular}") and tex.rstrip().endswith("\\end{tabular}")
    assert [line.split(" & ")[1] for line in body] == ["5", "1", "10", "20"]
    assert "clip.max\\_norm" in tex and "eval\\_loss\\_final" in tex  # escaped for LaTeX


@pytest.mark.parametrize(
    "fmt, files", [("md", ["comparison.md"]), ("csv", ["comparison.csv"]), ("latex", ["comparison.tex"])]
)
def test_one_format_writes_one_file(hand, tmp_path, fmt, files):
    out = tmp_path / "tables"
    assert invoke("compare", hand, "--format", fmt, "--out", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == files


BAD_INPUT = [
    (["compare", "{tmp}/empty"], "no run records (summary.json) found"),
    (["compare", "{tmp}/running"], "no run records (summary.json) found"),
    (["plot", "{tmp}/missing"], "missing: no such file or folder"),
    (
        ["compare", "{hand}", "--by", "nosuchkey"],
        "--by nosuchkey: no such key; keys that vary here: clip.max_norm",
    ),
    (["plot", "{hand}", "--by", "clip.mode,nosuchkey"], "--by nosuchkey: no such key"),
    (
        ["compare", "{hand}", "--metric", "nope"],
        "--metric nope: not in these runs; choose from train_loss_final, train_loss_best, grad_norm_mean, "
        "grad_norm_median, grad_norm_max, clip_fraction, eval_loss_final, eval_loss_best, eval_acc_final",
    ),
    (["compare", "{hand}", "--format", "xml"], "--format xml: choose from md, csv, latex, all"),
    (
        ["compare", "{hand}", "--metric", "grad_norm_mean", "--target", "1"],
        "--target needs a loss or accuracy",
    ),
    (["compare", "{hand}", "--out", "{tmp}/afile/sub"], "afile/sub: cannot write there"),
    (["plot", "{hand}", "--out", "{tmp}/afile/sub"], "afile/sub: cannot write there"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(hand, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    running = tmp_path / "running" / "mlp-digits-none-s0"  # config.yaml written, no summary yet
    running.mkdir(parents=True)
    shutil.copy(next(hand.glob("*/config.yaml")), running)
    (tmp_path / "afile").write_text("a file, not a folder")
    result = invoke(*[a.format(tmp=tmp_path, hand=hand) for a in args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not list(hand.glob("comparison.*")) and not list(hand.glob("*.png"))


@pytest.mark.parametrize(
    "file, text, error",
    [
        ("summary.json", '{"status": "compl', "summary.json: JSONDecodeError: Unterminated string"),
        ("summary.json", "[1, 2]", "summary.json is not a run summary"),
        (
            "summary.json",
            '{"status": "completed", "eval_loss_final": "low"}',
            "summary.json: eval_loss_final='low' is not",
        ),
        ("config.yaml", "model: [lstm", "config.yaml: ParserError: "),
        ("config.yaml", None, "config.yaml: No such file or directory"),
        ("history.csv", "step,loss\n1,0.5\nabc,0.4\n", "history.csv: ValueError: "),
    ],
)
def test_corrupt_record_is_skipped_with_one_warning(hand, file, text, error):
    corrupt = next(hand.glob("*norm5-s0-*"))
    (corrupt / file).unlink() if text is None else (corrupt / file).write_text(text)
    result = invoke("compare", hand)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"warning: skipping {corrupt}: unreadable record ({error}")
    assert result.stderr.count("\n") == 1
    table = csv_table(hand)
    assert dict(zip(table["clip.max_norm"], table["runs"])) == {"1": 5, "5": 1, "10": 1, "20": 2}


def test_record_without_history_is_no_traceback_with_a_target(hand):
    damaged = next(hand.glob("*norm5-s0-*"))
    (damaged / "history.csv").unlink()
    result = invoke("compare", hand, "--target", "0.65")
    assert result.exit_code in (0, 2) and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and str(damaged) in result.stderr


def test_unfinished_run_is_ignored(hand):
    running = hand / "mlp-digits-norm5-s2-running"
    running.mkdir()
    shutil.copy(next(hand.glob("*norm5-s0-*/config.yaml")), running)
    history([0.1], [0.9]).to_csv(running / "history.csv", index=False)
    runs = cmp.load_runs([hand])
    assert len(runs) == len(HAND) and str(running) not in set(runs["path"])


def test_two_sweeps_are_compared_together(tmp_path):
    first = write_records(
        tmp_path / "results" / "first", [spec(f"clip=norm max_norm=1 seed={s}", [0.3]) for s in (0, 1)]
    )
    second = write_records(
        tmp_path / "results" / "second", [spec(f"clip=norm max_norm=5 seed={s}", [0.2]) for s in (0, 1, 2)]
    )
    assert invoke("compare", first, second).exit_code == 0
    table = csv_table(first)  # written beside the first path given
    assert list(zip(table["clip.max_norm"], table["runs"], table["best"].fillna(""))) == [
        ("5", 3, "*"),
        ("1", 2, ""),
    ]
    assert not list(second.glob("comparison.*"))
    assert (
        invoke("compare", tmp_path / "results", "--format", "csv").exit_code == 0
    )  # the results root: the same runs
    assert csv_table(tmp_path / "results").equals(table)


def assert_png(path: Path, size: tuple) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[1::-1] == size
    assert pixels[..., :3].var() > 0  # something is drawn


def test_plots_are_pngs_of_their_size(hand, tmp_path):
    result = invoke("plot", hand, "--out", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "curves.png",
        "norms.png",
        "threshold.png",
    ]
    assert_png(tmp_path / "plots" / "curves.png", CURVES)
    assert_png(tmp_path / "plots" / "threshold.png", THRESHOLD)
    assert_png(
        tmp_path / "plots" / "norms.png", (1518, 968)
    )  # 4 groups: 3 panels of 4.6 x 4.4 inches, 2 rows


def test_a_target_adds_the_success_chart(hand, tmp_path):
    result = invoke("plot", hand, "--target", 0.65, "--relative", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "success.png", SUCCESS)
    assert_png(tmp_path / "threshold.png", THRESHOLD)


def test_no_threshold_chart_when_no_threshold_varies(tmp_path):
    sweep = write_records(
        tmp_path / "one-threshold",
        [spec(f"clip={c} max_norm=1 seed={s}", [0.5]) for c in ("none", "norm") for s in (0, 1)],
    )
    result = invoke("plot", sweep, "--target", 0.6)
    assert result.exit_code == 0, result.output
    assert (sweep / "curves.png").exists() and (sweep / "norms.png").exists()
    assert not (sweep / "threshold.png").exists() and not (sweep / "success.png").exists()
    assert "threshold.png" not in result.output


def test_plot_of_a_sweep_with_a_salvaged_failed_run(hand):
    salvaged = next(hand.glob("*norm1-s4-*"))  # failed; records.salvage left summary.json alone
    (salvaged / "history.csv").unlink()
    result = invoke("plot", hand)
    assert result.exit_code == 0, result.output
    assert_png(hand / "curves.png", CURVES)


def test_plot_of_a_sweep_with_a_run_that_failed_at_its_first_step(hand):
    failed = next(hand.glob("*norm1-s4-*"))
    history([], []).to_csv(failed / "history.csv", index=False)  # what records.finish writes for no steps
    result = invoke("plot", hand)
    assert result.exit_code == 0, result.output
    assert_png(hand / "curves.png", CURVES)


def test_wandb_report_run_in_the_sweeps_group(hand):
    result = invoke("compare", hand, "--wandb")
    assert result.exit_code == 0, result.output
    assert "logged the comparison to W&B (group hand)" in result.output
    assert f"wandb sync {hand / 'report'}/wandb/offline-run-*" in result.output
    (log,) = wandb_files(hand / "report")  # inside the sweep's sync glob: <sweep>/*/wandb/offline-run-*
    wb = read_run(log)
    assert wb["run"].job_type == "report" and wb["run"].run_group == "hand"
    assert wb["run"].run_id == wandb_id("hand", "report")  # compared again: the same W&B run
    (point,) = wb["history"]
    assert point["comparison"]["_type"] == "table-file" and point["comparison"]["nrows"] == 4
    assert point["curves"]["_type"] == point["threshold"]["_type"] == "image-file"


def test_real_sweep_compared_and_plotted_end_to_end(tmp_path):
    def gradlab(*args):
        return cli(args, tmp_path, code=0)

    gradlab(
        "sweep",
        "model=mlp",
        "clip=none,norm",
        "max_norm=0.5,5",
        "seed=0,1",
        "steps=20",
        "eval_every=10",
        "wandb=off",
        "-q",
    )
    (sweep,) = (tmp_path / "results").iterdir()
    relative = Path("results") / sweep.name
    gradlab("compare", relative, "--target", "2.05")
    gradlab("plot", relative)
    assert {p.name for p in sweep.iterdir() if p.is_file()} >= {
        "comparison.md",
        "comparison.csv",
        "comparison.tex",
        "curves.png",
        "threshold.png",
    }
    table = csv_table(sweep)
    assert sorted(zip(table["clip.mode"], table["clip.max_norm"])) == [
        ("none", "-"),
        ("norm", "0.5"),
        ("norm", "5"),
    ]
    assert list(table["runs"]) == list(table["completed"]) == [2, 2, 2]

    reached = {}  # (mode, max_norm) -> seed -> first eval step at or below the target, from the histories
    for run in sweep.glob("*/summary.json"):
        conf = yaml.safe_load((run.parent / "config.yaml").read_text())
        evals = pd.read_csv(run.parent / "history.csv").dropna(subset=["eval_loss"])
        steps = evals["step"][evals["eval_loss"] <= 2.05]
        key = (conf["clip"]["mode"], f"{conf['clip']['max_norm']:g}" if "max_norm" in conf["clip"] else "-")
        reached.setdefault(key, {})[conf["seed"]] = steps.iloc[0] if len(steps) else None
    for _, row in table.iterrows():
        steps = [s for s in reached[row["clip.mode"], row["clip.max_norm"]].values() if s is not None]
        assert row["reached_target"] == f"{len(steps)}/2"
        assert row["steps_to_target_mean"] == pytest.approx(
            np.mean(steps) if steps else math.nan, nan_ok=True
        )
    assert_png(sweep / "curves.png", CURVES)
    assert_png(sweep / "threshold.png", THRESHOLD)


def test_adaptive_modes_group_by_their_own_knobs(tmp_path):
    """Adaptive modes are compared like the others: their knobs become columns, none stays one row."""
    sweep = write_records(
        tmp_path / "adaptive",
        [
            spec(f"clip={clip} seed={seed}", [0.5])
            for clip in (
                "autoclip clip_percentile=5",
                "autoclip clip_percentile=10",
                "none max_norm=1",
                "none max_norm=5",
            )
            for seed in (0, 1)
        ],
    )
    comparison = cmp.compare(cmp.load_runs([sweep]))
    assert comparison.by == ["clip.mode", "clip.clip_percentile"]
    groups = {tuple(r[comparison.by]): r["runs"] for _, r in comparison.table.iterrows()}
    assert groups == {("autoclip", "5"): 2, ("autoclip", "10"): 2, ("none", "-"): 2}


def test_summary_figures_never_become_grouping_keys(tmp_path):
    """Only config.yaml keys group runs: a summary figure that varies (spike_skips) is not one."""
    sweep = write_records(
        tmp_path / "figures",
        [spec(f"clip=norm max_norm={m} seed={s}", [0.5], spike_skips=s) for m in (1, 5) for s in (0, 1)],
    )
    assert cmp.compare(cmp.load_runs([sweep])).by == ["clip.max_norm"]


# Three arms on seeds 0-2 for --relative and --paired. Means: none 0.6, norm 1 0.49, norm 5 0.465 (its
# seed 2 diverged), so norm 5 is best. Its runs' median pre-clip norms 2, 3 and the diverged run's
# 100 (its norms before it diverged) give 5 / 3; norm 1's 2, 4, 8 give 1 / 4 = 0.25.
# Paired against norm 5 over seeds 0 and 1 (one degree of freedom, t(0.975, 1) = 12.7062):
#   norm 1 - norm 5: -0.01, -0.07 -> mean -0.04, sd 0.042426, half-width 12.7062 * 0.03 = 0.38119,
#     t = 1.3333, p = 1 - (2/pi) atan(1.3333) = 0.40967: indistinguishable;
#   none - norm 5: 0.09, 0.08 -> mean 0.085, sd 0.0070711, half-width 12.7062 * 0.005 = 0.063531,
#     t = 17, p = 1 - (2/pi) atan(17) = 0.037405: worse.
ARMS = [
    *(
        spec(f"clip=none seed={s}", [f], grad_norm_median=m)
        for s, f, m in ((0, 0.50, 1), (1, 0.60, 2), (2, 0.70, 3))
    ),
    *(
        spec(f"clip=norm max_norm=1 seed={s}", [f], grad_norm_median=m)
        for s, f, m in ((0, 0.40, 2), (1, 0.45, 4), (2, 0.62, 8))
    ),
    spec("clip=norm max_norm=5 seed=0", [0.41], grad_norm_median=2),
    spec("clip=norm max_norm=5 seed=1", [0.52], grad_norm_median=3),
    spec("clip=norm max_norm=5 seed=2", [9.0], status="diverged", grad_norm_median=100),
]


@pytest.fixture
def arms(tmp_path):
    return write_records(tmp_path / "arms", ARMS)


def test_relative_threshold_is_max_norm_over_the_median_norm(arms):
    table = cmp.compare(cmp.load_runs([arms]), relative=True).table.set_index("clip.max_norm")
    assert table.loc["5", "relative_threshold"] == pytest.approx(5 / 3)
    assert table.loc["1", "relative_threshold"] == pytest.approx(0.25)
    assert math.isnan(table.loc["-", "relative_threshold"])  # clip=none has no threshold
    result = invoke("compare", arms, "--relative", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert sorted(csv_table(arms)["relative_threshold"].dropna()) == pytest.approx([0.25, 5 / 3])


def test_paired_difference_to_the_best_row(arms):
    comparison = cmp.compare(cmp.load_runs([arms]), paired=True)
    table = comparison.table.set_index("clip.max_norm")
    assert table.loc["5", "best"] == "*" and math.isnan(table.loc["5", "vs_best_mean"])
    one, none = table.loc["1"], table.loc["-"]
    assert tuple(one[list(cmp.PAIRED)]) == pytest.approx((-0.04, -0.42119, 0.34119, 0.40967, 2), abs=1e-4)
    assert tuple(none[list(cmp.PAIRED)]) == pytest.approx((0.085, 0.021469, 0.148531, 0.037405, 2), abs=1e-5)
    shown = dict(zip(table.index, cmp.readable(comparison)["vs best (paired)"]))
    assert shown == {
        "5": "best",
        "1": "-0.04 [-0.421, +0.341] p=0.41 (2 seeds): indistinguishable",
        "-": "+0.085 [+0.0215, +0.149] p=0.037 (2 seeds): worse",
    }
    result = invoke("compare", arms, "--paired", "--format", "md")
    assert result.exit_code == 0, result.output
    assert "+0.085 [+0.0215, +0.149] p=0.037 (2 seeds): worse" in (arms / "comparison.md").read_text()


def test_relative_needs_the_median_norms(arms):
    for summary in arms.glob("*/summary.json"):
        figures = json.loads(summary.read_text())
        del figures["grad_norm_median"]  # as in a record made before runs kept it
        summary.write_text(json.dumps(figures))
    result = invoke("compare", arms, "--relative")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --relative: no run here records its median gradient norm "
        "(grad_norm_median); run the sweep again with --force to record it"
    )
    assert not (arms / "comparison.md").exists()


def test_paired_needs_one_run_per_seed(arms):
    """Grouped by nothing but the mode, norm 1 and norm 5 share seeds: no pairs to form."""
    comparison = cmp.compare(cmp.load_runs([arms]), by=["clip.mode"], paired=True)
    assert list(cmp.readable(comparison)["vs best (paired)"]) == ["best", "-"]


def test_median_norm_figures_of_a_run():
    """Over steps 1-300 with norm = step and step 11 overflowed (inf, as under fp16): the median of
    the 299 finite norms is the 150th, 151; of the first 100 steps' 99, the 50th, 51."""
    from gradlab.figures import EARLY, summary

    rows = [
        {
            "step": s,
            "loss": 1.0,
            "grad_norm": float(s),
            "clipped": 0.0,
            "spike_skipped": 0.0,
            "scaler_skipped": 0.0,
            "time_s": s / 100,
        }
        for s in range(1, 301)
    ]
    rows[10]["grad_norm"] = math.inf
    found = summary(rows)
    assert EARLY == 100
    assert (found["grad_norm_median"], found["grad_norm_median_early"]) == (151.0, 51.0)
