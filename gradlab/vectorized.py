"""engine=vectorized: the runs of a sweep that share a model shape, task and batch, trained
together as one batch of K models.

Each member is built exactly as it would be alone (`build`: its own seeded initialisation,
its own clip mode and knobs, its own optimizer, lr and state, its own data stream) and keeps
its own record and W&B run. A group runs through the same loop (gradlab.loop) and the same
step (gradlab.step.train_step) as a run alone; what differs is the engine, `Stacked`: the
members' parameters are stacked along a leading (member) axis for the life of the group; the
K models run as one batched model (a model's own `forward_stacked`, else torch.func.vmap over
functional_call), and one backward of the sum of the members' losses gives every member the
gradient of its own loss; each parameter's per-member norms are one reduction; each clip mode
clips all its members at once (gradlab.clip.stack: per-member knobs and adaptive state as
tensors); one step of torch's own optimizer (gradlab.optim.StackedOptimizer: one param group per lr)
updates all members; one pass evaluates them all. A member that diverges, fails or reaches its target is
recorded and leaves the group; the others go on. What only a run alone can use is `why_alone`.

Runs differ in seed, clip mode and knobs, and learning rate; anything else that differs
(model, task, batch size, accumulation, steps, precision, optimizer options, ...) puts them in
another group.

engine=auto (the default) trains a group this way only where gradlab bench measured it faster
on this kind of device (gradlab/measured.json); `schedule` says, for every group, which
engine it gets and why.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from typing import NamedTuple

import torch

from gradlab import devices
from gradlab.clip import ClipResult, Slab, select, stack, stacked_knobs
from gradlab.components import label, locate, shipped_targets
from gradlab.config import NOT_IDENTITY, check_writable, clip_knobs, norm_type, run_id, sweep_dir
from gradlab.distributed import SOLO
from gradlab.loop import Member, train_members
from gradlab.objective import evaluate, member_losses
from gradlab.optim import StackedOptimizer, why_not_stacked
from gradlab.session import Session, claim
from gradlab.step import StepOutput, StepParts, train_step
from gradlab.train import build, train

FREE = ("seed", "lr", "clip")  # what may differ within a group (besides the clip knobs)


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
    if conf["skip_spikes"]:
        return "skip_spikes (each run decides on its own steps)"
    if conf["checkpoint_every"]:
        return "checkpoint_every (a checkpoint holds one run)"
    return why_not_stacked(conf["optim"])


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
    return [members[i : i + size] for members in by_key.values() for i in range(0, len(members), size)]


class Part(NamedTuple):
    runs: list  # configs of runs that share an engine
    engine: str  # vectorized (trained together) | sequential (one after another)
    why: str  # the reason, shown by --dry-run


def schedule(confs: list[dict]) -> list[Part]:
    """How a sweep's runs are trained under its `engine`: vectorized puts every compatible group
    together; auto only those where `auto_choice` expects it to be faster, in parts of the size
    it chooses; sequential none."""
    engine, parts = confs[0]["engine"], []
    for group in groups(confs):
        if len(group) == 1:
            parts.append(
                Part(
                    group,
                    "sequential",
                    f"alone ({why_alone(group[0])})" if why_alone(group[0]) else "one run",
                )
            )
            continue
        size, why = {
            "vectorized": (len(group), "engine=vectorized"),
            "sequential": (1, "engine=sequential"),
        }.get(engine) or auto_choice(group)
        if size < 2:
            parts.append(Part(group, "sequential", why))
            continue
        count = -(-len(group) // size)  # the fewest parts of at most `size`, as even as can be
        parts += [Part(group[i::count], "vectorized", why) for i in range(count)]
    return parts


def auto_choice(group: list[dict]) -> tuple[int, str]:
    """engine=auto: how many of the group's runs to train together at most (1: one at a time), and
    why, from what gradlab bench measured on this kind of device (`choose`)."""
    from gradlab.config import resolve_device

    device = resolve_device(group[0]["device"])
    return choose(len(group), group[0]["model"], devices.kind(device), group[0]["steps"])


def choose(runs: int, model_cfg: dict, where: str, steps: int) -> tuple[int, str]:
    """engine=auto on the device `where` ("cpu", or a GPU's name): `runs` of a built-in model, each
    `steps` long, train together only if gradlab bench measured that many or fewer faster
    together there, with runs no longer than these, and in parts no larger than measured faster
    (MEASURED); a device, a model or a run length without figures stays sequential, so the
    default never costs time (a group pays a fixed cost that short runs do not earn back)."""
    figures = measured().get(where)
    if figures is None:
        return 1, f"auto: nothing measured on {where}, so sequential (gradlab bench --only scale measures it)"
    if steps < figures["steps"]:
        return 1, (
            f"auto: runs of {steps} steps, shorter than the {figures['steps']}-step runs measured "
            f"on {where}, so sequential"
        )
    shipped = model_cfg.get("_target_") in shipped_targets()  # a user's class is never measured
    model = (model_cfg.get("cell") or model_cfg.get("name")) if shipped else None
    speedups = {int(n): s for n, s in figures["speedups"].get(model, {}).items()}
    if not speedups:
        return 1, f"auto: model {label('model', model_cfg)} not measured on {where}, so sequential"
    fewest, most = faster_counts(speedups)
    figure = (
        f"auto: {model} on {where}: "
        + ", ".join(f"{n} runs {s:.2f}x" for n, s in sorted(speedups.items()))
        + f" together vs one at a time (gradlab bench, {figures['date']}, torch {figures['torch']})"
    )
    if fewest is None or runs < fewest:
        return 1, figure
    return most, figure + (f": in parts of at most {most}" if runs > most else "")


def faster_counts(speedups: dict[int, float]) -> tuple[int | None, int]:
    """(the fewest runs measured faster together, or None: never; the most runs measured faster
    together without a slower count between them)."""
    counts = sorted(speedups)
    fewest = next((n for n in counts if speedups[n] > 1), None)
    if fewest is None:
        return None, 0
    most = fewest
    for n in counts[counts.index(fewest) + 1 :]:
        if speedups[n] <= 1:
            break
        most = n
    return fewest, most


MEASURED = "measured.json"  # engine=auto's evidence, in this package: device -> what gradlab bench measured


def measured() -> dict:
    """Per device ("cpu", or a GPU's name as torch gives it): when, with which torch and command,
    and the speedup of N runs trained together over one at a time, per built-in model."""
    import json
    from importlib import resources

    return json.loads(resources.files("gradlab").joinpath(MEASURED).read_text())


def describe(group: list[dict]) -> str:
    """What sets a group apart: its model, task, batch and optimizer, or why its run trains alone."""
    first = group[0]
    shape = f"{first['model']['name']} on {first['task']['name']}, batch {first['batch_size']}"
    if len(group) == 1 and why_alone(first):
        return f"{shape}: alone ({why_alone(first)})"
    extra = f", accum_steps {first['accum_steps']}" if first["accum_steps"] > 1 else ""
    return f"{shape}{extra}, {label('optim', first['optim'])}, {first['steps']} steps"


def stacked_forward(base: torch.nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """The outputs of K models of `base`'s shape, `params` stacked (K, ...), inputs x (K, batch, ...)."""
    if hasattr(base, "forward_stacked"):
        return base.forward_stacked(params, x)
    return torch.func.vmap(lambda p, xi: torch.func.functional_call(base, p, (xi,)))(params, x)


def clip_key(clip_cfg: dict) -> str:
    """Members with equal keys share one stacked clip strategy: the same mode, equal but for the
    knobs its class stacks (gradlab.clip.stacked_knobs)."""
    import json

    stacked = stacked_knobs(locate("clip", clip_cfg))
    return json.dumps({k: v for k, v in clip_cfg.items() if k not in stacked}, sort_keys=True, default=str)


def train_group(confs: list[dict]) -> list[dict]:
    """Train the runs of one group together (gradlab.loop, under `Stacked`); their summaries, in order."""
    summaries, members = {}, {}
    with ExitStack() as held:  # each member's run is held (records.claimed) until the group ends
        for i, conf in enumerate(confs):
            check_writable(conf)
            done = held.enter_context(claim(conf))
            if done:
                summaries[i] = done
            else:
                run = build(conf)
                members[i] = Member(conf, run, Session(conf, run, SOLO))
        # each clip mode's members in one range of the member axis, by lr (one optimizer param group per lr)
        train_members(
            sorted(members.values(), key=lambda m: (clip_key(m.conf["clip"]), m.conf["lr"])), Stacked
        )
    return [summaries[i] if i in summaries else members[i].summary for i in range(len(confs))]


class GroupClip:
    """The clip strategies of a group's members, as one: each stacked strategy (gradlab.clip.stack)
    clips its range of the member axis, through its Slabs of the group's gradients."""

    def __init__(self, ranges: list, layers: int, device: torch.device):
        self.ranges, self.layers, self.device = (
            ranges,
            layers,
            device,
        )  # ranges: (start, stop, strategy, slabs)

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        results = [strategy(slabs, total_norm[start:stop]) for start, stop, strategy, slabs in self.ranges]
        return ClipResult(*map(torch.cat, zip(*results)))

    @property
    def last_fired(self) -> torch.Tensor:
        """(K, L): which tensors the last step clipped, per member (none, for a mode not per layer)."""
        return torch.cat(
            [
                strategy.last_fired
                if hasattr(strategy, "last_fired")
                else torch.zeros(stop - start, self.layers, dtype=torch.bool, device=self.device)
                for start, stop, strategy, _ in self.ranges
            ]
        )


class Stacked:
    """The engine of K members trained as one: their parameters stacked along a first (member) axis
    for the life of the group, the K models run as one batched model (`stacked_forward`), each
    clip mode once for its members (`GroupClip`), one optimizer step for all with per-member
    lrs (gradlab.optim.StackedOptimizer), one evaluation pass. The step is gradlab.step's
    train_step on these parts. A member that ends is written back to its own model and leaves."""

    stacked = True

    def __init__(self, members: list[Member]):
        first = members[0]
        self.members, self.device = members, first.run.device
        self.k = first.conf["accum_steps"]
        self.base = copy.deepcopy(first.run.model)  # the shape (and buffers) that functional_call fills in
        self.names = first.names
        self.autocast = devices.autocast(first.conf["precision"], self.device)
        self.eval_set, self.spec = first.run.task.eval_batches(), first.run.task.spec
        self._stack(
            [
                torch.stack([dict(m.run.model.named_parameters())[n].detach() for m in members])
                for n in self.names
            ]
        )
        self.optimizer = StackedOptimizer(first.run.optimizer, self.params, [m.conf["lr"] for m in members])
        self.parts = StepParts(
            member_losses(self.spec),
            self.optimizer,
            self.clip,
            torch.amp.GradScaler(self.device.type, enabled=False),  # fp16 trains alone
            self.autocast,
            norm_type(first.conf["norm_type"]),
            stacked=True,
        )

    def _stack(self, weights: list, keep: torch.Tensor | None = None) -> None:
        """Make `weights` (stacked, one per parameter) the group's parameters, with gradients that
        live as long (zeroed after each step, so the clip strategies' Slabs stay valid), and the
        group's clip. `keep`: the members (old indices) that stay, of a group that had more; their
        optimizer and clip state."""
        self.params = [w.detach().clone().requires_grad_() for w in weights]
        for p in self.params:
            p.grad = torch.zeros_like(p)
        if keep is not None:
            self.optimizer.select(keep.to(self.device), self.params)
        was = {key: (start, strategy) for key, (start, _, strategy, _) in getattr(self, "keyed", [])}
        keys = [clip_key(m.conf["clip"]) for m in self.members]
        self.keyed, start = [], 0
        for key in dict.fromkeys(keys):
            stop = start + keys.count(key)
            slabs = [
                Slab(n, p.detach()[start:stop], p.grad[start:stop]) for n, p in zip(self.names, self.params)
            ]
            if keep is None:
                strategy = stack([m.run.clip for m in self.members[start:stop]], self.device)
            else:  # the members of this key that stay, by their place in its old range
                old_start, strategy = was[key]
                strategy = select(strategy, (keep[start:stop] - old_start).to(self.device))
            self.keyed.append((key, (start, stop, strategy, slabs)))
            start = stop
        self.clip = GroupClip([r for _, r in self.keyed], len(self.names), self.device)
        if keep is not None:
            self.parts = self.parts._replace(clip=self.clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The members' outputs on their inputs x (K, batch, ...)."""
        return stacked_forward(self.base, dict(zip(self.names, self.params)), x)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """The members' outputs on one batch x, the same for all (the held-out set)."""
        return self.forward(x.expand(len(self.members), *x.shape))

    def step(self, batches: list, lrs: list) -> StepOutput:
        x, y = map(torch.stack, zip(*batches))
        self.optimizer.lrs = lrs
        return train_step(self.forward, list(zip(x.chunk(self.k, dim=1), y.chunk(self.k, dim=1))), self.parts)

    def weights(self) -> list:
        return [p.detach() for p in self.params]

    def last_fired(self) -> torch.Tensor:
        return self.clip.last_fired

    def evaluate(self) -> torch.Tensor:
        """(K, 2): each member's held-out loss and accuracy, in one pass."""
        return torch.stack(evaluate(self.base, self.eval_set, self.spec, self.autocast, self.forward_all), -1)

    def keep(self, kept: list) -> None:
        """Only the members `kept` (indices) go on: their parameters, optimizer and clip state."""
        keep = torch.tensor(kept)
        self.members = [self.members[i] for i in kept]
        self._stack([p.detach()[keep.to(self.device)] for p in self.params], keep)

    def write_back(self, i: int) -> None:
        """Member i's weights into its own model (what its record saves, with save_model)."""
        with torch.no_grad():
            own = dict(self.members[i].run.model.named_parameters())
            for n, p in zip(self.names, self.params):
                own[n].copy_(p[i])


def member_bytes(conf: dict) -> int:
    """Memory one member takes in the shared passes: the larger of the activations autograd saves
    for one of its training micro-batches and for one held-out batch (at least what the no-grad
    evaluation keeps alive, K x up to 1000 samples with every state of a recurrence), measured
    on one-member passes, plus its parameters, their gradients, two optimizer states and the
    stacked copy (5x the parameters)."""
    from gradlab.objective import loss_fn

    run = build(conf)
    params = {n: p.detach()[None].requires_grad_() for n, p in run.model.named_parameters()}
    loss = torch.func.vmap(loss_fn(run.task.spec))

    def saved(x, y) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss(stacked_forward(run.model, params, x[None]), y[None])
        return total

    train_batch = next(run.task.batches(conf["batch_size"], conf["seed"]))
    held_out = run.task.eval_batches()[0]
    return max(saved(*train_batch), saved(*held_out)) + 5 * sum(
        p.numel() * p.element_size() for p in params.values()
    )


def fitting(group: list[dict]) -> int:
    """How many of the group's runs fit in memory together (half of what is free, to be safe)."""
    from gradlab.config import resolve_device

    need = member_bytes(group[0])
    return max(
        1, min(len(group), devices.free_memory(resolve_device(group[0]["device"])) // 2 // max(need, 1))
    )


def run_groups(confs: list[dict]) -> list[dict]:
    """Train a sweep's runs in this process (launcher=basic, or a search's trial) as `schedule`
    says, a group too large for memory in parts; their summaries, in the order they were trained."""
    from gradlab.progress import SweepProgress, progress_mode

    talk = progress_mode(confs[0]["progress"]) != "none"
    parts = []
    for part in schedule(confs):
        group = part.runs
        if part.engine == "sequential":
            parts += [[conf] for conf in group]
            continue
        size = fitting(group)
        if size < len(group) and talk:
            print(
                f"[vectorized] {len(group)} runs ({describe(group)}) do not fit in memory together "
                f"(about {member_bytes(group[0]) / 2**20:.0f} MiB each); training them {size} at a time",
                flush=True,
            )
        parts += [group[i : i + size] for i in range(0, len(group), size)]
    progress = SweepProgress(sum(map(len, parts)), confs[0]["progress"])
    summaries = []
    for group in parts:
        if talk and len(group) > 1:
            print(f"[vectorized] {len(group)} run(s) together: {describe(group)}", flush=True)
        if progress_mode(group[0]["progress"]) == "bar":  # one live bar at a time: members print lines
            group = [{**conf, "progress": "lines"} for conf in group]
        summaries += [train(group[0])] if len(group) == 1 else train_group(group)
        progress.ended(summaries[-len(group) :])
        if any(s["status"] == "pruned" for s in summaries[-len(group) :]):
            break  # a search's pruner stopped its trial: the trial's other runs are not trained
    return summaries
