"""What gradlab's callbacks for other trainers share (gradlab.integrations.lightning, .transformers):
the clip mode applied where the trainer has the complete gradients, the norms measured, and the
run record those trainers' runs leave for `gradlab compare` and `gradlab plot`.

A callback calls, in order: `build` (the clipper, once the model exists), `begin` (the record's
config and head, when training starts), `clip` at each optimizer step (before the trainer's
optimizer steps), `stepped` once the step's loss is known, `evaluated` after an evaluation, and
`end` (completed, failed or interrupted). Norms stay on the device; the host reads them every
`log_every` steps (`flush`).

With `results_root` set, `end` writes a run record (gradlab.records): config.yaml holds what the
trainer tells (model and optimizer class, clip mode and knobs, lr, steps, ...); its id,
`<model>-<task>-<clip label>-s<seed>-<hash of that config>`, is stable across re-runs.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from gradlab import devices, figures, records
from gradlab.clip import Clipper, config, make, measure
from gradlab.config import clip_label, identity
from gradlab.config import norm_type as check_norm_type
from gradlab.errors import bad
from gradlab.session import versions
from gradlab.step import read, to_host


class Recorder:
    """One run of another trainer under a gradlab clip mode: its clipper, history and record.

    Args:
        clip: a clip mode (none, value, norm, norm_per_layer, autoclip, agc, zclip) or a ready
            gradlab.clip.Clipper (e.g. a gradlab.clip.chain).
        norm_type: p of the measured norms, 1, 2, ... or inf (a mode name only: a Clipper has its own).
        results_root: write a run record under <results_root>/<name>/<run id>/; None = no record.
        name: the sweep folder of the record.
        task: the task's name in the record (compare ranks runs within a task).
        seed: the record's seed; None = none recorded.
        layer_norms_every: steps between per-parameter norms (logged and recorded); 0 = off.
        log_every: steps between host reads of the recorded norms (one sync each), >= 1.
        **knobs: the mode's knobs, as gradlab.clip.make takes them (max_norm=1.0, z=2.5).
    """

    def __init__(
        self,
        clip="norm",
        *,
        norm_type=2.0,
        results_root=None,
        name="runs",
        task="task",
        seed=None,
        layer_norms_every=50,
        log_every=50,
        **knobs,
    ):
        if isinstance(clip, Clipper) and knobs:
            raise ValueError(f"{', '.join(knobs)}: knobs go to gradlab.clip.make, not beside a ready Clipper")
        for key, value, least in (("layer_norms_every", layer_norms_every, 0), ("log_every", log_every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise bad(key, value, f"must be an integer >= {least}" + (" (0 = off)" if least == 0 else ""))
        self.clip, self.norm_type, self.knobs = clip, check_norm_type(norm_type), knobs
        self.results_root, self.name, self.task, self.seed = results_root, name, task, seed
        self.layer_norms_every, self.log_every = layer_norms_every, log_every
        self.clipper = (
            clip if isinstance(clip, Clipper) else None
        )  # a mode is built by `build` (agc: the model)
        self.restored = None  # clip state loaded before `build`
        self.config = self.run_dir = self.summary = (
            None  # the record's config; where it went and what it says
        )

    def build(self, model: torch.nn.Module) -> None:
        """The clipper, for this model (once), with any state loaded before."""
        if self.clipper is None:
            self.clipper = make(self.clip, norm_type=self.norm_type, model=model, **self.knobs)
        if self.restored is not None:
            self.clipper.load_state_dict(self.restored)
            self.restored = None

    def begin(self, model: torch.nn.Module, seed, *, fp16: bool, processes: int, **told) -> None:
        """Training starts: the record's config (`told`: optim, lr, steps, accum_steps, precision)."""
        self.config = {
            "model": {"name": type(model).__name__.lower()},
            "task": {"name": self.task},
            "clip": self._clip_config(),
            "optim": {"name": told.pop("optim")},
            "seed": None if seed is None else int(seed),
            "norm_type": self.clipper.norm_type,
            **told,
        }
        digest = identity(self.config)
        display = f"{self.config['model']['name']}-{self.task}-{clip_label(self.config)}" + (
            f"-s{seed}" if seed is not None else ""
        )
        device = next(model.parameters()).device
        self.head = {
            "run_id": f"{display}-{digest}",
            "name": display,
            "sweep": self.name,
            "config_hash": digest,
            "seed": self.config["seed"],
            "device": devices.name(device),
            "fp32_precision": devices.fp32_precision(),
            "execution": "eager",
            "processes": processes,
            "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.fp16 = fp16  # its scaler skips steps with inf/nan gradients
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.history, self.layers, self.evals = [], [], {}
        self.pending, self.pending_layers, self.step_now, self.loss = [], [], None, None
        self.fired_steps, self.clipped = torch.zeros((), device=device), 0.0
        self.start = self.last = time.perf_counter()

    def clip_step(self, params: list, step: int, lr: float) -> dict:
        """Clip the complete gradients of optimizer step `step` (from 1); its figures, on the device:
        grad/norm, grad/norm_clipped, clip/fired, clip/fraction, and grad_norm/<parameter> when due."""
        params, layer_norms, norm = measure(params, self.clipper.norm_type)
        norm_after, fired = self.clipper.strategy(params, norm)
        self.fired_steps += fired
        seen = len(self.history) + len(self.pending) + 1
        self.step_now = (
            step,
            {"grad_norm": norm.float(), "grad_norm_clipped": norm_after.float(), "clipped": fired.float()},
            lr,
        )
        shown = {
            "grad/norm": norm,
            "grad/norm_clipped": norm_after,
            "clip/fired": fired.float(),
            "clip/fraction": self.fired_steps / seen,
        }
        if self.layer_norms_every and step % self.layer_norms_every == 0:
            names = [self.names[id(p)] for p in params]
            self.pending_layers.append((step, names, layer_norms.float()))
            shown.update({f"grad_norm/{name}": value for name, value in zip(names, layer_norms)})
        return shown

    def add_loss(self, loss: torch.Tensor) -> None:
        """A micro-batch's loss, as the trainer scaled it (loss / k under accumulation): the k of a
        step add up."""
        self.loss = loss.detach().float() + (0 if self.loss is None else self.loss)

    def stepped(self) -> None:
        """The optimizer step taken: its row is pending, the host reads every log_every steps."""
        if self.step_now is None:  # a micro-batch that did not end a step
            return
        step, measured, lr = self.step_now
        loss = self.loss if self.loss is not None else measured["grad_norm"].new_tensor(math.nan)
        self.pending.append((step, {"loss": loss.reshape(()), **measured}, lr))
        self.step_now = self.loss = None
        if len(self.pending) >= self.log_every:
            self.flush()

    def evaluated(self, step: int, metrics: dict) -> None:
        """An evaluation after optimizer step `step`: history column -> value (eval_loss, eval_acc)."""
        self.evals[step] = metrics

    def state_dict(self) -> dict:
        """The clip mode's state (the adaptive modes' norm history), for the trainer's checkpoints."""
        return {"clip": self.clipper.state_dict() if self.clipper else self.restored or {}}

    def load_state_dict(self, state: dict) -> None:
        if self.clipper is None:
            self.restored = state["clip"]  # for `build`
        else:
            self.clipper.load_state_dict(state["clip"])

    def _clip_config(self) -> dict:
        """The record's clip config: gradlab's config of the mode with the knobs given (a Clipper: its
        class)."""
        if isinstance(self.clip, Clipper):
            return {"mode": type(self.clip.strategy).__name__.lower()}
        return config(self.clip, **self.knobs)

    def flush(self) -> None:
        """The host's one read of what was recorded since the last: history and layer rows."""
        if not self.pending and not self.pending_layers:
            return
        values = to_host([measured for _, measured, _ in self.pending]) if self.pending else []
        layers = [n for _, _, n in self.pending_layers]
        norms = torch.cat(layers).cpu().tolist() if layers else []
        now = time.perf_counter()
        rate = len(self.pending) / max(now - self.last, 1e-9)
        for (step, _, lr), measured in zip(self.pending, values):
            one = {name: v for name, (v,) in measured.items()}
            row = {**read({"spike_skipped": 0.0, **one}, self.fp16), "step": step, "lr": lr}
            self.clipped += row["clipped"]
            row.update(
                clip_fraction=self.clipped / (len(self.history) + 1),
                time_s=now - self.start,
                steps_per_s=rate,
            )
            self.history.append(row)
        at = 0
        for step, names, _ in self.pending_layers:
            layer_norms = norms[at : at + len(names)]
            self.layers += [(step, n, v, math.nan, math.nan) for n, v in zip(names, layer_norms)]
            at += len(names)
        self.pending, self.pending_layers, self.last = [], [], now

    def end(self, status: str, lead: bool = True, **result) -> None:
        """The history complete and the summary made; with results_root and `lead` (rank 0), the run
        record written as gradlab writes one: in a hidden folder, under the run's lock, moved into place."""
        if self.config is None:  # the run ended before training started
            return
        import pandas as pd

        self.flush()
        for row in self.history:
            row.update(self.evals.get(row["step"], {}))
        # a non-finite norm (outside fp16, whose scaler skips such steps): diverged, though training went on
        diverged = next(
            (r["step"] for r in self.history if not (math.isfinite(r["grad_norm"]) or self.fp16)), None
        )
        if status == "completed" and diverged is not None:
            status, result = "diverged", {"diverged_step": diverged}
        self.summary = {
            **self.head,
            "status": status,
            **result,
            **figures.summary(self.history),
            "wall_time_s": round(time.perf_counter() - self.start, 3),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.results_root is None or not lead:
            return
        self.run_dir = Path(self.results_root) / self.name / self.head["run_id"]
        with records.claimed(self.run_dir) as mine:
            if not mine:
                print(
                    f"warning: {self.run_dir} is being made by another process; this run is not recorded",
                    file=sys.stderr,
                )
                return
            attempt = records.Attempt(self.run_dir)
            attempt.begin(self.config)
            attempt.finish(
                self.summary,
                pd.DataFrame(self.history, columns=figures.columns()),
                pd.DataFrame(self.layers, columns=figures.LAYER_COLUMNS) if self.layers else None,
            )
            attempt.close(self.summary, written=True)
