"""`train(cfg)`: one run, from its configuration to a finished record.

Importable and free of Hydra: a config composed any way (Hydra, compose API, a plain
dict) goes in, the run's summary comes out. A diverging run ends as `diverged`, an
exception as `failed`; neither raises, so a sweep always goes on.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import NamedTuple

import torch

from gradlab import devices, distributed, parallel
from gradlab.clip import build_clip
from gradlab.components import label
from gradlab.config import check_knobs, check_writable, norm_type, plain, resolve_device, sizes, sweep_dir
from gradlab.errors import bad, out_of_memory, sigterm_interrupts
from gradlab.loop import Member, Single, one_line, train_members
from gradlab.models import build_model
from gradlab.objective import loss_fn
from gradlab.optim import build_optimizer, lr_factor
from gradlab.progress import progress_mode
from gradlab.session import Session, claim
from gradlab.spikes import SpikeGuard
from gradlab.tasks import build_task, loaded
from gradlab.tracking import check_settings


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
    if not any(p.requires_grad for p in model.parameters()):
        raise bad(
            "model", label("model", conf["model"]), "has no trainable parameters: nothing to train or clip"
        )
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
        with sigterm_interrupts():  # in a launcher's worker process too
            return _attempt(conf, build(conf), world)


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
