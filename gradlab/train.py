"""`train(cfg)`: one run, from its configuration to a finished record.

Importable and free of Hydra: a config composed any way (Hydra, compose API, a plain
dict) goes in, the run's summary comes out. A diverging run ends as `diverged`, an
exception as `failed`; neither raises, so a sweep always goes on.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from typing import NamedTuple

import torch

import gradlab
from gradlab import devices, distributed, figures, parallel, records
from gradlab.clip import build_clip
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
    sweep_dir,
)
from gradlab.errors import bad, out_of_memory
from gradlab.loop import LAYER_COLUMNS, Member, Single, one_line, train_members
from gradlab.models import build_model
from gradlab.objective import loss_fn
from gradlab.optim import build_optimizer, lr_factor
from gradlab.progress import RunProgress, progress_mode, report_skipped
from gradlab.spikes import SpikeGuard
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
    member = Member(conf, run, Session(conf, run, world), world)
    with compiling(conf["compile"]) as execution:
        try:
            train_members([member], Single, execution)
        finally:  # also on Ctrl-C, which then goes on up: the run is recorded as interrupted
            parallel.exit_if_orphaned()
    return member.summary


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


def versions() -> dict:
    return {"gradlab": gradlab.__version__, "torch": torch.__version__, "python": platform.python_version()}
