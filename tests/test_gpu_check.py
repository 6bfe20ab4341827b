"""The GPU check (benchmarks/gpu_check.py) keeps what finished and names what it skipped, and its
engine=auto figures go into gradlab/measured.json. Its timings are not tested: they are measured."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_budget_runs_what_fits_and_names_every_section_it_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(
        torch.backends.cudnn, "allow_tf32", True
    )  # torch's default, as a fresh process has it
    check = gpu_check()
    report = check.check(tmp_path, budget=15)  # the environment (about 10 s) and nothing more
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["sections"].keys() == {"environment"} == report["sections"].keys()
    assert written["sections"]["environment"]["tf32_defaults"]["cudnn"] is True  # read before gradlab sets it
    assert written["sections"]["environment"]["fp32_precision_in_runs"] == "ieee"
    assert set(written["skipped"]) == set(check.SECTIONS) - {"environment"}
    for name, (needs_cuda, _, _) in check.SECTIONS.items():
        if name != "environment":
            assert (
                written["skipped"][name] == "needs CUDA"
                if needs_cuda and not torch.cuda.is_available()
                else written["skipped"][name].startswith("time budget")
            )
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert all(f"## {name}" in markdown for name in check.SECTIONS)


def test_record_puts_a_checks_figures_beside_the_others(tmp_path, monkeypatch):
    check = gpu_check()
    (tmp_path / "gradlab").mkdir()
    shutil.copy(ROOT / "gradlab" / "measured.json", tmp_path / "gradlab" / "measured.json")
    monkeypatch.setattr(check, "ROOT", tmp_path)
    entry = {
        "NVIDIA H200": {
            "device": "NVIDIA H200",
            "torch": "2.11.0",
            "date": "2026-12-04",
            "command": "check",
            "speedups": {"mlp": {"16": 9.0, "64": 20.0}},
        }
    }
    (tmp_path / "gpu_check.json").write_text(json.dumps({"sections": {"scale": {"engine_auto": entry}}}))
    check.record(tmp_path / "gpu_check.json")
    figures = json.loads((tmp_path / "gradlab" / "measured.json").read_text())
    assert figures["NVIDIA H200"] == entry["NVIDIA H200"]
    assert figures["cpu"] == json.loads((ROOT / "gradlab" / "measured.json").read_text())["cpu"]
