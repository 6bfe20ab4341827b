"""`gradlab bench`: what gradlab costs, measured on this machine.

Sections (each a table on stdout and a key of the JSON file):

- loop:  steps/s of a gradlab run's training loop (all metrics on) vs a minimal hand-written
         PyTorch loop (forward, backward, clip_grad_norm_, optimizer step, one final
         evaluation) on the same model, data and optimizer, alternating in one process.
- clip:  time per step of gradlab's training step under each clip mode, relative to clip=none.
- sweep: runs per minute of one 16-run sweep (4 thresholds x 4 seeds) started as a user
         starts it: one run at a time (engine=sequential), launcher=local, engine=vectorized,
         engine=auto (the default).
- scale: wall time of N runs (--counts: 1, 4, 16, 64) trained one after another in one process
         vs together (engine=vectorized) vs as engine=auto chooses, and for the LSTM by sequence
         length; medians of the repeats, alternating. Its speedups, with the device, date and
         torch version, are the entry of gradlab/measured.json that engine=auto would read
         (`engine_auto` in the JSON file; benchmarks/README.md says how to record it).
- fixed: wall time of a whole 1-step run in a fresh process (start, imports, data, W&B init).
- compile (asked for by name): the loop section again with compile=true (both loops run the
         compiled model), and on a GPU with compile=cudagraphs; the seconds the first compiled
         step takes, and how the model ran (a run's `execution`).

Timings alternate between the things compared, in an order rotated each round, and report
medians over the repeats; a ratio is the median of the rounds' ratios (paired by round).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

SECTIONS = ("loop", "clip", "sweep", "scale", "fixed", "compile")  # all but compile by default
COUNTS, LENGTHS = (1, 4, 16, 64), (25, 50, 100)
MODELS = ("mlp", "rnn", "gru", "lstm", "transformer")


class Timings(dict):
    """name -> the seconds of each round (rounds in order), from `alternate`."""

    def median(self, name: str) -> float:
        return statistics.median(self[name])

    def ratio(self, over: str, under: str) -> float:
        """The median over rounds of over's time / under's time in that round: paired by round, so a
        drift of the machine's speed between rounds cancels."""
        return statistics.median(a / b for a, b in zip(self[over], self[under]))


def alternate(timers: dict, repeats: int, warm: bool = True) -> Timings:
    """Each timer once as warm-up (unless not `warm`), then in turn `repeats` times, the order
    rotated by one each round (so no timer always follows the same one: a timer that leaves the
    allocator or the caches in a state the next one pays for weighs on each in turn)."""
    for t in timers.values() if warm else ():
        t()
    times = Timings({name: [] for name in timers})
    names = list(timers)
    for turn in range(repeats):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            times[name].append(timers[name]())
    return times


def _conf(*overrides: str) -> dict:
    from gradlab.config import plain
    from gradlab.launch import compose_all

    return plain(compose_all([["wandb=off", "progress=none", *overrides]])[0])


def _wait(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loops(model: str, steps: int, *overrides: str) -> tuple:
    """(gradlab's loop, the plain loop) on one run's model, data and optimizer: each loop trains
    `steps` steps when called, waits for the device, and returns the seconds."""
    from types import SimpleNamespace

    import torch

    from gradlab.devices import autocast as precision
    from gradlab.loop import Loop, Member, Single
    from gradlab.objective import loss_fn
    from gradlab.progress import RunProgress
    from gradlab.tracking import Tracker
    from gradlab.train import build

    conf = _conf(f"model={model}", f"steps={steps}", "eval_every=0", *overrides)
    run = build(conf)
    objective = loss_fn(run.task.spec)
    params = [p for p in run.model.parameters() if p.requires_grad]
    autocast = precision(conf["precision"], run.device)  # as plain as before: no autocast call under fp32

    def gradlab_loop() -> float:  # a run's loop (gradlab.loop), with its record kept in memory
        start = time.perf_counter()
        session = SimpleNamespace(
            history=[],
            layers=[],
            progress=RunProgress("none", model, steps),
            tracker=Tracker(conf, None, enabled=False),
        )
        member = Member(conf, run, session).start()
        loop = Loop([member], Single([member]))
        for step in range(1, steps + 1):
            loop.step(step)
        _wait(run.device)
        return time.perf_counter() - start

    def plain_loop() -> float:  # as a user writes it: autocast, and a GradScaler under fp16
        stream = run.task.batches(conf["batch_size"], conf["seed"])
        scaler = torch.amp.GradScaler(run.device.type, enabled=conf["precision"] == "fp16")
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(stream)
            with autocast():
                loss = objective(run.model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(params, conf["max_norm"])
            scaler.step(run.optimizer)
            scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad(), autocast():
            for x, y in run.task.eval_batches():
                objective(run.model(x).float(), y)
        _wait(run.device)
        return time.perf_counter() - start

    return gradlab_loop, plain_loop


def loop(model: str, steps: int, repeats: int, *overrides: str) -> dict:
    """gradlab's loop vs the plain loop on one run's model, data and optimizer."""
    gradlab_loop, plain_loop = loops(model, steps, *overrides)
    times = alternate({"gradlab": gradlab_loop, "plain": plain_loop}, repeats)
    return {
        "model": model,
        "steps": steps,
        "overrides": list(overrides),
        "gradlab_steps_per_s": steps / times.median("gradlab"),
        "plain_steps_per_s": steps / times.median("plain"),
        "ratio": times.ratio("plain", "gradlab"),
    }


def launches(model: str, steps: int, *overrides: str) -> dict:
    """GPU kernels launched per step by gradlab's loop and by the plain loop (torch.profiler, over
    `steps` steps after a warm-up): on a GPU, small models are bound by launches, not arithmetic."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    gradlab_loop, plain_loop = loops(model, steps, *overrides)
    counts = {}
    for name, timed in (("gradlab", gradlab_loop), ("plain", plain_loop)):
        timed()  # warm-up: cuDNN and cuBLAS choose their kernels
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            timed()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        counts[f"{name}_kernels_per_step"] = len(kernels) / steps
    return {"model": model, "steps": steps, "overrides": list(overrides), **counts}


def clip_costs(model: str, steps: int, repeats: int) -> dict:
    """Median time per step of gradlab's training step under every clip mode."""
    import torch

    from gradlab.components import options
    from gradlab.objective import loss_fn
    from gradlab.step import StepParts, train_step
    from gradlab.train import build

    def timer(mode: str):
        conf = _conf(f"model={model}", f"clip={mode}")
        run = build(conf)
        stream = run.task.batches(conf["batch_size"], seed=0)
        scaler = torch.amp.GradScaler(run.device.type, enabled=False)
        autocast = partial(torch.autocast, run.device.type, enabled=False)
        parts = StepParts(loss_fn(run.task.spec), run.optimizer, run.clip, scaler, autocast, 2.0)

        def timed() -> float:
            data = [next(stream) for _ in range(steps)]
            start = time.perf_counter()
            for x, y in data:
                out = train_step(run.model, [(x, y)], parts)
            out.figures["loss"].cpu()  # waits for the device
            return (time.perf_counter() - start) / steps

        return timed

    times = alternate({mode: timer(mode) for mode in options("clip")}, repeats)
    return {
        "model": model,
        "steps": steps,
        "modes": {
            mode: {"ms_per_step": times.median(mode) * 1e3, "vs_none": times.ratio(mode, "none")}
            for mode in times
        },
    }


def _gradlab(args: list[str]) -> float:
    """Wall time of a gradlab command in a fresh process, results in a fresh folder."""
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "gradlab", *args, f"results_root={root}", "progress=none"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def sweep_throughput(model: str, steps: int, repeats: int, seeds: int = 4) -> dict:
    """Runs per minute of a sweep of 4 norm thresholds x `seeds` seeds, by launcher (alternating)."""
    sweep = [
        "sweep",
        f"model={model}",
        "clip=norm",
        "max_norm=0.5,1,2,5",
        f"seed=range({seeds})",
        f"steps={steps}",
        "eval_every=0",
        "wandb=offline",
    ]
    launchers = {
        "sequential": ["engine=sequential"],
        "joblib": ["launcher=local"],
        "vectorized": ["engine=vectorized"],
        "auto": ["engine=auto"],
    }
    times = {name: [] for name in launchers}
    for _ in range(repeats):
        for name, extra in launchers.items():
            times[name].append(_gradlab([*sweep, *extra]))
    runs = 4 * seeds
    runs_per_min = {name: runs * 60 / statistics.median(values) for name, values in times.items()}
    return {
        "model": model,
        "runs": runs,
        "steps": steps,
        "runs_per_min": runs_per_min,
        "seconds": {name: statistics.median(values) for name, values in times.items()},
        "vs_sequential": {name: rate / runs_per_min["sequential"] for name, rate in runs_per_min.items()},
    }


def scaling(
    model: str,
    count: int,
    steps: int,
    *overrides: str,
    repeats: int = 1,
    engines: tuple = ("sequential", "vectorized", "auto"),
    warm: bool = True,
) -> dict:
    """Median seconds to train `count` runs (seeds 0..count-1) one after another, as one vectorized
    group, and as engine=auto chooses (of `engines`), alternating, each timing into a fresh folder
    (after a warm-up timing of each, unless not `warm`)."""
    from itertools import count as numbers

    from gradlab.train import train
    from gradlab.vectorized import run_groups, train_group

    with tempfile.TemporaryDirectory() as root:
        confs = [
            _conf(
                f"model={model}",
                f"steps={steps}",
                f"seed={seed}",
                "eval_every=0",
                f"results_root={root}",
                *overrides,
            )
            for seed in range(count)
        ]
        fresh = numbers()

        def timer(engine: str):
            def timed() -> float:
                runs = [{**conf, "name": f"{engine}{next(fresh)}", "engine": engine} for conf in confs]
                start = time.perf_counter()
                if engine == "sequential":
                    for conf in runs:
                        train(conf)
                else:
                    (train_group if engine == "vectorized" else run_groups)(runs)
                return time.perf_counter() - start

            return timed

        times = alternate({engine: timer(engine) for engine in engines}, repeats, warm)
    row = {
        "model": model,
        "runs": count,
        "steps": steps,
        "overrides": list(overrides),
        "repeats": repeats,
        **{f"{engine}_s": times.median(engine) for engine in engines},
        "speedup": times.ratio("sequential", "vectorized"),
    }
    return {**row, "auto_speedup": times.ratio("sequential", "auto")} if "auto" in engines else row


def _first_step(model: str, mode: str = "compile=true") -> float:
    """Seconds of a compiled model's first training step (the compilation)."""
    import torch

    from gradlab.objective import loss_fn
    from gradlab.train import build

    torch._dynamo.reset()
    run = build(_conf(f"model={model}", mode))
    x, y = next(run.task.batches(8, 0))
    start = time.perf_counter()
    loss_fn(run.task.spec)(run.model(x), y).backward()
    _wait(run.device)
    return time.perf_counter() - start


def fixed_cost(model: str, repeats: int) -> dict:
    times = [
        _gradlab(["train", f"model={model}", "steps=1", "eval_every=0", "wandb=offline"])
        for _ in range(repeats)
    ]
    return {"model": model, "seconds": statistics.median(times)}


def run(
    sections: list[str],
    models: list[str],
    steps: int,
    repeats: int,
    sweep_steps: int,
    sweep_repeats: int,
    counts: tuple = COUNTS,
) -> dict:
    """Measure the chosen sections, printing each table as it is done; the results as one dict."""
    report = {**device_report(), "repeats": repeats}
    print(
        f"gradlab bench on {report['device']}, torch {report['torch']}, {report['threads']} threads, "
        f"medians of {repeats}"
    )

    def scale_rows() -> list:
        rows = [scaling(m, n, scale_steps, repeats=repeats) for m in models for n in counts]
        return rows + [
            scaling("lstm", 16, scale_steps, f"task.length={t}", repeats=repeats)
            for t in LENGTHS
            if "lstm" in models
        ]

    modes = ["compile=true"] + (["compile=cudagraphs"] if report["kind"] != "cpu" else [])
    scale_steps = max(1, steps // 4)
    measures = {  # section -> (rows, title, one row's line)
        "loop": (
            lambda: [loop(m, steps, repeats) for m in models],
            f"loop: steps/s, gradlab's loop (all metrics) vs a plain PyTorch loop, {steps} steps",
            _loop_line,
        ),
        "clip": (
            lambda: [clip_costs(m, max(1, steps // 2), repeats) for m in models],
            f"clip: ms per step of gradlab's step by clip mode (ratio to clip=none), "
            f"{max(1, steps // 2)} steps",
            lambda r: "  ".join(
                f"{mode} {v['ms_per_step']:.2f} ({v['vs_none']:.2f}x)" for mode, v in r["modes"].items()
            ),
        ),
        "sweep": (
            lambda: [sweep_throughput(m, sweep_steps, sweep_repeats) for m in models if m != "transformer"],
            f"sweep: runs per minute, 16 runs (4 thresholds x 4 seeds), {sweep_steps} steps each, "
            f"median of {sweep_repeats}",
            lambda r: "   ".join(
                f"{name} {rate:6.1f} ({r['vs_sequential'][name]:.2f}x)"
                for name, rate in r["runs_per_min"].items()
            ),
        ),
        "scale": (
            scale_rows,
            f"scale: seconds for N runs of {scale_steps} steps, one after another vs vectorized "
            f"vs engine=auto (one process, median of {repeats})",
            lambda r: (
                f"{' '.join(r['overrides']):<16} N={r['runs']:<3} sequential {r['sequential_s']:7.2f}   "
                f"vectorized {r['vectorized_s']:7.2f} ({r['speedup']:.2f}x)   "
                f"auto {r['auto_s']:7.2f} ({r['auto_speedup']:.2f}x)"
            ),
        ),
        "fixed": (
            lambda: [fixed_cost(m, repeats) for m in models],
            "fixed: seconds for a whole 1-step run in a fresh process (start, imports, data, W&B init)",
            lambda r: f"{r['seconds']:.2f} s",
        ),
        "compile": (
            lambda: [compiled(m, steps, repeats, mode) for m in models for mode in modes],
            f"compile: steps/s compiled, {steps} steps (compare with loop)",
            lambda r: (
                f"{' '.join(r['overrides']):<18} {_loop_line(r)}   first step {r['first_step_s']:.1f} s"
                f"   {r['execution']}"
            ),
        ),
    }
    for name in SECTIONS:
        if name in sections:
            rows, title, line = measures[name]
            report[name] = rows()
            print(f"\n{title}")
            for r in report[name]:
                print(f"  {r['model']:<12} {line(r)}", flush=True)
    if "scale" in report:
        report["engine_auto"] = speedups(
            report,
            "gradlab bench --only scale --models "
            + ",".join(models)
            + f" --counts {','.join(map(str, counts))} --steps {steps} --repeats {repeats}",
        )
    return report


def device_report() -> dict:
    """What a benchmark ran on: the device (and the kind engine=auto keys figures by), torch, the
    threads, the date."""
    import torch

    from gradlab import devices
    from gradlab.config import resolve_device

    device = resolve_device("auto")
    return {
        "device": devices.name(device),
        "kind": devices.kind(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def speedups(report: dict, command: str) -> dict:
    """The scale section's speedups as an entry of gradlab/measured.json, for engine=auto on
    this kind of device: {kind: {device, torch, date, command, steps, speedups: {model: {N: x}}}},
    `steps` the length of the runs measured (a group of shorter runs is not sped up as much)."""
    table, lengths = {}, set()
    for r in report["scale"]:
        if not r["overrides"] and r["runs"] > 1:  # a model at its default size; N = 1 decides nothing
            table.setdefault(r["model"], {})[str(r["runs"])] = round(r["speedup"], 2)
            lengths.add(r["steps"])
    return {
        report["kind"]: {
            "device": report["device"],
            "torch": report["torch"],
            "date": report["date"],
            "threads": report["threads"],
            "command": command,
            "steps": max(lengths, default=0),
            "speedups": table,
        }
    }


def compiled(model: str, steps: int, repeats: int, mode: str) -> dict:
    """The loop section with the model compiled (`mode`: compile=true or compile=cudagraphs), the
    first (compiling) step's seconds, and how the model ran."""
    from gradlab.train import compiling

    flag = mode.split("=", 1)[1]
    with compiling(True if flag == "true" else flag) as execution:
        row = {**loop(model, steps, repeats, mode), "execution": execution()}
    return {**row, "first_step_s": _first_step(model, mode)}


def _loop_line(r: dict) -> str:
    return (
        f"gradlab {r['gradlab_steps_per_s']:8.1f}   plain {r['plain_steps_per_s']:8.1f}   {r['ratio']:.3f}x"
    )


def writable(path) -> None:
    """Refuse, before anything is measured, a results file whose folder cannot be made."""
    from pathlib import Path

    from gradlab.errors import bad

    if Path(path).is_dir():
        raise bad("--out", path, "is a folder; name a JSON file")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise bad("--out", path, f"its folder cannot be made ({e.strerror or e})") from None


def write(report: dict, path) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
