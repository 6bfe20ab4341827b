"""engine=vectorized: the runs of a sweep that share a model shape, task and batch, trained
together as one batch of K models.

Each member is built exactly as it would be alone (`build`: its own seeded initialisation,
its own clip mode and knobs, its own optimizer, lr and state, its own data stream) and keeps
its own record and W&B run. Only the forward and backward passes are shared: every
micro-batch, the members' parameters are stacked along a leading axis (`torch.stack`, so each
member's gradient flows back into its own parameters), the K models run as one batched model
(torch.func.vmap over functional_call, or a model's own `forward_stacked`), and one backward
of the sum of the members' losses gives every member the gradient of its own loss. Then each
member takes the rest of its step alone (`finish_step`: measure, clip, update), with the same
code as a run trained alone. A member that diverges or fails is recorded and dropped from the
batch; the others go on.

Runs differ in seed, clip mode and knobs, and learning rate; anything else that differs
(model, task, batch size, accumulation, steps, precision, ...) puts them in another group.

engine=auto (the default) trains a group this way only where gradlab bench measured it faster
(MEASURED); `schedule` says, for every group, which engine it gets and why.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from typing import NamedTuple

import torch

from gradlab.config import NOT_IDENTITY, clip_knobs, run_id, sweep_dir
from gradlab.distributed import SOLO

FREE = ("seed", "lr", "clip")  # what may differ within a group (besides the clip knobs)
# engine=auto's evidence: built-in models at their default sizes, on this project's 2-core CPU;
# `scaling` of gradlab bench, median of 3 (README, Speed). (class, cell) -> (fewest runs that
# train faster together, or None: never; the figure)
MEASURED = {
    ("gradlab.models.mlp.MLP", None): (16, "mlp: 16 runs 1.5x faster together; 4-8 runs 0.9-1.4x, not safe"),
    ("gradlab.models.rnn.RecurrentNet", "rnn"): (4, "rnn: 4 and 16 runs 1.5x faster together"),
    ("gradlab.models.rnn.RecurrentNet", "gru"): (4, "gru: 4 and 16 runs 1.3x faster together"),
    ("gradlab.models.rnn.RecurrentNet", "lstm"): (None, "lstm: 16 runs 0.55x together; torch's fused LSTM wins"),
    ("gradlab.models.transformer.Transformer", None): (None, "transformer: 2-8 runs 0.64-0.94x together"),
}


def why_alone(conf: dict) -> str | None:
    """Why this run cannot be a member of a vectorized group, if it cannot."""
    if conf["precision"] == "fp16":
        return "precision=fp16 (one loss scale per run)"
    if conf["mistake"]:
        return f"mistake={conf['mistake']}"
    if conf["model"].get("dropout"):
        return "dropout (each run draws its own masks)"
    if conf["devices"] != 1:
        return "devices > 1"
    if conf["compile"]:
        return "compile=true"
    if conf["smoothness_every"]:
        return "smoothness_every (its estimates run the model alone)"
    return None


def group_key(conf: dict) -> str:
    """Runs with equal keys can be trained together."""
    import json

    ignored = {*NOT_IDENTITY, *FREE, *clip_knobs(), "engine", "group_size"}
    return json.dumps({k: v for k, v in conf.items() if k not in ignored}, sort_keys=True, default=str)


def groups(confs: list[dict]) -> list[list[dict]]:
    """The sweep's runs (each once), in compatible groups of at most `group_size`; runs that cannot
    share a batch are groups of one."""
    unique = list({sweep_dir(c) / run_id(c): c for c in confs}.values())
    by_key: dict[str, list] = {}
    for conf in unique:
        by_key.setdefault(group_key(conf) if not why_alone(conf) else run_id(conf), []).append(conf)
    size = unique[0]["group_size"]
    return [members[i:i + size] for members in by_key.values() for i in range(0, len(members), size)]


class Part(NamedTuple):
    runs: list      # configs of runs that share an engine
    engine: str     # vectorized (trained together) | sequential (one after another)
    why: str        # the reason, shown by --dry-run


def schedule(confs: list[dict]) -> list[Part]:
    """How a sweep's runs are trained under its `engine`: vectorized puts every compatible group
    together; auto only those where `auto_choice` expects it to be faster; sequential none."""
    engine, parts = confs[0]["engine"], []
    for group in groups(confs):
        if len(group) == 1:
            parts.append(Part(group, "sequential", f"alone ({why_alone(group[0])})" if why_alone(group[0]) else "one run"))
        elif engine == "vectorized":
            parts.append(Part(group, "vectorized", "engine=vectorized"))
        else:
            together, why = auto_choice(group) if engine == "auto" else (False, "engine=sequential")
            parts.append(Part(group, "vectorized" if together else "sequential", why))
    return parts


def auto_choice(group: list[dict]) -> tuple[bool, str]:
    """engine=auto: train the group together only where gradlab bench measured it faster (README,
    Speed); anything not measured stays sequential, so the default never costs time."""
    from gradlab.config import resolve_device

    first = group[0]
    device = resolve_device(first["device"])
    measured = MEASURED.get((first["model"].get("_target_"), first["model"].get("cell")))
    if device.type != "cpu" or measured is None:
        where = "a GPU" if device.type != "cpu" else f"model {first['model']['name']}"
        return False, f"auto: not measured on {where}, so sequential"
    least, figure = measured
    if least is None or len(group) < least:
        return False, f"auto: {figure}"
    return True, f"auto: {figure}"


def describe(group: list[dict]) -> str:
    """What sets a group apart: its model, task and batch, or why its run trains alone."""
    first = group[0]
    shape = f"{first['model']['name']} on {first['task']['name']}, batch {first['batch_size']}"
    if len(group) == 1 and why_alone(first):
        return f"{shape}: alone ({why_alone(first)})"
    extra = f", accum_steps {first['accum_steps']}" if first["accum_steps"] > 1 else ""
    return f"{shape}{extra}, {first['steps']} steps"


def stacked_forward(base: torch.nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """The outputs of K models of `base`'s shape, `params` stacked (K, ...), inputs x (K, batch, ...)."""
    if hasattr(base, "forward_stacked"):
        return base.forward_stacked(params, x)
    return torch.func.vmap(lambda p, xi: torch.func.functional_call(base, p, (xi,)))(params, x)


class _Member:
    def __init__(self, index: int, conf: dict):
        from gradlab.optim import build_optimizer
        from gradlab.train import Session, Stepper, build

        self.index, self.conf, self.result = index, conf, None
        run = build(conf)
        # torch's fused kernel for the same update: in a group, the per-member optimizer step is
        # most of what is not shared, and the fused one takes a third of the time on a CPU
        fused = build_optimizer(conf["optim"], run.model.parameters(), conf["lr"], fused=True)
        self.run = run._replace(optimizer=fused)
        self.session = Session(conf, self.run, SOLO)
        self.stepper = Stepper(conf, self.run, self.session)
        self.params = [p for p in self.run.model.parameters() if p.requires_grad]


def train_group(confs: list[dict]) -> list[dict]:
    """Train the runs of one group together; their summaries, in order."""
    from gradlab.config import check_writable
    from gradlab.train import claim

    summaries = {}
    with ExitStack() as held:  # each member's run is held (records.claimed) until the group ends
        members = []
        for i, conf in enumerate(confs):
            check_writable(conf)
            done = held.enter_context(claim(conf))
            if done:
                summaries[i] = done
            else:
                members.append(_Member(i, conf))
        _train_members(members, summaries)
    return [summaries[i] for i in range(len(confs))]


def _train_members(members: list[_Member], summaries: dict) -> None:
    """Train the members (each holding its run) together, putting each one's summary in `summaries`."""
    from gradlab.step import finish_step
    from gradlab.train import failure

    if not members:
        return
    first = members[0]
    base = copy.deepcopy(first.run.model)  # the shape (and buffers) that functional_call fills in
    names = [n for n, p in base.named_parameters() if p.requires_grad]
    steps = first.conf["steps"]
    try:
        for m in members:
            try:
                m.session.open()
            except Exception as e:  # e.g. a full disk: this member fails, the others go on
                m.result = {"status": "failed", "error": failure(e, m.conf)}
                summaries[m.index] = m.session.close(m.result)
        for step in range(1, steps + 1):
            active = [m for m in members if m.result is None]
            if not active:
                break
            losses = _backward(base, names, active, [m.stepper.batches(step) for m in active])
            for m, loss in zip(active, losses):
                try:
                    m.result = m.stepper.record(step, finish_step(loss, m.stepper.parts))
                except Exception as e:  # this member fails; the others go on
                    m.result = {"status": "failed", "error": failure(e, m.conf)}
                if m.result:
                    summaries[m.index] = m.session.close(m.result)
    except Exception as e:  # the shared pass failed: every member still in it fails with it
        for m in members:
            if m.result is None:
                m.result = {"status": "failed", "error": failure(e, m.conf)}
                summaries[m.index] = m.session.close(m.result)
    finally:
        for m in members:
            if m.index not in summaries:  # interrupted
                summaries[m.index] = m.session.close(m.result or {})


def _backward(base, names: list, active: list, batches: list) -> list:
    """One shared forward and backward over the members' micro-batches; each member's loss (detached)."""
    stepper = active[0].stepper
    objective, autocast = stepper.objective, stepper.autocast
    per_member = torch.func.vmap(objective)
    total = sum(len(x) for x, _ in batches[0])
    losses = None
    for i in range(len(batches[0])):
        x = torch.stack([b[i][0] for b in batches])
        y = torch.stack([b[i][1] for b in batches])
        params = {n: torch.stack([m.params[j] for m in active]) for j, n in enumerate(names)}
        with autocast():
            parts = per_member(stacked_forward(base, params, x), y)
            if len(x[0]) != total:  # loss / k, as in train_step
                parts = parts * (len(x[0]) / total)
        parts.sum().backward()
        losses = parts.detach().float() if losses is None else losses + parts.detach().float()
    return list(losses.unbind())


def member_bytes(conf: dict) -> int:
    """Memory one member takes in the shared pass: the activations autograd saves for one of its
    micro-batches (measured on a one-member pass), plus its parameters, their gradients, two
    optimizer states and the stacked copy (5x the parameters)."""
    from gradlab.objective import loss_fn
    from gradlab.train import build

    run = build(conf)
    run.task.load(run.device)
    x, y = next(run.task.batches(conf["batch_size"], conf["seed"]))
    params = {n: p.detach()[None].requires_grad_() for n, p in run.model.named_parameters()}
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.func.vmap(loss_fn(run.task.spec))(stacked_forward(run.model, params, x[None]), y[None])
    return saved + 5 * sum(p.numel() * p.element_size() for p in params.values())


def available(device: torch.device) -> int:
    """Free memory on the device: the GPU's, or the machine's (MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        return int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 1 << 62  # unknown: no limit


def fitting(group: list[dict]) -> int:
    """How many of the group's runs fit in memory together (half of what is free, to be safe)."""
    from gradlab.config import resolve_device

    need = member_bytes(group[0])
    return max(1, min(len(group), available(resolve_device(group[0]["device"])) // 2 // max(need, 1)))


def run_groups(confs: list[dict]) -> None:
    """Train a sweep's runs as `schedule` says; a group too large for memory goes in parts."""
    from gradlab.progress import progress_mode
    from gradlab.train import train

    talk = progress_mode(confs[0]["progress"]) != "none"
    parts = []
    for part in schedule(confs):
        group = part.runs
        if part.engine == "sequential":
            parts += [[conf] for conf in group]
            continue
        size = fitting(group)
        if size < len(group) and talk:
            print(f"[vectorized] {len(group)} runs ({describe(group)}) do not fit in memory together "
                  f"(about {member_bytes(group[0]) / 2**20:.0f} MiB each); training them {size} at a time", flush=True)
        parts += [group[i:i + size] for i in range(0, len(group), size)]
    for group in parts:
        if talk and len(group) > 1:
            print(f"[vectorized] {len(group)} run(s) together: {describe(group)}", flush=True)
        if progress_mode(group[0]["progress"]) == "bar":  # one live bar at a time: members print lines
            group = [{**conf, "progress": "lines"} for conf in group]
        if len(group) == 1:
            train(group[0])
        else:
            train_group(group)
