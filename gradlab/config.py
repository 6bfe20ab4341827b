"""Checking a composed configuration and naming the run it describes.

Everything here runs before a run directory exists, so bad input leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path

from gradlab.errors import bad, positive

# keys that change where, how or on how many processes a run is made or shown, not what it computes
# (a data-parallel, vectorized or compiled run computes the same run, up to float rounding:
# tests/test_distributed.py, test_vectorized.py, test_step.py)
NOT_IDENTITY = (
    "name",
    "results_root",
    "progress",
    "force",
    "wandb",
    "logger",
    "workers",
    "devices",
    "save_model",
    "engine",
    "group_size",
    "compile",
    "search",
    "checkpoint_every",
)
ENGINES = ("auto", "sequential", "vectorized")
COMPILE = (False, True, "cudagraphs")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_MAX = 1e30  # larger rates overflow float32 in the optimizers' own arithmetic (Adam: lr / (1 - beta1))
LR_ALLOWED = f"must be a number in (0, {LR_MAX:g}]"
REFERENCE_MARK = ".gradlab-reference"  # a results folder holding committed reference runs
# options whose knobs change nothing while the option is off: switch -> its knobs
SWITCHED = {"skip_spikes": ("spike_metric", "spike_sigma", "spike_window", "spike_min_history")}


def plain(cfg) -> dict:
    """The resolved config as plain Python containers, without Hydra's own node. A component
    config without a name (a user's `model=custom`) is named after its class."""
    from omegaconf import OmegaConf

    from gradlab.components import GROUPS, label

    conf = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    for group in GROUPS:
        conf[group].setdefault("mode" if group == "clip" else "name", label(group, conf[group]))
    return conf


def _positive_int(conf: dict, key: str) -> None:
    value = conf[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad(key, value, "must be an integer >= 1")


def norm_type(value) -> float:
    """1, 2, any other p > 0, or inf (also written 'inf')."""
    allowed = "must be a positive number (1, 2, ...) or inf"
    return positive("norm_type", math.inf if value == "inf" else value, allowed)


def check_knobs(conf: dict) -> None:
    """Top-level knobs; the group-specific ones are checked by the classes they configure."""
    for key in ("steps", "batch_size", "accum_steps", "log_every", "devices"):
        _positive_int(conf, key)
    for key in ("eval_every", "layer_norms_every", "smoothness_every", "checkpoint_every"):
        if isinstance(conf[key], bool) or not isinstance(conf[key], int) or conf[key] < 0:
            raise bad(key, conf[key], "must be an integer >= 0 (0 = off)")
    if positive("lr", conf["lr"], LR_ALLOWED) > LR_MAX:
        raise bad("lr", conf["lr"], LR_ALLOWED)
    for key in ("skip_spikes", "save_model", "force"):
        if not isinstance(conf[key], bool):
            raise bad(key, conf[key], "must be true or false")
    norm_type(conf["norm_type"])
    if conf["precision"] not in PRECISIONS:
        raise bad("precision", conf["precision"], f"choose from {', '.join(PRECISIONS)}")
    if not isinstance(conf["seed"], int) or isinstance(conf["seed"], bool) or not 0 <= conf["seed"] < 2**63:
        raise bad("seed", conf["seed"], f"must be an integer in [0, {2**63 - 1}] (a 64-bit seed)")
    if conf["workers"] != "auto":
        _positive_int(conf, "workers")
    _positive_int(conf, "group_size")
    if conf["compile"] not in COMPILE:
        raise bad("compile", conf["compile"], "choose from false, true, cudagraphs")
    if conf["engine"] not in ENGINES:
        raise bad("engine", conf["engine"], f"choose from {', '.join(ENGINES)}")
    check_mistake(conf)
    if conf["stop_at_target"] is not None and not conf["eval_every"]:
        raise bad(
            "stop_at_target", conf["stop_at_target"], "needs evaluations during the run: set eval_every > 0"
        )
    stop_rule(conf["stop_at_target"])


def stop_rule(text) -> tuple | None:
    """stop_at_target as (metric, value); None when off. eval_loss is reached at or below the
    value, eval_acc at or above it."""
    allowed = "write eval_loss:VALUE or eval_acc:VALUE (a number), or null = run every step"
    if text is None:
        return None
    metric, _, value = str(text).partition(":")
    try:
        number = float(value)
    except ValueError:
        raise bad("stop_at_target", text, allowed) from None
    if metric not in ("eval_loss", "eval_acc") or not math.isfinite(number):
        raise bad("stop_at_target", text, allowed)
    return metric, number


def check_mistake(conf: dict) -> None:
    """A study-only mistake must be one gradlab knows, in a setting where it can happen."""
    from gradlab.mistakes import MISTAKES

    mistake = conf["mistake"]
    if mistake is None:
        return
    if mistake not in MISTAKES:
        raise bad("mistake", mistake, f"choose from {', '.join(MISTAKES)} (or null)")
    if mistake == "clip_scaled" and conf["precision"] != "fp16":
        raise bad("mistake", mistake, "only happens with precision=fp16")
    if mistake != "clip_scaled" and conf["accum_steps"] < 2:
        raise bad("mistake", mistake, "only happens with accum_steps >= 2")


def sizes(conf: dict) -> str:
    """The sizes that decide a run's memory, for an out-of-memory message:
    `model=lstm hidden_size=200000 ... batch_size=64`."""
    from gradlab.components import label

    model = conf["model"]
    knobs = [f"{k}={v}" for k, v in model.items() if isinstance(v, int) and not isinstance(v, bool)]
    return " ".join([f"model={label('model', model)}", *knobs, f"batch_size={conf['batch_size']}"])


def resolve_device(name: str):
    """`auto` -> cuda when available else cpu; `cuda` without a GPU is an error, not a fallback."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "choose from auto, cpu, cuda, cuda:N"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise bad("device", name, allowed) from None
    if device.type not in ("cpu", "cuda"):
        raise bad("device", name, allowed)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise bad("device", name, "CUDA is not available on this machine (use device=cpu or device=auto)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise bad("device", name, f"this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def sweep_dir(conf: dict) -> Path:
    return Path(conf["results_root"]) / str(conf["name"])


def check_writable(conf: dict) -> None:
    """The sweep's folder is inside results_root, can be created and written, and is not a
    committed reference folder."""
    name = Path(str(conf["name"]))
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise bad("name", conf["name"], "must be a folder name inside results_root (relative, without '..')")
    path = sweep_dir(conf)
    for parent in [path, *path.parents]:
        if (parent / REFERENCE_MARK).exists():
            raise bad(
                "name",
                path,
                f"{parent} holds committed reference results; write elsewhere (name=..., results_root=...)",
            )
    existing = next(p for p in [path, *path.parents] if p.exists())
    try:
        if not existing.is_dir():
            raise OSError(f"{existing} is not a directory")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise bad("results_root", conf["results_root"], f"cannot write {path} ({e.strerror or e})") from None


def clip_knobs() -> frozenset:
    """Top-level knobs that clip modes read through their own `clip.<knob>` (max_norm, clip_value, ...)."""
    from gradlab.clip import short_names

    return frozenset(short_names())


def identity(conf: dict) -> str:
    """Short hash of everything that determines a run's numbers.

    A clip knob counts through its copy under `clip`, so a knob the chosen mode ignores
    (max_norm under clip=none) does not make a new run; nor do an option and its knobs while
    the option is off (skip_spikes=false), so adding such an option keeps old runs valid.
    The class of one of gradlab's own options is named by the option, so its `_target_` does
    not count (run ids made before components had one stay valid); a user's class does."""
    from gradlab.components import GROUPS, shipped_targets

    ignored = {*NOT_IDENTITY, *clip_knobs()}
    for switch, knobs in SWITCHED.items():
        if not conf.get(switch):
            ignored |= {switch, *knobs}
    kept = {k: v for k, v in conf.items() if k not in ignored}
    for group in GROUPS:
        if kept[group].get("_target_") in shipped_targets():
            kept[group] = {k: v for k, v in kept[group].items() if k != "_target_"}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]


def clip_label(conf: dict) -> str:
    """`none`, `norm5`, `value0.5`, `autoclip10`, `norm1-p1`: the clip mode and its first knob's value."""
    from gradlab.components import HYDRA_KEYS
    from gradlab.components import label as named

    clip = conf["clip"]
    first = next((v for k, v in clip.items() if k != "mode" and k not in HYDRA_KEYS), None)
    label = named("clip", clip) + (
        f"{first:g}" if isinstance(first, (int, float)) and not isinstance(first, bool) else ""
    )
    p = norm_type(conf["norm_type"])
    return label if p == 2 else f"{label}-p{p:g}"


def display_name(conf: dict) -> str:
    """Readable run name, e.g. `lstm-adding-norm5-s0`."""
    from gradlab.components import label

    return f"{label('model', conf['model'])}-{label('task', conf['task'])}-{clip_label(conf)}-s{conf['seed']}"


def run_id(conf: dict) -> str:
    """Directory name of the run: readable name + identity hash, stable across re-runs."""
    return f"{display_name(conf)}-{identity(conf)}"
