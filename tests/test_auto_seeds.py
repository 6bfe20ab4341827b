"""`gradlab sweep ... seed=auto`: seeds in batches until each setting is told apart from the best
one (or shown equivalent), by the sequential design of gradlab/stats.py, checked against the
same design applied to the records by hand."""

from __future__ import annotations

from test_records import run

from gradlab.compare import by_seed, compare, load_runs
from gradlab.stats import Sequential

SWEEP = ["model=mlp", "model.hidden=[8]", "steps=20", "eval_every=10", "wandb=off", "-q"]


def test_seeds_come_in_batches_until_every_setting_is_decided(tmp_path):
    args = ["sweep", *SWEEP, "clip=none,norm", "max_norm=0.01", "seed=auto", "--batch", "3", "--cap", "9"]
    out = run(args, tmp_path, code=0).stdout
    (folder,) = (tmp_path / "results").iterdir()
    runs = load_runs([folder])
    seeds = sorted(runs["seed"].unique())
    assert seeds == list(range(len(seeds))) and len(seeds) in (3, 6, 9)  # whole batches, one folder
    comparison = compare(runs)
    best = comparison.table.index[comparison.table["best"] == "*"][0]
    other = comparison.table.index.drop(best)[0]
    design = Sequential(3, 9)
    a, b = (
        by_seed(comparison.members[best], comparison.metric),
        by_seed(comparison.members[other], comparison.metric),
    )
    looks = [design.look(a[a.index < n], b[b.index < n]) for n in design.looks() if n <= len(seeds)]
    assert [look.decision for look in looks[:-1]] == ["continue"] * (
        len(looks) - 1
    )  # it went on only while undecided
    last = looks[-1]
    said = "every row decided" if last.decision == "different" else "the cap of 9 seeds reached"
    interval = f"{last.mean:+.3g} [{last.low:+.3g}, {last.high:+.3g}] ({last.n} seeds): {last.decision}"
    assert f"seed=auto: {said}" in out and interval in out

    shown = run(["compare", str(folder), "--paired", "--format", "md"], tmp_path, code=0).stdout
    assert interval in shown  # compare reads the design the seeds followed, not a fixed-n t interval
    assert "repeated 95% interval" in (folder / "comparison.md").read_text()
    other = run(["compare", str(folder), "--paired", "--metric", "train_loss"], tmp_path, code=2).stderr
    assert other.startswith("error: --metric train_loss: these seeds followed") and other.count("\n") == 1

    again = run(args, tmp_path, code=0).stdout  # the same command: every run is found finished
    assert f"seed=auto: {said}" in again and len(load_runs([folder])) == len(runs)


def test_an_effect_lets_equal_settings_stop_as_equivalent(tmp_path):
    """norm at 100 never fires: each seed's two runs are the same run, equivalent at the first look."""
    args = [
        "sweep",
        *SWEEP,
        "clip=none,norm",
        "max_norm=100",
        "seed=auto",
        "--batch",
        "3",
        "--effect",
        "0.01",
    ]
    out = run(args, tmp_path, code=0).stdout
    assert "): equivalent" in out and "seed=auto: every row decided at 3 seeds" in out


def test_a_design_that_cannot_be_followed_is_one_line_and_runs_nothing(tmp_path):
    for flags, said in (
        (["--batch", "2"], "seed=auto: batch=2, cap=20: a batch of 3 seeds or more"),
        (["--effect", "-1"], "--effect -1.0: the smallest difference that matters, a number > 0"),
    ):
        out = run(["sweep", *SWEEP, "clip=none,norm", "seed=auto", *flags], tmp_path, code=2)
        assert out.stderr.startswith(f"error: {said}") and out.stderr.count("\n") == 1
    assert not (tmp_path / "results").exists()
