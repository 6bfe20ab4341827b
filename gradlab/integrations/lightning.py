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
run record (gradlab.integrations.recorder) for `gradlab compare` and `gradlab plot`, from rank 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

import lightning
import torch

from gradlab.errors import bad
from gradlab.integrations.recorder import Recorder
from gradlab.loop import one_line

EVAL = {"val_loss": "eval_loss", "val_acc": "eval_acc"}  # trainer.callback_metrics key -> history column


class GradlabClipping(Recorder, lightning.Callback):
    """Clip the gradients with a gradlab clip mode inside Trainer.fit; log and record their norms.

    Args: as gradlab.integrations.recorder.Recorder (clip, norm_type, results_root, name, task,
    layer_norms_every, log_every, **knobs); `seed` None = the one lightning.seed_everything was
    given, if any.
    """

    def __init__(self, clip="norm", *, name="lightning", task="lightning", **settings):
        super().__init__(clip, name=name, task=task, **settings)

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
        self.build(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        self.begin(
            pl_module,
            self.seed if self.seed is not None else os.environ.get("PL_GLOBAL_SEED"),
            fp16=str(trainer.precision) == "16-mixed",
            processes=trainer.world_size,
            optim=type(optimizer).__name__.lower(),
            lr=optimizer.param_groups[0]["lr"],
            steps=trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches,
            accum_steps=trainer.accumulate_grad_batches,
            precision=str(trainer.precision),
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        shown = self.clip_step(params, trainer.global_step + 1, optimizer.param_groups[0]["lr"])
        log = partial(pl_module.log, on_step=True, on_epoch=False, logger=bool(trainer.loggers))
        for key, value in shown.items():
            log(key, value)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):  # Lightning's loss / accumulate_grad_batches
            self.add_loss(loss)
        self.stepped()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # belongs to the step just taken
            metrics = trainer.callback_metrics
            self.evaluated(
                trainer.global_step,
                {column: float(metrics[key]) for key, column in EVAL.items() if key in metrics},
            )

    def on_fit_end(self, trainer, pl_module) -> None:
        self.end("completed", lead=trainer.is_global_zero)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.end(
            "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed",
            lead=trainer.is_global_zero,
            error=one_line(exception),
        )
