"""The loop around the step, once for one run or K runs trained together.

A loop trains a group of K >= 1 members (`Member`: a run's config, built components, record and
data stream). Per step it draws each member's batch, sets each member's lr, has its engine take
the step, keeps the per-layer figures and evaluations, and once per log interval reads every
member's figures from the device in one transfer; a member that diverges, fails, reaches its
target or its last step is recorded and leaves, and the others go on.

The engine is what trains: `Single` (K = 1, the run's own model, gradlab.step.train_step) here,
or `gradlab.vectorized.Stacked` (K members' parameters stacked along a first axis). Both take the
same step (train_step); the features that only a run alone can use are `vectorized.why_alone`.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from gradlab import checkpoint, devices, distributed
from gradlab.clip import tensor_norms
from gradlab.config import norm_type, resolve_device, sizes, stop_rule
from gradlab.diagnostics import Smoothness
from gradlab.errors import out_of_memory
from gradlab.mistakes import mistaken_step
from gradlab.objective import evaluate, loss_fn
from gradlab.optim import lr_factor
from gradlab.step import StepOutput, StepParts, read, to_host, train_step


class Member:
    """One run in a loop: its config, its built components (gradlab.train.Run), its record
    (gradlab.session.Session, or anything with history, layers, progress, tracker, open and close),
    and, once started, its data stream and its log; `summary` once it has ended."""

    def __init__(self, conf: dict, run, session, world: distributed.World = distributed.SOLO):
        self.conf, self.run, self.session, self.world = conf, run, session, world
        self.names = [n for n, p in run.model.named_parameters() if p.requires_grad]
        self.factor = lr_factor(conf["optim"], conf["steps"])
        self.summary = None

    def start(self, taken: int = 0) -> Member:
        """Open the data stream (after the batches of `taken` steps: a run continued from a
        checkpoint) and the log: what can fail (a task's missing file) once the record is."""
        samples = self.conf["batch_size"] * self.conf["accum_steps"]
        self.stream = self.run.task.batches(samples, self.conf["seed"])
        for _ in range(taken):
            next(self.stream)
        self.log = Log(self.conf, self.names, self.session, samples)
        self.run.model.train()
        return self

    def lr(self, step: int) -> float:
        """The lr of optimizer step `step` (from 1): warm-up and schedule (gradlab.optim.lr_factor)."""
        return self.conf["lr"] * self.factor(step - 1)


class Single:
    """The engine of one run: its own model, optimizer and clip mode, and everything only a run
    alone can use (fp16 loss scaling, several processes, compile, a `mistake`, the smoothness
    probe, spike skipping)."""

    stacked = False

    def __init__(self, members: list[Member]):
        (m,) = members
        conf, run = m.conf, m.run
        self.run, self.world, self.k, self.device = run, m.world, conf["accum_steps"], run.device
        self.net = distributed.wrap(run.model, m.world.size)  # what trains; `model` is measured and evaluated
        self.eval_set = run.task.eval_batches()
        self.autocast = devices.autocast(conf["precision"], run.device)
        objective = loss_fn(run.task.spec)
        probe = (
            Smoothness(conf["smoothness_every"], run.model, objective, self.eval_set, self.autocast)
            if conf["smoothness_every"]
            else None
        )
        self.parts = StepParts(
            objective,
            run.optimizer,
            run.clip,
            torch.amp.GradScaler(run.device.type, enabled=conf["precision"] == "fp16"),
            self.autocast,
            norm_type(conf["norm_type"]),
            probe,
            run.spike_guard,
        )
        self.train_step = mistaken_step(conf["mistake"]) if conf["mistake"] else train_step

    def step(self, batches: list, lrs: list) -> StepOutput:
        (x, y), (lr,) = batches[0], lrs
        for group in self.run.optimizer.param_groups:
            group["lr"] = lr
        micro = [(x, y)] if self.k == 1 else list(zip(x.chunk(self.k), y.chunk(self.k)))
        return self.train_step(self.net, distributed.shard(micro, self.world), self.parts)

    def weights(self) -> list:
        return [w.detach() for w in self.run.model.parameters() if w.requires_grad]

    def last_fired(self) -> torch.Tensor:
        """(K, L): which tensors the last step's per-layer clip mode clipped."""
        return self.run.clip.last_fired[None]

    def evaluate(self) -> torch.Tensor:
        """(K, 2): held-out loss and accuracy."""
        return torch.stack(evaluate(self.run.model, self.eval_set, self.run.task.spec, self.autocast), -1)[
            None
        ]

    def keep(self, kept: list) -> None:
        """Only the members `kept` (indices) go on: never called with K = 1, whose member ends the loop."""

    def write_back(self, i: int) -> None:
        """The run's own model is what trained: nothing to copy."""

    def state_dict(self) -> dict:
        """What the next steps depend on, for a checkpoint (gradlab.checkpoint)."""
        run, parts = self.run, self.parts
        cuda = run.device.type == "cuda"
        return {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "clip": run.clip.state_dict() if hasattr(run.clip, "state_dict") else {},
            "spikes": list(parts.spike_guard.history) if parts.spike_guard else [],
            "probe": parts.probe.state_dict() if parts.probe else {},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(run.device) if cuda else torch.empty(0, dtype=torch.uint8),
        }

    def load_state_dict(self, state: dict) -> None:
        run, parts = self.run, self.parts
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        parts.scaler.load_state_dict(state["scaler"])
        if state["clip"]:
            run.clip.load_state_dict(state["clip"])
        if parts.spike_guard:
            parts.spike_guard.history.extend(state["spikes"])
        if parts.probe:
            parts.probe.load_state_dict(state["probe"])
        torch.set_rng_state(state["rng"])
        if run.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], run.device)


# A search's trial judges the runs it trains (gradlab.search.Judge): at each evaluation, given the
# step and the live members' history rows, it says whether to stop them all (status pruned).
JUDGE: ContextVar[Callable | None] = ContextVar("judge", default=None)


@contextmanager
def judged(judge: Callable):
    """The loops made in the block are judged by `judge`."""
    token = JUDGE.set(judge)
    try:
        yield
    finally:
        JUDGE.reset(token)


class Loop:
    """The steps of a group of members under one engine; `step` returns the members that ended
    with it, and their results."""

    def __init__(self, members: list[Member], engine):
        self.members, self.engine = members, engine
        self.conf = conf = members[0].conf
        self.steps, self.target = conf["steps"], stop_rule(conf["stop_at_target"])
        self.judge = JUDGE.get()
        per_layer = [hasattr(m.run.clip, "last_fired") for m in members]
        self.any_per_layer = any(per_layer)
        self.per_layer = torch.tensor(per_layer, device=engine.device)
        self.fired = torch.zeros(len(members), len(members[0].names), device=engine.device)  # clips so far
        self.pending = []

    def step(self, step: int) -> list:
        conf, engine = self.conf, self.engine
        lrs = [m.lr(step) for m in self.members]
        batches = [next(m.stream) for m in self.members]
        at_layers = conf["layer_norms_every"] and step % conf["layer_norms_every"] == 0
        before = [w.clone() for w in engine.weights()] if at_layers else None
        out = engine.step(batches, lrs)
        with torch.no_grad():
            if self.any_per_layer:  # a step skipped as a spike was not clipped
                taken = 1 - out.figures["spike_skipped"].reshape(-1, 1)
                self.fired += engine.last_fired().reshape(len(self.members), -1) * taken
            layers = None
            if before is not None:  # per-layer clip counts: nan for members whose mode is not per layer
                fired = torch.where(self.per_layer[:, None], self.fired, math.nan)
                layers = layer_figures(engine.weights(), before, out.layer_norms, fired, step, engine.stacked)
            at_eval = step == self.steps or (conf["eval_every"] and step % conf["eval_every"] == 0)
            metrics = engine.evaluate() if at_eval else None
        self.pending.append((step, out.figures, lrs, layers, metrics))
        if (
            step % conf["log_every"] == 0
            or step == self.steps
            or (at_eval and (self.target is not None or self.judge is not None))
            or checkpoint.due(conf, step)
        ):
            return self._flush(step, at_eval)
        return []

    def state_dict(self, step: int) -> dict:
        """A run alone's state after `step` (its figures read: nothing pending), for a checkpoint."""
        (m,) = self.members
        return {
            "step": step,
            "fired": self.fired,
            "engine": self.engine.state_dict(),
            "log": m.log.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        (m,) = self.members
        self.fired = state["fired"].to(self.fired.device)
        self.engine.load_state_dict(state["engine"])
        m.log.load_state_dict(state["log"])

    def _flush(self, step: int, at_eval: bool) -> list:
        """Read the pending figures of every member at once (the one host-device sync of the
        interval), hand each member its rows; the members that ended, and their results."""
        k = len(self.members)
        values = to_host([p[1] for p in self.pending])
        layers = [None if p[3] is None else p[3].cpu().reshape(k, 3, -1) for p in self.pending]
        metrics = [None if p[4] is None else p[4].cpu() for p in self.pending]
        steps, lrs = [p[0] for p in self.pending], [p[2] for p in self.pending]
        self.pending = []
        ended, kept = [], []
        for i, m in enumerate(self.members):
            rows = [
                (
                    s,
                    {name: v[i] for name, v in values[t].items()},
                    lrs[t][i],
                    None if layers[t] is None else layers[t][i],
                    None if metrics[t] is None else metrics[t][i],
                )
                for t, s in enumerate(steps)
            ]
            try:
                diverged_at = m.log.write(rows)
                result = (
                    {"status": "diverged", "diverged_step": diverged_at}
                    if diverged_at
                    else {"status": "completed", "target_step": step}
                    if at_eval and self.target is not None and reached(m.log.history[-1], *self.target)
                    else {"status": "completed"}
                    if step == self.steps
                    else None
                )
            except Exception as e:  # this member fails; the others go on
                result = failed(e, m.conf)
            if result is None:
                kept.append(i)
            else:
                self.engine.write_back(i)
                ended.append((m, result))
        if (
            at_eval
            and kept
            and self.judge
            and self.judge(step, [self.members[i].log.history[-1] for i in kept])
        ):
            for i in kept:
                self.engine.write_back(i)
                ended.append((self.members[i], {"status": "pruned", "pruned_step": step}))
            kept = []
        if ended and kept:
            self.engine.keep(kept)
            keep = torch.tensor(kept, device=self.fired.device)
            self.fired, self.per_layer = self.fired[keep], self.per_layer[keep]
        self.members = [self.members[i] for i in kept]
        return ended


def train_members(members: list[Member], engine: Callable, execution: Callable = lambda: "eager") -> None:
    """Train the members (each holding its run) together under `engine` (a class: Single, or
    vectorized.Stacked), each one's summary in its `summary`. A member whose record cannot be
    started fails alone; a failure of the shared step fails every member still in it; an
    interruption records them as interrupted and goes on up. `execution`: how the model ran
    (train.compiling), said in each summary."""

    together = len(members)  # a group's wall time is its members' together: reports share it out

    def end(m: Member, result: dict) -> None:
        m.summary = m.session.close({**result, "execution": execution(), "trained_together": together})
        if m.session.lead:  # ended other than interrupted: nothing to continue
            checkpoint.remove(m.conf)

    try:
        for m in members:
            try:
                m.session.open()
                m.start()
            except (
                Exception
            ) as e:  # e.g. a full disk, a missing data file: this member fails, the others go on
                end(m, failed(e, m.conf))
        live = [m for m in members if m.summary is None]
        if live:
            loop = Loop(live, engine(live))
            resumed = checkpoint.load(live[0].conf) if engine is Single else None
            if resumed:
                live[0].start(resumed["step"])
                loop.load_state_dict(resumed)
                live[0].session.summary["resumed_from_step"] = resumed["step"]
            for step in range(resumed["step"] + 1 if resumed else 1, loop.steps + 1):
                for m, result in loop.step(step):
                    end(m, result)
                if not loop.members:
                    break
                if engine is Single and checkpoint.due(loop.conf, step) and loop.members[0].session.lead:
                    checkpoint.save(loop.conf, loop.state_dict(step))
    except Exception as e:  # recorded, not raised: a sweep goes on
        for m in members:
            if m.summary is None:
                end(m, failed(e, m.conf))
    finally:  # interrupted (a member never started has nothing to record)
        for m in members:
            if m.summary is None and m.session.opened:
                m.summary = m.session.close({"execution": execution(), "trained_together": together})


def reached(row: dict, metric: str, value: float) -> bool:
    """Has this history row's evaluation reached the stop_at_target value?"""
    return row[metric] >= value if metric == "eval_acc" else row[metric] <= value


def layer_figures(after, before, grad_norms, fired, step: int, stacked: bool = False) -> torch.Tensor:
    """Per parameter tensor (rows: figures.LAYER_COLUMNS[2:]): pre-clip gradient norm,
    update-to-weight norm ratio of this step (`before` and `after` it, the trainable weights), and
    the share of steps so far that clipped it (`fired`: clips so far, nan unless the clip mode
    works per layer). Stays on the device. `stacked` members (a first axis): one (3, L) block
    per member."""
    moved = tensor_norms(torch._foreach_sub(after, before), 2.0, stacked)
    ratio = moved / tensor_norms(before, 2.0, stacked).clamp(min=1e-12)
    share = (fired / step).reshape(ratio.shape)
    return torch.stack([grad_norms.float(), ratio.float(), share.float()], dim=-2)


class Log:
    """A member's history rows and W&B points, from the figures its loop read on the host."""

    def __init__(self, conf: dict, names: list, session, samples_per_step: int):
        self.names, self.history, self.layers = names, session.history, session.layers
        self.progress, self.tracker = session.progress, session.tracker
        self.samples_per_step = samples_per_step
        self.grads_may_overflow = conf["precision"] == "fp16"  # the scaler skips those steps
        self.clipped, self.start = 0.0, time.perf_counter()
        self.last = self.start
        self.intervals = []  # (history rows, per-layer rows) after each write: the W&B points made

    def state_dict(self) -> dict:
        return {
            "history": list(self.history),
            "layers": list(self.layers),
            "intervals": list(self.intervals),
            "clipped": self.clipped,
            "time_s": time.perf_counter() - self.start,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's log: its rows (logged to W&B again, interval by interval, as
        they were), its clip count and its clock."""
        self.history[:], self.layers[:] = state["history"], state["layers"]
        self.clipped, self.intervals = state["clipped"], []
        self.start = self.last = time.perf_counter() - state["time_s"]
        rows = layers = 0
        for rows_end, layers_end in state["intervals"]:
            self.tracker.log(self.history[rows:rows_end], self.layers[layers:layers_end])
            self.intervals.append((rows_end, layers_end))
            rows, layers = rows_end, layers_end

    def write(self, steps: list) -> int | None:
        """Add the rows of `steps` (step, figures, lr, layer figures or None, evaluation or None),
        read on the host, to the history and the tracker; the first non-finite step, if any."""
        rows, layers = len(self.history), len(self.layers)
        diverged_at = self._read(steps)
        self.tracker.log(self.history[rows:], self.layers[layers:])
        self.intervals.append((len(self.history), len(self.layers)))
        return diverged_at

    def _read(self, steps: list) -> int | None:
        now = time.perf_counter()
        rate = len(steps) / max(now - self.last, 1e-9)
        self.last = now
        for step, values, lr, layer_figures, metrics in steps:
            row = {**read(values, self.grads_may_overflow), "step": step, "lr": lr}
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
            if (
                not math.isfinite(row["loss"])
                or not (math.isfinite(row["grad_norm"]) or self.grads_may_overflow)
                or (metrics is not None and not math.isfinite(row["eval_loss"]))  # never a null result
            ):
                return step
        self.progress.update(step, row, row["clip_fraction"], rate)
        return None


def one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def failed(e: Exception, conf: dict) -> dict:
    """The result of a run that raised: its error in one line (running out of memory says with which
    sizes), and the whole traceback, for the run's folder."""
    error = (
        f"out of memory on {resolve_device(conf['device'])} with {sizes(conf)} ({one_line(e)})"
        if out_of_memory(e)
        else one_line(e)
    )
    return {"status": "failed", "error": error, "traceback": "".join(traceback.format_exception(e))}
