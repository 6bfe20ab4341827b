"""`train(cfg)`: one run, from its configuration to a finished record.

Importable and free of Hydra: a config composed any way (Hydra, compose API, a plain
dict) goes in, the run's summary comes out. A diverging run ends as `diverged`, an
exception as `failed`; neither raises, so a sweep always goes on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from functools import partial
from typing import NamedTuple

import torch

import gradlab
from gradlab import devices, distributed, figures, parallel, records
from gradlab.clip import build_clip, tensor_norms
from gradlab.components import label
from gradlab.config import (
    check_knobs,
    check_writable,
    display_name,
    identity,
    norm_type,
    plain,
    resolve_device,
    run_id,
    sizes,
    stop_rule,
    sweep_dir,
)
from gradlab.diagnostics import Smoothness
from gradlab.errors import bad, out_of_memory
from gradlab.mistakes import mistaken_step
from gradlab.models import build_model
from gradlab.objective import evaluate, loss_fn
from gradlab.optim import build_optimizer, constant_lr, lr_factor
from gradlab.progress import RunProgress, progress_mode, report_skipped
from gradlab.spikes import SpikeGuard
from gradlab.step import StepParts, read, to_host, train_step
from gradlab.tasks import build_task, loaded
from gradlab.tracking import Tracker, check_settings


class Run(NamedTuple):
    device: torch.device
    task: object
    model: torch.nn.Module
    clip: object
    optimizer: torch.optim.Optimizer
    spike_guard: SpikeGuard | None  # skip_spikes=true


def build(conf: dict) -> Run:
    """Every component of a run, seeded; raises ConfigError (one line) on bad input."""
    device = _settings(conf)
    task = build_task(conf["task"])
    devices.exact_fp32()
    torch.manual_seed(conf["seed"])  # initialised on the CPU, then moved: the same weights on every device
    try:
        model = build_model(conf["model"], task.spec).to(device)
    except RuntimeError as e:
        if out_of_memory(e):
            raise too_big(conf, device, "make it smaller") from None
        raise
    around = _around(conf, model, device)
    if conf["compile"]:  # in place, so parameter names stay the model's; reduce-overhead replays CUDA graphs
        model.compile(mode="reduce-overhead" if conf["compile"] == "cudagraphs" else None)
    return Run(device, loaded(conf["task"], device), model, *around)


def check(conf: dict, shapes: dict) -> None:
    """What `build` would refuse, found without building the model on the device: the model is
    built on the meta device (shapes, no memory), once per distinct model and task in `shapes`
    (a cache the caller keeps across a sweep's runs), so its own checks run (an impossible
    pairing) and the clip mode and optimizer can be built around it."""
    device = _settings(conf)
    task = build_task(conf["task"])
    task.prepare()
    key = json.dumps([conf["model"], conf["task"], str(device)], sort_keys=True, default=str)
    if key not in shapes:
        with torch.device("meta"):
            shapes[key] = build_model(conf["model"], task.spec)
        _consumes(conf, shapes[key], task.spec)
        weights = sum(p.numel() * p.element_size() for p in shapes[key].parameters())
        if weights > devices.free_memory(device):
            raise too_big(conf, device, f"its weights alone take {weights / 2**30:.1f} GiB; make it smaller")
    _around(conf, shapes[key], device)


def too_big(conf: dict, device, advice: str):
    """The ConfigError for a model that does not fit in memory, with the sizes that decide it."""
    return bad(
        "model",
        label("model", conf["model"]),
        f"does not fit in memory on {device} with {sizes(conf)}: {advice}",
    )


def _consumes(conf: dict, model: torch.nn.Module, spec) -> None:
    """The model's output and loss on a meta batch of the task's shapes (no memory, no compute):
    a model that cannot consume the task (a user's, which does not check its spec) fails here in
    one line, instead of in its first step."""
    x = torch.empty(
        (2, *spec.shape), dtype=torch.long if spec.input == "tokens" else torch.float32, device="meta"
    )
    expected = {
        "classes": (2, spec.n_out),
        "regression": (2, spec.n_out),
        "token_classes": (2, spec.shape[0], spec.n_out),
    }[spec.output]
    y = torch.empty(
        expected if spec.output == "regression" else expected[:-1],
        dtype=torch.float32 if spec.output == "regression" else torch.long,
        device="meta",
    )
    pairing = (
        f"cannot train on task={label('task', conf['task'])} (input {spec.input} {tuple(spec.shape)}, "
        f"output {spec.output} {expected[1:]})"
    )
    try:
        out = model(x)
        loss_fn(spec)(out, y)
    except NotImplementedError:  # an operation without a meta version: the run itself will tell
        return
    except Exception as e:
        raise bad("model", label("model", conf["model"]), f"{pairing}: {one_line(e)}") from None
    if tuple(out.shape) != expected:
        raise bad(
            "model",
            label("model", conf["model"]),
            f"{pairing}: its output has shape {tuple(out.shape)[1:]} per sample",
        )


def _settings(conf: dict) -> torch.device:
    """The run's top-level settings checked; its device."""
    check_knobs(conf)
    progress_mode(conf["progress"])
    check_settings(conf["logger"]["wandb"])
    return resolve_device(conf["device"])


def _around(conf: dict, model: torch.nn.Module, device: torch.device) -> tuple:
    """What a run builds around its model: clip mode, optimizer, spike guard; the precision checked."""
    devices.check_precision(conf["precision"], model, device)
    clip = build_clip(conf["clip"], norm_type(conf["norm_type"]), model)
    optimizer = build_optimizer(conf["optim"], model.parameters(), conf["lr"])
    lr_factor(conf["optim"], conf["steps"])
    guard = (
        SpikeGuard(conf["spike_sigma"], conf["spike_window"], conf["spike_min_history"], conf["spike_metric"])
        if conf["skip_spikes"]
        else None
    )
    return clip, optimizer, guard


def train(cfg) -> dict:
    """Run (or find already finished) the run described by cfg; return its summary."""
    conf = cfg if isinstance(cfg, dict) else plain(cfg)
    with distributed.joined(conf) as world:
        return _train(conf, world)


def _train(conf: dict, world: distributed.World) -> dict:
    check_writable(conf)
    with claim(conf, world) as done:
        if done:
            return done
        workers = 1 if conf["workers"] == "auto" else conf["workers"]
        parallel.share_cores(workers * world.local_size)
        parallel.watch_sweep()
        if workers > 1 and conf["device"] in ("auto", "cuda") and parallel.gpus():  # not a chosen cuda:N
            parallel.pin_gpu(sweep_dir(conf), workers)
        return _attempt(conf, build(conf), world)


@contextmanager
def claim(conf: dict, world: distributed.World = distributed.SOLO):
    """The summary of a run that is not to be made here (finished before, or being made by another
    process: another sweep on the same folder), else None while this process holds the run."""
    run_dir = sweep_dir(conf) / run_id(conf)
    done = skipped(conf)
    distributed.barrier(world)  # every rank has looked before rank 0 starts an attempt
    with records.claimed(run_dir) if world.rank == 0 and not done else nullcontext(True) as mine:
        if not done and not distributed.agree(mine, world):
            done = elsewhere(conf, run_dir)
        yield done or skipped(conf)  # finished: made by another process just before this one took it


def _attempt(conf: dict, run: Run, world: distributed.World) -> dict:
    session = Session(conf, run, world)
    result = {}
    with compiling(conf["compile"]) as execution:
        try:
            session.open()
            stepper = Stepper(conf, run, session, world)
            for step in range(1, conf["steps"] + 1):
                result = stepper.record(step, stepper.step(stepper.net, stepper.batches(step), stepper.parts))
                if result:
                    break
        except Exception as e:  # recorded, not raised: the sweep goes on
            result = {"status": "failed", "error": failure(e, conf)}
        finally:  # also on Ctrl-C, which then goes on up: the run is recorded as interrupted
            summary = session.close({**(result or {}), "execution": execution()})
            parallel.exit_if_orphaned()
    return summary


@contextmanager
def compiling(requested):
    """With compile= set, torch.compile's fallback (a frame that does not compile runs eagerly,
    with torch's warning) for the calls made in this block only, from a fresh compile cache,
    so that what it reports is this run's: yields a function that says how the model ran.

    "compiled": every frame torch.compile took on compiled (graph breaks included);
    "partly compiled (eager: REASON)": some ran eagerly, and Dynamo's first line says why (an
    nn.LSTM: "Attempted to wrap RNN, GRU, or LSTM"); "eager (compile failed)": none compiled;
    "eager": not asked for, or the model never ran. compile=cudagraphs adds whether CUDA
    graphs were used or skipped (always skipped on a CPU).
    """
    if not requested:
        yield lambda: "eager"
        return
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    dynamo.reset()  # a model compiled earlier in this process would otherwise be reused unseen
    before = {kind: dict(counters[kind]) for kind in ("frames", "unimplemented", "inductor")}

    def since(kind: str) -> dict:
        return {
            k: v - before[kind].get(k, 0) for k, v in counters[kind].items() if v > before[kind].get(k, 0)
        }

    def execution() -> str:
        frames = since("frames")
        ok, tried = frames.get("ok", 0), frames.get("total", 0)
        if not ok:
            return "eager (compile failed)" if tried else "eager"
        reasons = "; ".join(dict.fromkeys(reason.splitlines()[0] for reason in since("unimplemented")))
        how = "compiled" if ok == tried else f"partly compiled (eager: {reasons or 'frames Dynamo skipped'})"
        if requested == "cudagraphs":
            skips = since("inductor").get("cudagraph_skips", 0)
            how += f", CUDA graphs skipped ({skips} graphs)" if skips else ", with CUDA graphs"
        return how

    with dynamo.config.patch(suppress_errors=True):
        yield execution


def earlier_result(conf: dict) -> dict | None:
    """The summary of this run if it finished before and is not to be forced (force=true)."""
    return None if conf.get("force") else records.result(sweep_dir(conf) / run_id(conf), identity(conf))


def skipped(conf: dict) -> dict | None:
    """earlier_result, said on the console and marked skipped: what a run that is not made returns."""
    done = earlier_result(conf)
    if done and distributed.world().rank == 0:
        report_skipped(conf["progress"], done, sweep_dir(conf) / run_id(conf))
    return {**done, "skipped": True} if done else None


def elsewhere(conf: dict, run_dir) -> dict:
    """What a run returns that another live process is making (another sweep on the same folder)."""
    if distributed.world().rank == 0 and progress_mode(conf["progress"]) != "none":
        print(
            f"{display_name(conf)}: in progress elsewhere (another process holds {run_dir}); skipped",
            flush=True,
        )
    return {"status": "elsewhere", "run_id": run_dir.name, "name": display_name(conf), "skipped": True}


class Session:
    """The record-keeping of one run: its folder, summary, W&B run and progress, from start to close.
    Only rank 0 of a data-parallel run writes."""

    def __init__(self, conf: dict, run: Run, world: distributed.World):
        self.conf, self.run, self.lead = conf, run, world.rank == 0
        self.run_dir = sweep_dir(conf) / run_id(conf)
        self.attempt = records.Attempt(self.run_dir)  # where the record is made until it is complete
        self.progress = RunProgress(
            conf["progress"] if self.lead else "none", display_name(conf), conf["steps"]
        )
        self.summary = {
            "status": "interrupted",
            "run_id": self.run_dir.name,
            "name": display_name(conf),
            "sweep": conf["name"],
            "config_hash": identity(conf),
            "seed": conf["seed"],
            "device": devices.name(run.device),
            "fp32_precision": devices.fp32_precision(),
            "execution": "eager",
            "processes": world.size,
            "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.history, self.layers = [], []
        self.start = time.perf_counter()
        self.tracker = Tracker(conf, self.attempt.dir, enabled=self.lead)
        self.opened = False

    def open(self) -> None:
        """Start the attempt's folder and the W&B run."""
        if self.lead:
            self.attempt.begin(self.conf)
        self.opened = True
        self.tracker.start()

    def close(self, result: dict) -> dict:
        """Write the record (status `interrupted` unless `result` says otherwise); the summary."""
        summary = self.summary
        summary.update(
            result,
            **figures.summary(self.history),
            wall_time_s=round(time.perf_counter() - self.start, 3),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            wandb={"mode": self.tracker.mode, "sync": None},
        )
        if self.lead:
            self._write()
        self.progress.close(summary, self.run_dir)
        return summary

    def _write(self) -> None:
        import pandas as pd

        written = False
        if self.opened:  # else its folder could not be started, and the run's error says why
            try:
                self.tracker.finish(self.summary)
                if self.conf["save_model"]:
                    weights = {
                        k: v.cpu() for k, v in self.run.model.state_dict().items()
                    }  # loads without a GPU
                    torch.save(weights, self.attempt.dir / "model.pt")
                self.summary["wandb"]["sync"] = self._sync_hint()
                self.attempt.finish(
                    self.summary,
                    pd.DataFrame(self.history, columns=figures.columns()),
                    pd.DataFrame(self.layers, columns=LAYER_COLUMNS) if self.layers else None,
                )
                written = True
            except OSError as e:  # e.g. disk full: record the failure in the space the partial files held
                self.summary.update(status="failed", error=one_line(e))
                self.summary["wandb"]["sync"] = None
        written = written or self.attempt.salvage(self.summary)
        if not self.attempt.close(self.summary, written) and written:
            print(
                f"{self.summary['name']}: {self.summary['status']}; the finished record already in "
                f"{self.run_dir} is kept",
                file=sys.stderr,
                flush=True,
            )

    def _sync_hint(self) -> str | None:
        """Where this run's offline W&B files will be once the record is in place, for `wandb sync`."""
        return os.fspath(self.run_dir / "wandb") if self.tracker.mode == "offline" else None


LAYER_COLUMNS = ["step", "layer", "grad_norm", "update_ratio", "clip_fraction"]


def one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def failure(e: Exception, conf: dict) -> str:
    """A run's error in one line; running out of memory says with which sizes."""
    if out_of_memory(e):
        return f"out of memory on {resolve_device(conf['device'])} with {sizes(conf)} ({one_line(e)})"
    return one_line(e)


class Stepper:
    """Everything a run does around its optimizer steps: data, lr schedule, layer figures,
    evaluation and the log. The step itself is `stepper.step(stepper.net, stepper.batches(step),
    stepper.parts)` (train_step, or the study's mistaken step), or, for a member of a vectorized
    group, its batched equivalent."""

    def __init__(self, conf: dict, run: Run, session: Session, world: distributed.World = distributed.SOLO):
        device, task, model, clip, optimizer, guard = run
        self.conf, self.run, self.world = conf, run, world
        self.net = distributed.wrap(model, world.size)  # what trains; `model` is measured and evaluated
        self.steps, self.k = conf["steps"], conf["accum_steps"]
        self.stream = task.batches(conf["batch_size"] * self.k, conf["seed"])
        self.eval_set = task.eval_batches()
        self.objective = loss_fn(task.spec)
        self.autocast = (
            nullcontext
            if conf["precision"] == "fp32"  # a disabled autocast still costs per call
            else partial(torch.autocast, device.type, dtype=devices.DTYPES[conf["precision"]])
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=conf["precision"] == "fp16")
        self.scheduler = (
            None
            if constant_lr(conf["optim"])  # no per-step call where nothing is scheduled
            else torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(conf["optim"], self.steps))
        )
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.probe = (
            Smoothness(conf["smoothness_every"], model, self.objective, self.eval_set, self.autocast)
            if conf["smoothness_every"]
            else None
        )
        self.per_layer_fired = torch.zeros(len(names), device=device) if hasattr(clip, "last_fired") else None
        self.parts = StepParts(
            self.objective,
            optimizer,
            clip,
            self.scaler,
            self.autocast,
            norm_type(conf["norm_type"]),
            self.probe,
            guard,
        )
        self.step = mistaken_step(conf["mistake"]) if conf["mistake"] else train_step
        self.log = _Log(conf, names, session, samples_per_step=conf["batch_size"] * self.k)
        self.target = stop_rule(conf["stop_at_target"])
        model.train()

    def batches(self, step: int) -> list:
        """This step's micro-batches (this rank's share of them)."""
        x, y = next(self.stream)
        self.lr = self.run.optimizer.param_groups[0]["lr"]
        at_layers = self.conf["layer_norms_every"] and step % self.conf["layer_norms_every"] == 0
        self.before = (
            [w.detach().clone() for w in self.run.model.parameters() if w.requires_grad]
            if at_layers
            else None
        )
        k = self.k
        return distributed.shard([(x, y)] if k == 1 else list(zip(x.chunk(k), y.chunk(k))), self.world)

    def record(self, step: int, out) -> dict | None:
        """After the optimizer step: schedule, metrics, log. The run's result once it has ended, else None."""
        model, clip = self.run.model, self.run.clip
        if self.scheduler:
            self.scheduler.step()
        if self.per_layer_fired is not None:  # a step skipped as a spike was not clipped
            self.per_layer_fired += clip.last_fired * (1 - out.figures["spike_skipped"])
        layers_now = (
            layer_figures(
                [w.detach() for w in model.parameters() if w.requires_grad],
                self.before,
                out.layer_norms,
                self.per_layer_fired,
                step,
            )
            if self.before is not None
            else None
        )
        at_eval = step == self.steps or (self.conf["eval_every"] and step % self.conf["eval_every"] == 0)
        metrics = evaluate(model, self.eval_set, self.run.task.spec, self.autocast) if at_eval else None
        self.log.add(step, out.figures, self.lr, layers_now, metrics)
        checks_target = at_eval and self.target is not None  # reads the evaluation now: one more sync
        if step % self.conf["log_every"] == 0 or step == self.steps or checks_target:
            diverged_at = self.log.flush()  # the one host-device sync of the interval
            if diverged_at:
                return {"status": "diverged", "diverged_step": diverged_at}
        if checks_target and reached(self.log.history[-1], *self.target):
            return {"status": "completed", "target_step": step}
        return {"status": "completed"} if step == self.steps else None


def reached(row: dict, metric: str, value: float) -> bool:
    """Has this history row's evaluation reached the stop_at_target value?"""
    return row[metric] >= value if metric == "eval_acc" else row[metric] <= value


def layer_figures(after, before, grad_norms, fired, step: int, stacked: bool = False) -> torch.Tensor:
    """Per parameter tensor (rows: LAYER_COLUMNS[2:]): pre-clip gradient norm, update-to-weight
    norm ratio of this step (`before` and `after` it, the trainable weights), and the share of steps
    so far that clipped it (nan unless the clip mode works per layer). Stays on the device.
    `stacked` members (a first axis): one such (3, L) block per member."""
    moved = tensor_norms(torch._foreach_sub(after, before), 2.0, stacked)
    ratio = moved / tensor_norms(before, 2.0, stacked).clamp(min=1e-12)
    share = fired / step if fired is not None else torch.full_like(ratio, float("nan"))
    return torch.stack([grad_norms.float(), ratio.float(), share.float()], dim=-2)


class _Log:
    """Device metrics of the steps since the last flush; the host reads them all at once."""

    def __init__(self, conf, names, session: Session, samples_per_step):
        self.names, self.history, self.layers = names, session.history, session.layers
        self.progress, self.tracker = session.progress, session.tracker
        self.samples_per_step = samples_per_step
        self.grads_may_overflow = conf["precision"] == "fp16"  # the scaler skips those steps
        self.pending, self.clipped, self.start = [], 0.0, time.perf_counter()
        self.last = self.start

    def add(self, step, figures: dict, lr, layer_norms, metrics) -> None:
        self.pending.append((step, figures, lr, layer_norms, metrics))

    def flush(self, values: list | None = None) -> int | None:
        """Move pending metrics into the history and the tracker; return the first non-finite step,
        if any. `values`: the pending steps' figures already read on the host (a group's member)."""
        rows, layers = len(self.history), len(self.layers)
        diverged_at = self._read(values or to_host([measured for _, measured, *_ in self.pending]))
        self.tracker.log(self.history[rows:], self.layers[layers:])
        return diverged_at

    def _read(self, values: list) -> int | None:
        now = time.perf_counter()
        rate = len(self.pending) / max(now - self.last, 1e-9)
        self.last = now
        for (step, _, lr, layer_figures, metrics), row_values in zip(self.pending, values):
            row = {**read(row_values, self.grads_may_overflow), "step": step, "lr": lr}
            self.clipped += row["clipped"]
            row.update(
                clip_fraction=self.clipped / step,
                time_s=now - self.start,
                steps_per_s=rate,
                samples_per_s=rate * self.samples_per_step,
            )
            if metrics is not None:
                row.update(eval_loss=metrics[0].item(), eval_acc=metrics[1].item())
            if layer_figures is not None:
                self.layers += [(step, n, *v) for n, v in zip(self.names, layer_figures.T.tolist())]
            self.history.append(row)
            if not math.isfinite(row["loss"]) or not (
                math.isfinite(row["grad_norm"]) or self.grads_may_overflow
            ):
                self.pending = []
                return step
        self.pending = []
        self.progress.update(step, row, row["clip_fraction"], rate)
        return None


def versions() -> dict:
    return {"gradlab": gradlab.__version__, "torch": torch.__version__, "python": platform.python_version()}
