"""`train(cfg)`: one run, from its configuration to a finished record.

Importable and free of Hydra: a config composed any way (Hydra, compose API, a plain
dict) goes in, the run's summary comes out. A diverging run ends as `diverged`, an
exception as `failed`; neither raises, so a sweep always goes on.
"""

from __future__ import annotations

import math
import platform
import time
from datetime import datetime, timezone
from contextlib import nullcontext
from functools import partial
from typing import NamedTuple

import torch

import gradlab
from gradlab import distributed, parallel, records
from gradlab.clip import build_clip
from gradlab.config import (check_knobs, check_writable, display_name, identity, norm_type, plain,
                            resolve_device, run_id, sweep_dir)
from gradlab.diagnostics import Smoothness
from gradlab.spikes import SpikeGuard
from gradlab.models import build_model
from gradlab.objective import evaluate, loss_fn
from gradlab.optim import build_optimizer, constant_lr, lr_factor
from gradlab.progress import RunProgress, report_skipped
from gradlab.step import RECORDED, SCALARS, read, train_step
from gradlab.tasks import build_task
from gradlab.tracking import Tracker, resolve_mode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Run(NamedTuple):
    device: torch.device
    task: object
    model: torch.nn.Module
    clip: object
    optimizer: torch.optim.Optimizer
    spike_guard: SpikeGuard | None  # skip_spikes=true


def build(conf: dict) -> Run:
    """Every component of a run, seeded; raises ConfigError (one line) on bad input."""
    check_knobs(conf)
    device = resolve_device(conf["device"])
    task = build_task(conf["task"])
    torch.manual_seed(conf["seed"])
    model = build_model(conf["model"], task.spec).to(device)
    clip = build_clip(conf["clip"], norm_type(conf["norm_type"]), model)
    optimizer = build_optimizer(conf["optim"], model.parameters(), conf["lr"])
    lr_factor(conf["optim"], conf["steps"])
    resolve_mode(conf["logger"]["wandb"]["mode"])
    guard = (SpikeGuard(conf["spike_sigma"], conf["spike_window"], conf["spike_min_history"], conf["spike_metric"])
             if conf["skip_spikes"] else None)
    task.prepare()
    return Run(device, task, model, clip, optimizer, guard)


def train(cfg) -> dict:
    """Run (or find already finished) the run described by cfg; return its summary."""
    conf = cfg if isinstance(cfg, dict) else plain(cfg)
    with distributed.joined(conf) as world:
        return _train(conf, world)


def _train(conf: dict, world: distributed.World) -> dict:
    lead = world.rank == 0  # writes the record and logs; every rank trains
    run_dir = sweep_dir(conf) / run_id(conf)
    done = None if conf.get("force") else records.finished(run_dir, identity(conf))
    distributed.barrier(world)  # every rank has looked before rank 0 starts the record afresh
    if done:
        if lead:
            report_skipped(conf["progress"], done, run_dir)
        return {**done, "skipped": True}
    workers = 1 if conf["workers"] == "auto" else conf["workers"]
    parallel.share_cores(workers * world.local_size)
    if workers > 1 and conf["device"] == "auto" and parallel.gpus():
        parallel.pin_gpu(sweep_dir(conf), workers)
    run = build(conf)
    check_writable(conf)
    if lead:
        records.begin(run_dir, conf)
    progress = RunProgress(conf["progress"] if lead else "none", display_name(conf), conf["steps"])
    summary = {"status": "interrupted", "run_id": run_dir.name, "name": display_name(conf),
               "sweep": conf["name"], "config_hash": identity(conf), "seed": conf["seed"],
               "device": _device_name(run.device), "processes": world.size, "versions": _versions(),
               "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    history, layers = [], []
    start = time.perf_counter()
    tracker = Tracker(conf, run_dir, enabled=lead)
    try:
        tracker.start()
        summary.update(_loop(conf, run, world, history, layers, progress, tracker))
    except Exception as e:  # recorded, not raised: the sweep goes on
        summary.update(status="failed", error=_one_line(e))
    finally:
        summary.update(_figures(history), wall_time_s=round(time.perf_counter() - start, 3),
                       finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       wandb={"mode": tracker.mode, "sync": tracker.sync_hint()})
        if lead:
            _record(conf, run, run_dir, summary, tracker, history, layers)
        progress.close(summary, run_dir)
    return summary


def _record(conf, run, run_dir, summary, tracker, history, layers) -> None:
    import pandas as pd

    try:
        tracker.finish(summary)
        if conf["save_model"]:
            torch.save(run.model.state_dict(), run_dir / "model.pt")
        records.finish(run_dir, summary, pd.DataFrame(history, columns=COLUMNS),
                       pd.DataFrame(layers, columns=LAYER_COLUMNS) if layers else None)
    except OSError as e:  # e.g. disk full: record the failure in the space the partial files held
        summary.update(status="failed", error=_one_line(e))
        records.salvage(run_dir, summary)


LAYER_COLUMNS = ["step", "layer", "grad_norm", "update_ratio", "clip_fraction"]
COLUMNS = ["step", *RECORDED, "clip_coef", "clip_fraction", "lr", "eval_loss", "eval_acc",
           "time_s", "steps_per_s", "samples_per_s"]


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _loop(conf: dict, run: Run, world: distributed.World, history: list, layers: list, progress: RunProgress,
          tracker: Tracker) -> dict:
    device, task, model, clip, optimizer, guard = run
    net = distributed.wrap(model, world.size)  # what trains; `model` is measured and evaluated
    steps, k = conf["steps"], conf["accum_steps"]
    task.load(device)
    stream = task.batches(conf["batch_size"] * k, conf["seed"])
    eval_set = task.eval_batches()
    objective = loss_fn(task.spec)
    autocast = (nullcontext if conf["precision"] == "fp32"  # entering a disabled autocast still costs per call
                else partial(torch.autocast, device.type, dtype=DTYPES[conf["precision"]]))
    scaler = torch.amp.GradScaler(device.type, enabled=conf["precision"] == "fp16")
    scheduler = (None if constant_lr(conf["optim"])  # no per-step scheduler call where there is nothing to schedule
                 else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(conf["optim"], steps)))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    p = norm_type(conf["norm_type"])
    probe = Smoothness(conf["smoothness_every"]) if conf["smoothness_every"] else None
    per_layer_fired = torch.zeros(len(names), device=device) if hasattr(clip, "last_fired") else None
    log = _Log(conf, names, history, layers, progress, tracker, samples_per_step=conf["batch_size"] * k)

    model.train()
    for step in range(1, steps + 1):
        x, y = next(stream)
        lr = optimizer.param_groups[0]["lr"]
        at_layers = conf["layer_norms_every"] and step % conf["layer_norms_every"] == 0
        before = [w.detach().clone() for w in model.parameters() if w.requires_grad] if at_layers else None
        micro_batches = distributed.shard([(x, y)] if k == 1 else list(zip(x.chunk(k), y.chunk(k))), world)
        out = train_step(net, micro_batches, objective, optimizer, clip, scaler, autocast, p, conf["mistake"], probe, guard)
        if scheduler:
            scheduler.step()
        if per_layer_fired is not None:  # a step skipped as a spike was not clipped
            per_layer_fired += clip.last_fired * (1 - out.scalars[SCALARS.index("spike_skipped")])
        layers_now = _layer_figures(model, before, out.layer_norms, per_layer_fired, step) if at_layers else None
        at_eval = step == steps or (conf["eval_every"] and step % conf["eval_every"] == 0)
        metrics = evaluate(model, eval_set, task.spec, autocast) if at_eval else None
        log.add(step, out.scalars, lr, layers_now, metrics)
        if step % conf["log_every"] == 0 or step == steps:
            diverged_at = log.flush()  # the one host-device sync of the interval
            if diverged_at:
                return {"status": "diverged", "diverged_step": diverged_at}
    return {"status": "completed"}


def _layer_figures(model, before, grad_norms, fired, step: int) -> torch.Tensor:
    """Per parameter tensor (rows: LAYER_COLUMNS[2:]): pre-clip gradient norm, update-to-weight
    norm ratio of this step, and the share of steps so far that clipped it (nan unless the clip
    mode works per layer). Stays on the device."""
    after = [w.detach() for w in model.parameters() if w.requires_grad]
    moved = torch.stack(torch._foreach_norm(torch._foreach_sub(after, before)))
    ratio = moved / torch.stack(torch._foreach_norm(before)).clamp(min=1e-12)
    share = fired / step if fired is not None else torch.full_like(ratio, float("nan"))
    return torch.stack([grad_norms.float(), ratio.float(), share.float()])


class _Log:
    """Device metrics of the steps since the last flush; the host reads them all at once."""

    def __init__(self, conf, names, history, layers, progress, tracker, samples_per_step):
        self.names, self.history, self.layers, self.progress, self.tracker = names, history, layers, progress, tracker
        self.samples_per_step = samples_per_step
        self.grads_may_overflow = conf["precision"] == "fp16"  # the scaler skips those steps
        self.pending, self.clipped, self.start = [], 0.0, time.perf_counter()
        self.last = self.start

    def add(self, step, scalars, lr, layer_norms, metrics) -> None:
        self.pending.append((step, scalars, lr, layer_norms, metrics))

    def flush(self) -> int | None:
        """Move pending metrics into the history and the tracker; return the first non-finite step, if any."""
        rows, layers = len(self.history), len(self.layers)
        diverged_at = self._read()
        self.tracker.log(self.history[rows:], self.layers[layers:])
        return diverged_at

    def _read(self) -> int | None:
        values = torch.stack([s for _, s, *_ in self.pending]).cpu().tolist()
        now = time.perf_counter()
        rate = len(self.pending) / max(now - self.last, 1e-9)
        self.last = now
        for (step, _, lr, layer_figures, metrics), row_values in zip(self.pending, values):
            row = {**read(row_values, self.grads_may_overflow), "step": step, "lr": lr}
            self.clipped += row["clipped"]
            pre, post = row["grad_norm"], row["grad_norm_clipped"]
            row.update(clip_coef=post / pre if pre > 0 and math.isfinite(pre) else 1.0,
                       clip_fraction=self.clipped / step, time_s=now - self.start,
                       steps_per_s=rate, samples_per_s=rate * self.samples_per_step)
            if metrics is not None:
                row.update(eval_loss=metrics[0].item(), eval_acc=metrics[1].item())
            if layer_figures is not None:
                self.layers += [(step, n, *v) for n, v in zip(self.names, layer_figures.T.tolist())]
            self.history.append(row)
            if not math.isfinite(row["loss"]) or not (math.isfinite(pre) or self.grads_may_overflow):
                self.pending = []
                return step
        self.pending = []
        self.progress.update(step, row, row["clip_fraction"], rate)
        return None


SPIKE_FACTOR, SPIKE_WINDOW = 1.5, 50  # a loss spike: a step above 1.5x the median of the previous 50 steps


def _figures(history: list) -> dict:
    """Final and best figures of a run's history (finite values only)."""
    import pandas as pd

    h = pd.DataFrame(history, columns=COLUMNS)
    if h.empty:
        return {"steps_done": 0}
    finite = h[h["loss"].map(math.isfinite)]
    smooth = finite["loss"].rolling(10, min_periods=1).mean()
    trailing_median = finite["loss"].rolling(SPIKE_WINDOW).median().shift(1)
    ev = h.dropna(subset=["eval_loss"])
    figures = {
        "steps_done": int(h["step"].iloc[-1]),
        "train_loss_final": _num(finite["loss"].tail(10).mean()),
        "train_loss_best": _num(smooth.min()),
        "grad_norm_mean": _num(finite["grad_norm"].mean()),
        "grad_norm_max": _num(finite["grad_norm"].max()),
        "clip_fraction": _num(h["clipped"].mean()),
        "spike_skips": int(h["spike_skipped"].sum()),
        "loss_spikes": int((finite["loss"] > SPIKE_FACTOR * trailing_median).sum()),
        "scaler_skips": int(h["scaler_skipped"].sum()),
        "steps_per_s": _num(h["step"].iloc[-1] / h["time_s"].iloc[-1]) if h["time_s"].notna().any() else None,
    }
    if not ev.empty:
        figures.update(eval_loss_final=_num(ev["eval_loss"].iloc[-1]), eval_loss_best=_num(ev["eval_loss"].min()),
                       eval_acc_final=_num(ev["eval_acc"].iloc[-1]), eval_acc_best=_num(ev["eval_acc"].max()))
    return figures


def _num(x) -> float | None:
    return round(float(x), 6) if x is not None and math.isfinite(x) else None


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"


def _versions() -> dict:
    return {"gradlab": gradlab.__version__, "torch": torch.__version__, "python": platform.python_version()}
