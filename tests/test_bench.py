"""`gradlab bench` runs end to end and writes what it printed (timings themselves are not tested)."""

import json
import subprocess
import sys

from patience import PATIENCE

from gradlab.bench import alternate


def test_bench_writes_every_section_it_was_asked_for(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradlab",
            "bench",
            "--only",
            "loop,clip,scale",
            "--models",
            "mlp",
            "--counts",
            "1,4",
            "--steps",
            "8",
            "--repeats",
            "1",
            "--out",
            "b.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert {"loop", "clip", "scale"} <= report.keys() and "sweep" not in report
    (loop,) = report["loop"]
    assert loop["model"] == "mlp" and loop["gradlab_steps_per_s"] > 0 and loop["plain_steps_per_s"] > 0
    assert abs(loop["ratio"] - loop["gradlab_steps_per_s"] / loop["plain_steps_per_s"]) < 1e-9
    modes = report["clip"][0]["modes"]
    assert set(modes) == {"none", "value", "norm", "norm_per_layer", "autoclip", "agc", "zclip"}
    assert modes["none"]["vs_none"] == 1.0
    assert [r["runs"] for r in report["scale"]] == [1, 4]
    (entry,) = report["engine_auto"].values()  # measured.json's entry: runs of 8 // 4 steps, N = 4 only
    assert entry["steps"] == 2 and list(entry["speedups"]["mlp"]) == ["4"]
    assert "loop: steps/s" in out.stdout and "results -> b.json" in out.stdout


def test_bench_rejects_an_unknown_section_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gradlab", "bench", "--only", "loop,warp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert (
        out.stderr
        == "error: --only loop,warp: choose from loop, clip, sweep, scale, fixed, compile (comma-separated)\n"
    )
    assert not (tmp_path / "results").exists()


def test_timings_alternate_in_an_order_rotated_each_round():
    """No timer always follows the same one; each reports the median of its own timings, and a ratio
    is the median of the rounds' ratios."""
    calls = []

    def timer(name: str, seconds: list):
        return lambda: calls.append(name) or seconds[len([c for c in calls if c == name]) - 1]

    times = alternate(
        {"a": timer("a", [1, 5, 3]), "b": timer("b", [2, 2, 9]), "c": timer("c", [4, 4, 4])}, 3, warm=False
    )
    assert "".join(calls) == "abcbcacab"
    assert [times.median(name) for name in "abc"] == [3, 2, 4]
    assert times.ratio("a", "b") == 1 / 2  # rounds 1/2, 5/2, 3/9: not the ratio of medians, 3/2
