"""The GPU check: what gradlab does and costs on the machine it runs on, in one go.

    bash benchmarks/gpu_check.sh                          # installs what is missing, then runs this
    python benchmarks/gpu_check.py --out DIR [--budget S]
    python benchmarks/gpu_check.py record DIR/gpu_check.json   # engine=auto's figures into gradlab/

Sections run in order (SECTIONS); each adds its results to DIR/gpu_check.json and a table to
DIR/gpu_check.md as it ends, so a check cut short keeps what finished. Without CUDA, the
sections that mean nothing on a CPU are skipped and named; so is a section that would not end
within the budget (its estimate is in SECTIONS). benchmarks/README.md says how to read it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GPU = torch.cuda.is_available()
TF32_DEFAULTS = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
MODELS = ("mlp", "lstm", "transformer")  # the loop, clip, precision and compile sections
ALL_MODELS = ("mlp", "rnn", "gru", "lstm", "transformer")  # the scale section
COUNTS = (16, 64)  # runs trained together in the scale section
PACKAGES = (
    "torch",
    "torchvision",
    "hydra-core",
    "omegaconf",
    "wandb",
    "typer",
    "pandas",
    "numpy",
    "lightning",
)
MAIN_JOB = ["sweep", "model=lstm", "clip=norm", "max_norm=1,5"]  # the README's main job
TESTS_TIMEOUT, MAIN_JOB_TIMEOUT = 300, 240  # seconds: a hung subprocess ends its section, not the check


def environment() -> dict:
    """Python, torch, CUDA, the GPU, the TF32 flags (torch's defaults, and after gradlab sets
    them), and the versions of what gradlab runs on."""
    from gradlab import devices

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices.exact_fp32()
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "tf32_defaults": TF32_DEFAULTS,
        "fp32_precision_in_runs": devices.fp32_precision(),
        "packages": versions,
        "wandb_importable": wandb_works(),
    }
    if GPU:
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            gpus=torch.cuda.device_count(),
            driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).strip(),
        )
    return env


def wandb_works() -> str | bool:
    """True if wandb imports here, else why not (the check then runs with wandb=off)."""
    out = subprocess.run([sys.executable, "-c", "import wandb"], capture_output=True, text=True)
    return True if out.returncode == 0 else (out.stderr.strip().splitlines() or ["import failed"])[-1]


def cuda_tests() -> dict:
    """`python -m pytest -m cuda`: counts, and each failure with its first line (without CUDA, every
    one of them must be collected and skipped)."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "cuda.xml"
        start = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-m",
                "cuda",
                "-n",
                "0",  # one process: the GPU tests measure its memory and timing
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TESTS_TIMEOUT,
        )
        seconds = time.perf_counter() - start
        cases = ElementTree.parse(xml).getroot().iter("testcase") if xml.exists() else []
        outcome = {"passed": 0, "failed": 0, "skipped": 0}
        failures = []
        for case in cases:
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                outcome["failed"] += 1
                message = (bad.get("message") or bad.text or "").strip().splitlines()
                failures.append(
                    {
                        "test": f"{case.get('classname')}::{case.get('name')}",
                        "error": message[0][:300] if message else "",
                    }
                )
            elif case.find("skipped") is not None:
                outcome["skipped"] += 1
            else:
                outcome["passed"] += 1
    return {
        "exit_code": out.returncode,
        "seconds": round(seconds, 1),
        **outcome,
        "failures": failures,
        "tail": out.stdout.strip().splitlines()[-3:],
    }


def main_job() -> dict:
    """The README's main job as a user runs it (a fresh process, W&B offline where wandb imports),
    on the GPU and on this machine's CPU: wall time, each run's seconds and held-out loss."""
    wandb = "offline" if wandb_works() is True else "off"
    rows = []
    for device in (["cuda"] if GPU else []) + ["cpu"]:
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gradlab",
                    *MAIN_JOB,
                    f"device={device}",
                    f"wandb={wandb}",
                    "progress=none",
                    f"results_root={root}",
                ],
                capture_output=True,
                text=True,
                timeout=MAIN_JOB_TIMEOUT,
            )
            wall = time.perf_counter() - start
            runs = [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/*/summary.json"))]
        rows.append(
            {
                "device": device,
                "exit_code": out.returncode,
                "wall_s": round(wall, 1),
                "wandb": wandb,
                "error": out.stderr.strip()[-300:] if out.returncode else None,
                "runs": [
                    {
                        k: r.get(k)
                        for k in (
                            "name",
                            "status",
                            "device",
                            "fp32_precision",
                            "wall_time_s",
                            "steps_per_s",
                            "eval_loss_final",
                        )
                    }
                    for r in runs
                ],
            }
        )
    return {"command": "gradlab " + " ".join(MAIN_JOB), "rows": rows}


def loop(steps: int, repeats: int) -> dict:
    """gradlab's loop vs a plain PyTorch loop (bench.loop), and on a GPU the kernels each launches
    per step (bench.launches)."""
    from gradlab import bench

    rows = []
    for model in MODELS:
        row = bench.loop(model, steps, repeats)
        if GPU:
            row.update({k: v for k, v in bench.launches(model, 5).items() if k.endswith("per_step")})
        rows.append(row)
    return {"steps": steps, "repeats": repeats, "rows": rows}


def clip(steps: int, repeats: int) -> dict:
    from gradlab import bench

    return {"steps": steps, "repeats": repeats, "rows": [bench.clip_costs(m, steps, repeats) for m in MODELS]}


def precision(steps: int, repeats: int) -> dict:
    """The loop under fp32, bf16 and fp16; a precision gradlab refuses is recorded with its line."""
    from gradlab import bench
    from gradlab.errors import ConfigError

    rows = []
    for model in MODELS:
        for p in ("fp32", "bf16", "fp16"):
            try:
                rows.append(bench.loop(model, steps, repeats, f"precision={p}"))
            except ConfigError as e:
                rows.append({"model": model, "overrides": [f"precision={p}"], "refused": str(e)})
    return {"steps": steps, "repeats": repeats, "rows": rows}


def scale(steps: int) -> dict:
    """K runs one after another vs trained together (engine=vectorized), per model, one timing
    each after a warm-up of two runs; the speedups as engine=auto's figures for this device."""
    from gradlab import bench

    rows = []
    for model in ALL_MODELS:
        bench.scaling(
            model, 2, 2, engines=("sequential", "vectorized"), warm=False
        )  # kernels chosen, data loaded
        rows += [
            bench.scaling(model, k, steps, engines=("sequential", "vectorized"), warm=False) for k in COUNTS
        ]
    report = {"scale": rows, **bench.device_report()}
    command = (
        f"benchmarks/gpu_check.py scale: bench.scaling(MODEL, N, {steps}), "
        f"N in {', '.join(map(str, COUNTS))}, "
        "one timing each after a warm-up"
    )
    return {"steps": steps, "rows": rows, "engine_auto": bench.speedups(report, command)}


def compiled(steps: int, repeats: int) -> dict:
    from gradlab import bench

    modes = ["compile=true"] + (["compile=cudagraphs"] if GPU else [])
    return {
        "steps": steps,
        "repeats": repeats,
        "rows": [bench.compiled(m, steps, repeats, mode) for m in MODELS for mode in modes],
    }


# name -> (needs CUDA, estimated seconds on the H200, the section with its sizes on a GPU / on a CPU)
SECTIONS = {
    "environment": (False, 10, lambda: environment()),
    "cuda_tests": (False, 150, lambda: cuda_tests()),
    "main_job": (False, 90, lambda: main_job()),
    "loop": (False, 45, lambda: loop(200, 5) if GPU else loop(50, 3)),
    "scale": (True, 150, lambda: scale(40)),
    "precision": (True, 45, lambda: precision(100, 3)),
    "clip": (False, 25, lambda: clip(100, 3) if GPU else clip(20, 3)),
    "compile": (True, 120, lambda: compiled(100, 3)),
}


def markdown(name: str, result: dict) -> str:
    """A section's result as a markdown block."""
    if name == "environment":
        return "\n".join(f"- {k}: {v}" for k, v in result.items() if k != "section_s")
    if name == "cuda_tests":
        lines = [
            f"passed {result['passed']}, failed {result['failed']}, skipped {result['skipped']} "
            f"({result['seconds']} s, exit {result['exit_code']})"
        ]
        return "\n".join(lines + [f"- FAILED {f['test']}: {f['error']}" for f in result["failures"]])
    if name == "main_job":
        lines = [
            f"`{result['command']}`",
            "",
            "| device | wall s | run | s | steps/s | eval loss |",
            "|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            for r in row["runs"] or [{}]:
                lines.append(
                    f"| {row['device']} | {row['wall_s']} | {r.get('name')} ({r.get('status')}) | "
                    f"{r.get('wall_time_s')} | {r.get('steps_per_s')} | {r.get('eval_loss_final')} |"
                )
        return "\n".join(lines)
    rows = [_cells(r) for r in result["rows"]]
    columns = list(
        dict.fromkeys(k for r in rows for k in r)
    )  # every row's, in order: a refused row has fewer
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(_format(r.get(c, "")) for c in columns) + " |" for r in rows])


def _cells(row: dict) -> dict:
    """A row's columns: a value that holds one dict per item (the clip section's modes) gives a
    column per item."""
    cells = {}
    for k, v in row.items():
        if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
            cells.update({item: _format(x) for item, x in v.items()})
        else:
            cells[k] = v
    return cells


def _format(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_format(x)}" for k, x in v.items())
    if isinstance(v, list):
        return " ".join(map(str, v))
    return str(v)


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def check(out: Path, budget: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cuda": GPU,
        "budget_s": budget,
        "sections": {},
        "skipped": {},
    }
    (out / "gpu_check.md").write_text(f"# gradlab GPU check, {report['started']}\n")
    start = time.perf_counter()
    for name, (needs_cuda, estimate, measure) in SECTIONS.items():
        elapsed = time.perf_counter() - start
        if needs_cuda and not GPU:
            why = "needs CUDA"
        elif elapsed + estimate > budget:
            why = f"time budget: {elapsed:.0f} s used of {budget:.0f}, the section takes about {estimate} s"
        else:
            why = None
        if why:
            report["skipped"][name] = why
            text = f"skipped: {why}"
        else:
            began = time.perf_counter()
            print(f"[gpu_check] {name} ...", flush=True)
            try:
                result = measure()
            except Exception as e:  # a section that breaks is reported; the next ones run
                result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            result["section_s"] = round(time.perf_counter() - began, 1)
            report["sections"][name] = result
            text = (
                f"error: {result['error']}" if "error" in result else markdown(name, result)
            ) + f"\n\n({result['section_s']} s)"
        print(f"[gpu_check] {name}: {text.splitlines()[0]}", flush=True)
        with open(out / "gpu_check.md", "a") as md:
            md.write(f"\n## {name}\n\n{text}\n")
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        _write(out / "gpu_check.json", report)
    if "engine_auto" in report["sections"].get("scale", {}):
        _write(out / "measured.json", report["sections"]["scale"]["engine_auto"])
    return report


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def record(report: Path) -> None:
    """Merge a check's engine=auto figures into gradlab/measured.json (one entry per device)."""
    entry = json.loads(report.read_text())["sections"]["scale"]["engine_auto"]
    path = ROOT / "gradlab" / "measured.json"
    figures = {**json.loads(path.read_text()), **entry}
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{', '.join(entry)} -> {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", default="check", choices=("check", "record"))
    parser.add_argument("report", nargs="?", help="record: the check's gpu_check.json")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu_check"))
    parser.add_argument("--budget", type=float, default=480, help="seconds the sections may take in all")
    args = parser.parse_args()
    if args.action == "record":
        record(Path(args.report))
        return
    report = check(Path(args.out), args.budget)
    print(
        f"[gpu_check] done in {report['elapsed_s']} s; skipped: "
        f"{', '.join(f'{k} ({v})' for k, v in report['skipped'].items()) or 'none'} -> {args.out}"
    )


if __name__ == "__main__":
    main()
