"""gradlab's clip modes inside `lightning.Trainer.fit`, measured, logged and recorded as a gradlab run.

    clipping = GradlabClipping("zclip", z=2.5, results_root="results")
    trainer = lightning.Trainer(max_steps=1000, callbacks=[clipping])
    trainer.fit(model, train_loader, val_loader)   # then: gradlab compare results/lightning

The callback clips in `on_before_optimizer_step`, where Lightning has the complete gradients
(all accumulated micro-batches; unscaled under AMP), those of the optimizer's parameters: what
Lightning's own clipping would clip a moment later, so that one must be off (a Trainer with
`gradient_clip_val` set is refused at setup). Norms stay on the device; the host reads them
every `log_every` steps.

With `results_root` set, the end of fit (or an exception in it, once training started) writes a
run record (gradlab.records) for `gradlab compare` and `gradlab plot`, from rank 0. Its config.yaml
holds what the Trainer tells (model and optimizer class, clip mode and knobs, lr, steps, ...);
its id, `<model>-<task>-<clip label>-s<seed>-<hash of that config>`, is stable across re-runs.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import lightning
import torch

from gradlab import devices, figures, records
from gradlab.clip import Clipper, config, make, measure
from gradlab.config import clip_label, identity
from gradlab.config import norm_type as check_norm_type
from gradlab.errors import bad
from gradlab.loop import one_line
from gradlab.session import versions
from gradlab.step import read, to_host

EVAL = {"val_loss": "eval_loss", "val_acc": "eval_acc"}  # trainer.callback_metrics key -> history column


class GradlabClipping(lightning.Callback):
    """Clip the gradients with a gradlab clip mode inside Trainer.fit; log and record their norms.

    Args:
        clip: a clip mode (none, value, norm, norm_per_layer, autoclip, agc, zclip) or a ready
            gradlab.clip.Clipper (e.g. a gradlab.clip.chain).
        norm_type: p of the measured norms, 1, 2, ... or inf (a mode name only: a Clipper has its own).
        results_root: write a run record under <results_root>/<name>/<run id>/; None = no record.
        name: the sweep folder of the record.
        task: the task's name in the record (compare ranks runs within a task).
        seed: the record's seed; None = the one lightning.seed_everything was given, if any.
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
        name="lightning",
        task="lightning",
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
        )  # a mode is built in setup (agc needs the model)
        self.restored = None  # clip state loaded before setup built the clipper
        self.config = self.run_dir = self.summary = (
            None  # the record's config; where it went and what it says
        )

    def setup(self, trainer, pl_module, stage) -> None:
        if stage != "fit":
            return
        self.config = None  # until training starts: no record of a run that never trained
        if trainer.gradient_clip_val:
            raise bad(
                "gradient_clip_val",
                trainer.gradient_clip_val,
                "the Trainer would clip the gradients again "
                "after GradlabClipping; leave it unset and give the threshold to the callback",
            )
        if self.clipper is None:
            self.clipper = make(self.clip, norm_type=self.norm_type, model=pl_module, **self.knobs)
        if self.restored is not None:
            self.clipper.load_state_dict(self.restored)

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        seed = self.seed if self.seed is not None else os.environ.get("PL_GLOBAL_SEED")
        self.config = {
            "model": {"name": type(pl_module).__name__.lower()},
            "task": {"name": self.task},
            "clip": self._clip_config(),
            "optim": {"name": type(optimizer).__name__.lower()},
            "seed": None if seed is None else int(seed),
            "norm_type": self.clipper.norm_type,
            "lr": optimizer.param_groups[0]["lr"],
            "steps": trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches,
            "accum_steps": trainer.accumulate_grad_batches,
            "precision": str(trainer.precision),
        }
        digest = identity(self.config)
        display = f"{self.config['model']['name']}-{self.task}-{clip_label(self.config)}" + (
            f"-s{seed}" if seed is not None else ""
        )
        self.head = {
            "run_id": f"{display}-{digest}",
            "name": display,
            "sweep": self.name,
            "config_hash": digest,
            "seed": self.config["seed"],
            "device": devices.name(pl_module.device),
            "fp32_precision": devices.fp32_precision(),
            "execution": "eager",
            "processes": trainer.world_size,
            "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.fp16 = str(trainer.precision) == "16-mixed"  # its scaler skips steps with inf/nan gradients
        self.names = {id(p): n for n, p in pl_module.named_parameters()}
        self.history, self.layers, self.evals = [], [], {}
        self.pending, self.pending_layers, self.step_now, self.loss = [], [], None, None
        self.fired_steps, self.clipped = torch.zeros((), device=pl_module.device), 0.0
        self.start = self.last = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        params, layer_norms, norm = measure(params, self.clipper.norm_type)
        norm_after, fired = self.clipper.strategy(params, norm)
        step, seen = trainer.global_step + 1, len(self.history) + len(self.pending) + 1
        self.fired_steps += fired
        self.step_now = (
            step,
            {"grad_norm": norm.float(), "grad_norm_clipped": norm_after.float(), "clipped": fired.float()},
            optimizer.param_groups[0]["lr"],
        )
        log = partial(pl_module.log, on_step=True, on_epoch=False, logger=bool(trainer.loggers))
        log("grad/norm", norm)
        log("grad/norm_clipped", norm_after)
        log("clip/fired", fired.float())
        log("clip/fraction", self.fired_steps / seen)
        if self.layer_norms_every and step % self.layer_norms_every == 0:
            names = [self.names[id(p)] for p in params]
            self.pending_layers.append((step, names, layer_norms.float()))
            for name, value in zip(names, layer_norms):
                log(f"grad_norm/{name}", value)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(
            loss, torch.Tensor
        ):  # Lightning's loss / accumulate_grad_batches: the k of a step add up
            self.loss = loss.detach().float() + (0 if self.loss is None else self.loss)
        if self.step_now is None:  # a micro-batch that did not end a step
            return
        step, measured, lr = self.step_now
        loss = self.loss if self.loss is not None else measured["grad_norm"].new_tensor(math.nan)
        self.pending.append((step, {"loss": loss.reshape(()), **measured}, lr))
        self.step_now = self.loss = None
        if len(self.pending) >= self.log_every:
            self._flush()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # belongs to the step just taken
            metrics = trainer.callback_metrics
            self.evals[trainer.global_step] = {
                column: float(metrics[key]) for key, column in EVAL.items() if key in metrics
            }

    def on_fit_end(self, trainer, pl_module) -> None:
        self._end(trainer, "completed")

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._end(
            trainer,
            "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed",
            error=one_line(exception),
        )

    def state_dict(self) -> dict:
        """The clip mode's state (the adaptive modes' norm history), saved in Lightning's checkpoints."""
        return {"clip": self.clipper.state_dict() if self.clipper else self.restored or {}}

    def load_state_dict(self, state: dict) -> None:
        if self.clipper is None:
            self.restored = state["clip"]  # for setup, which builds the clipper
        else:
            self.clipper.load_state_dict(state["clip"])

    def _clip_config(self) -> dict:
        """The record's clip config: gradlab's config of the mode with the knobs given (a Clipper: its
        class)."""
        if isinstance(self.clip, Clipper):
            return {"mode": type(self.clip.strategy).__name__.lower()}
        return config(self.clip, **self.knobs)

    def _flush(self) -> None:
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

    def _end(self, trainer, status: str, **result) -> None:
        """The history complete and the summary made; with results_root, the run record written
        as gradlab writes one: in a hidden folder, under the run's lock, moved into place."""
        if self.config is None:  # the run ended before training started
            return
        import pandas as pd

        self._flush()
        for row in self.history:
            row.update(self.evals.get(row["step"], {}))
        # a non-finite norm (outside fp16, whose scaler skips such steps): diverged, though Lightning went on
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
        if self.results_root is None or not trainer.is_global_zero:
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
