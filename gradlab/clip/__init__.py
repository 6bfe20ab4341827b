"""Clipping strategies: one small class per `clip=` mode, named by `_target_` in conf/clip/<mode>.yaml.

Every strategy is called once per optimizer step, after the gradients are complete
(all micro-batches, unscaled), with the pre-clip measurement the step already made:

    strategy(params, total_norm) -> ClipResult

`params` are the parameters that have gradients, `total_norm` their total p-norm
(p = norm_type) as a 0-d device tensor. The strategy clips the gradients in place and
returns, as device tensors (no host sync), the total norm after clipping and whether
it fired. `none` clips nothing but is measured all the same.

Strategies are built with their knobs and two context values: `norm_type`, and the
`model` (AGC finds the final layer in it; the others ignore it). Adaptive strategies
(autoclip, zclip) keep their state in tensors behind state_dict() / load_state_dict()
(see TensorState), so a run can be saved and resumed and an engine can carry the
state of each member. `Chain` applies several in turn.

Outside gradlab's own loop, `make` gives any mode as a `Clipper` that measures too:

    clipper = gradlab.clip.make("zclip", z=2.5)
    result = clipper(model.parameters())   # after backward: clips in place; norms on the device

Adding a strategy: one module here, one conf/clip/<mode>.yaml naming it, its tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gradlab import components
from gradlab.errors import ConfigError


class ClipResult(NamedTuple):
    norm_after: torch.Tensor  # total norm of the gradients after clipping (0-d)
    fired: torch.Tensor       # bool 0-d: did clipping change any gradient


def unchanged(total_norm: torch.Tensor) -> ClipResult:
    """The result of a call that left every gradient as it was."""
    return ClipResult(total_norm, torch.zeros((), dtype=torch.bool, device=total_norm.device))


class TensorState:
    """State held as named tensors in `self.state`, created at construction (on the CPU)
    and moved to the gradients' device by `on(device)` on each call (a no-op once there).

    state_dict() returns copies of those tensors; load_state_dict() takes such a dict
    (same keys; same shapes, except the keys in `resizable`) and continues from it.
    """

    state: dict
    resizable: tuple = ()

    def on(self, device: torch.device) -> dict:
        self.state = {k: v.to(device) for k, v in self.state.items()}
        return self.state

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        name = type(self).__name__
        if set(state) != set(self.state):
            raise ValueError(f"{name} state needs the keys {sorted(self.state)}, got {sorted(state)}")
        for k, v in self.state.items():
            if k not in self.resizable and tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"{name} state[{k!r}] has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        self.state = {k: state[k].detach().to(v.dtype).clone() for k, v in self.state.items()}


def build_clip(clip_cfg: dict, norm_type: float, model: torch.nn.Module | None = None):
    """The strategy a clip config names by `_target_`; the keys but `mode` are its knobs.

    `model` is the network being trained (modes that need it, agc, fail without it).
    """
    return components.build("clip", clip_cfg, norm_type=norm_type, model=model)


def measure(params, norm_type: float) -> tuple:
    """The parameters that have gradients, each gradient's p-norm (a vector) and their total p-norm."""
    params = [p for p in params if p.grad is not None]
    layer_norms = torch.stack(torch._foreach_norm([p.grad for p in params], norm_type))
    return params, layer_norms, torch.linalg.vector_norm(layer_norms, norm_type)


class Chain:
    """Strategies applied in turn, each to the gradients (and the total norm) that the one
    before left; it fired if any of them did. `links`: strategies, or clip configs to build.

    A per-layer strategy's `last_fired` is the chain's (the first one's, if several have one)."""

    def __init__(self, links: list, norm_type: float = 2.0, model=None):
        if not links:
            raise ConfigError("clip.links=[]: a chain needs at least one clip mode")
        self.links = [link if callable(link) else build_clip(link, norm_type, model) for link in links]

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        norm, fired = total_norm, None
        for link in self.links:
            norm, now = link(params, norm)
            fired = now if fired is None else fired | now
        return ClipResult(norm, fired)

    @property
    def last_fired(self) -> torch.Tensor:
        per_layer = [link for link in self.links if hasattr(link, "last_fired")]
        if not per_layer:
            raise AttributeError("last_fired")  # no per-layer link: the chain is not a per-layer mode
        return per_layer[0].last_fired

    def state_dict(self) -> dict:
        return {i: link.state_dict() for i, link in enumerate(self.links) if hasattr(link, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for i, link_state in state.items():
            self.links[int(i)].load_state_dict(link_state)


class Clipped(NamedTuple):
    norm_before: torch.Tensor  # total norm of the gradients before clipping (0-d)
    norm_after: torch.Tensor   # ... and after it
    fired: torch.Tensor        # bool 0-d: did clipping change any gradient


class Clipper:
    """A strategy for any training loop: `clipper(params)` measures the gradients' total norm,
    clips them in place and returns a Clipped, all on the device (no host sync)."""

    def __init__(self, strategy, norm_type: float = 2.0):
        self.strategy, self.norm_type = strategy, float(norm_type)

    def __call__(self, params) -> Clipped:
        params, _, total = measure(params, self.norm_type)
        return Clipped(total, *self.strategy(params, total))

    def state_dict(self) -> dict:
        """The adaptive strategies' history (empty for the stateless ones), to save with a checkpoint."""
        return self.strategy.state_dict() if hasattr(self.strategy, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if hasattr(self.strategy, "load_state_dict"):
            self.strategy.load_state_dict(state)


def config(mode: str, **knobs) -> dict:
    """The clip config of one of gradlab's modes, its defaults with `knobs` changed. Knobs go
    by their config names (`zclip_z`) or without the mode's prefix (`z`; `value` and
    `percentile` for clip_value and clip_percentile)."""
    cfg = components.option("clip", mode)
    for key, value in knobs.items():
        full = next((k for k in (key, f"{mode}_{key}", f"clip_{key}") if k in cfg and k not in ("mode", "_target_")), None)
        if full is None:
            allowed = [k for k in cfg if k not in ("mode", "_target_")]
            raise ConfigError(f"{key}={value}: not a knob of clip mode {mode}; allowed: {', '.join(allowed) or 'none'}")
        cfg[full] = value
    return cfg


def make(mode: str, *, norm_type: float = 2.0, model: torch.nn.Module | None = None, **knobs) -> Clipper:
    """A Clipper of a clip mode with gradlab's defaults, some knobs changed (see `config`):
    `make("norm", max_norm=5)`. `model` is needed by agc only."""
    return Clipper(build_clip(config(mode, **knobs), norm_type, model), norm_type)


def chain(*clippers: Clipper) -> Clipper:
    """Clippers applied in turn (e.g. `chain(make("agc"), make("norm", max_norm=5))`), as one."""
    norm_types = {c.norm_type for c in clippers}
    if len(norm_types) != 1:
        raise ConfigError(f"norm_type: the clippers of a chain measure the same norm, got {sorted(norm_types)}")
    return Clipper(Chain([c.strategy for c in clippers]), norm_types.pop())
