"""gradlab's clip modes inside a Hugging Face `transformers.Trainer`, measured, logged and recorded.

    args = TrainingArguments(..., max_grad_norm=0)      # the Trainer's own clipping off
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=held_out)
    GradlabClipping("zclip", z=2.5, results_root="results").add_to(trainer)
    trainer.train()                                     # then: gradlab compare results/transformers

The callback clips at `on_pre_optimizer_step`, where the Trainer has the complete gradients (all
accumulated micro-batches; under fp16 unscaled by accelerate's `clip_grad_norm_`, with which the
Trainer measures the `grad_norm` it logs): what the Trainer's own clipping (`max_grad_norm`) would
have clipped a moment before, so that one must be off (a Trainer with `max_grad_norm > 0` is
refused when training begins). Norms stay on the device; the host reads them when the Trainer
logs, or every `log_every` steps.

Each of the Trainer's logs gets gradlab's figures of the steps since the last (as gradlab's own
runs log them to W&B: `grad/norm`, `grad/norm_clipped`, `grad/norm_max`, `clip/fraction`,
`clip/fraction_interval`, `train/loss`, ..., and per-parameter norms `layers/<name>` when due), so
W&B, TensorBoard and every other `report_to` get them. `add_to(trainer)` puts the callback ahead
of the Trainer's reporting callbacks; one given in `Trainer(callbacks=[...])` comes after them,
too late to add to what they report (it still clips and records).

A step's loss is what the model returned for its micro-batches, put together as the Trainer puts
them together (a forward hook; the Trainer tells callbacks none). The adaptive modes' state goes
into each checkpoint (`gradlab_clip.pt` in the checkpoint's folder) and comes back when training
resumes from it. With `results_root` set, the end of training writes a run record
(gradlab.integrations.recorder) from the main process; a `train()` that raises leaves none (the
Trainer tells callbacks of no exception).

In a plain accelerate loop, the same clip modes are one object, applied where the gradients are
complete:

    clipper = gradlab.clip.make("zclip", z=2.5)
    for batch in loader:
        with accelerator.accumulate(model):
            accelerator.backward(model(**batch).loss)
            if accelerator.sync_gradients:
                accelerator.unscale_gradients()              # fp16: the true gradients
                params, _, norm = gradlab.clip.measure(list(model.parameters()), clipper.norm_type)
                norm_after, fired = clipper.strategy(params, norm)
            optimizer.step()
            optimizer.zero_grad()
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

from gradlab import figures
from gradlab.errors import bad
from gradlab.integrations.recorder import Recorder

STATE_FILE = "gradlab_clip.pt"  # the clip mode's state, in each checkpoint's folder
EVAL = {"eval_loss": "eval_loss", "eval_accuracy": "eval_acc"}  # Trainer metric -> history column


class GradlabClipping(Recorder, TrainerCallback):
    """Clip the gradients with a gradlab clip mode inside Trainer.train; log and record their norms.

    Args: as gradlab.integrations.recorder.Recorder (clip, norm_type, results_root, name, task,
    layer_norms_every, log_every, **knobs); `seed` None = the Trainer's (args.seed).
    """

    def __init__(self, clip="norm", *, name="transformers", task="transformers", **settings):
        super().__init__(clip, name=name, task=task, **settings)
        self.logged = 0  # history rows already in a log
        self.hook = None

    def add_to(self, trainer) -> GradlabClipping:
        """Add this callback to `trainer` ahead of its reporting callbacks (W&B, TensorBoard, ...),
        so that the figures it adds to each log reach them."""
        trainer.add_callback(self)
        callbacks = trainer.callback_handler.callbacks
        callbacks.insert(0, callbacks.pop(callbacks.index(self)))
        return self

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.max_grad_norm and args.max_grad_norm > 0:
            raise bad(
                "max_grad_norm",
                args.max_grad_norm,
                "the Trainer would clip the gradients before GradlabClipping; set "
                "TrainingArguments(max_grad_norm=0) and give the threshold to the callback",
            )
        self.build(model)
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        if state.global_step and saved.exists():  # resumed from that checkpoint
            self.load_state_dict(torch.load(saved, weights_only=False))
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        self.begin(
            model,
            self.seed if self.seed is not None else args.seed,
            fp16=args.fp16,
            processes=args.world_size,
            optim=type(inner).__name__.lower(),
            lr=args.learning_rate,
            steps=state.max_steps,
            accum_steps=args.gradient_accumulation_steps,
            precision="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32",
        )
        self.logged, k = 0, args.gradient_accumulation_steps
        if self.hook is None:
            self.hook = model.register_forward_hook(
                lambda module, _, kwargs, out: self._loss(module, kwargs, out, k), with_kwargs=True
            )

    def _loss(self, module, kwargs: dict, output, k: int) -> None:
        """A micro-batch's loss toward its step's: over the step's tokens already when the Trainer
        passed num_items_in_batch, else over the micro-batch's (then a k-th of the step's)."""
        loss = output.get("loss") if hasattr(output, "get") else None
        if module.training and isinstance(loss, torch.Tensor):
            self.add_loss(loss if kwargs.get("num_items_in_batch") is not None else loss / k)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.clip_step(params, state.global_step + 1, optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, **kwargs):
        self.stepped()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.config is None or logs is None:
            return
        self.flush()
        rows = self.history[self.logged :]
        self.logged = len(self.history)
        if rows:
            logs.update({k: v for k, v in figures.interval_point(rows).items() if k != "step"})
        last = max((step for step, *_ in self.layers), default=None)  # the latest per-parameter norms
        if last is not None and rows and last >= rows[0]["step"]:  # taken since the last log
            logs.update({f"layers/{name}": norm for step, name, norm, *_ in self.layers if step == last})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.config is not None and metrics:
            self.evaluated(
                state.global_step, {col: float(metrics[key]) for key, col in EVAL.items() if key in metrics}
            )

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.clipper is not None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                torch.save(self.state_dict(), folder / STATE_FILE)

    def on_train_end(self, args, state, control, **kwargs):
        self.end("completed", lead=state.is_world_process_zero)
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
