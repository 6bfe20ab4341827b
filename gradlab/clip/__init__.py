"""Clipping strategies: one small class per `clip=` mode, each in its own module: the module's name is
the mode's, its `STRATEGY` the class (MODES lists them).

Every strategy is called once per optimizer step, after the gradients are complete
(all micro-batches, unscaled), with the pre-clip measurement the step already made:

    strategy(params, total_norm) -> ClipResult

`params` are the parameters that have gradients, `total_norm` their total p-norm
(p = norm_type) as a 0-d device tensor. The strategy clips the gradients in place and
returns, as device tensors (no host sync), the total norm after clipping and whether
it fired. `none` clips nothing but is measured all the same.

A mode's knobs are declared once, in its class's signature: each keyword with a default
and a `Knob` in its annotation,

    def __init__(self, max_norm: Annotated[float, Knob("threshold on the total norm; > 0")] = 1.0,
                 *, norm_type: float, model=None):

and everything else is derived from that (`declared`): the mode's Hydra config `clip=<mode>`
(`clip.max_norm: ${max_norm}`, registered by gradlab.conf) and the top-level short name that
sweeps set (`max_norm: 1.0`, `short_names`), `gradlab list`, the knobs that may differ between
the members of a vectorized group (`Knob.stacked`), and the README's table (tests/test_clip.py
holds it to the declarations). The first knob names the run (`norm5`: config.clip_label).
The class checks its knobs' values when it is built. After the knobs come two context values:
`norm_type`, and the `model` (AGC finds the final layer in it; the others ignore it).
Adaptive strategies (autoclip, zclip) keep their state in tensors behind state_dict() /
load_state_dict() (see TensorState), so a run can be saved and resumed and an engine can
carry the state of each member. `Chain` applies several in turn.

A vectorized group (gradlab.vectorized) clips the gradients of K runs at once: its
parameters are stacked along a leading member axis, and `stack` turns the K members'
strategies of one class into one whose stacked knobs are (K,) tensors and whose state
tensors are stacked. It is called with Slabs in place of parameters and a (K,) total norm,
and returns (K,) results; every strategy's arithmetic runs along the last axis, so the same
code serves both.

Outside gradlab's own loop, `make` gives any mode as a `Clipper` that measures too:

    clipper = gradlab.clip.make("zclip", z=2.5)
    result = clipper(model.parameters())   # after backward: clips in place; norms on the device

Adding a strategy: its module here (with its `STRATEGY`), its tests and its README row.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import pkgutil
import typing
from typing import NamedTuple

import torch

from gradlab import components
from gradlab.errors import ConfigError


class Knob(NamedTuple):
    """A clip knob, declared as the annotation of its keyword in the mode's signature
    (`Annotated[float, Knob(...)] = default`); its name and default are the keyword's."""

    doc: str  # what it does and what it allows: gradlab list, the README
    stacked: bool = True  # may differ between the members of one vectorized group


class Declared(NamedTuple):
    default: object
    knob: Knob


def mode_class(mode: str):
    return components.locate("clip", {"_target_": MODES[mode]})


@functools.cache
def declared(cls) -> dict[str, Declared]:
    """A strategy class's knobs, in the order of its signature: name -> (default, Knob)."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    found = {}
    for name, param in inspect.signature(cls).parameters.items():
        knobs = [m for m in getattr(hints.get(name), "__metadata__", ()) if isinstance(m, Knob)]
        if knobs:
            found[name] = Declared(param.default, knobs[0])
    return found


def summary(mode: str) -> str:
    """What a mode does, in one line: the first of its module's docstring."""
    line = inspect.getmodule(mode_class(mode)).__doc__.strip().splitlines()[0]
    line = line.split(": ", 1)[1] if line.startswith("`clip=") else line
    return line[:1].upper() + line[1:]


def node(mode: str) -> dict:
    """The Hydra config of `clip=<mode>`: its class, and each knob read from its short name."""
    return {"_target_": MODES[mode], "mode": mode, **{k: f"${{{k}}}" for k in declared(mode_class(mode))}}


@functools.cache
def short_names() -> dict[str, tuple]:
    """The top-level keys that set the modes' knobs (`max_norm`): name -> (default, the modes and
    their docs). A knob that several modes read has one default."""
    found = {}
    for mode in MODES:
        for name, (default, knob) in declared(mode_class(mode)).items():
            if name in found and found[name][0] != default:
                raise ValueError(
                    f"{name}: clip modes declare different defaults, {found[name][0]} and {default}"
                )
            found.setdefault(name, (default, []))[1].append((mode, knob.doc))
    return found


class ClipResult(NamedTuple):
    norm_after: torch.Tensor  # total norm of the gradients after clipping (0-d)
    fired: torch.Tensor  # bool 0-d: did clipping change any gradient


@functools.cache
def constant(value, device: torch.device) -> torch.Tensor:
    """A float32 tensor of `value` (a number: 0-d; a tuple: 1-d) on the device, made once: a Python
    number in a tensor operation is made into a tensor on every call, which costs as much as the
    operation on a run's small per-step figures."""
    return torch.tensor(value, device=device)


def unchanged(total_norm: torch.Tensor) -> ClipResult:
    """The result of a call that left every gradient as it was."""
    return ClipResult(total_norm, torch.zeros_like(total_norm, dtype=torch.bool))


class Slab(NamedTuple):
    """The stacked weights and gradients of one parameter of a vectorized group's members, (K, ...):
    what a stacked strategy gets in place of a parameter."""

    name: str  # the parameter's name in the model
    weight: torch.Tensor
    grad: torch.Tensor

    def detach(self) -> torch.Tensor:
        return self.weight

    @property
    def shape(self) -> torch.Size:
        """The parameter's own shape (one member's)."""
        return self.weight.shape[1:]


def per_member(value, like: torch.Tensor):
    """A knob or a per-run figure shaped to broadcast against `like`: a (K,) tensor (one value per
    member of a stacked call) gets trailing 1s; a number or a 0-d tensor (a run alone) is as is."""
    if isinstance(value, torch.Tensor) and value.dim():
        return value.view(*value.shape, *(1,) * (like.dim() - value.dim()))
    return value


def tensor_norms(tensors, norm_type: float, stacked: bool = False) -> torch.Tensor:
    """The p-norm of each tensor: (L,); with stacked members (first axis), (K, L)."""
    if not stacked:
        return torch.stack(torch._foreach_norm(tensors, norm_type))
    return torch.stack([torch.linalg.vector_norm(t.flatten(1), norm_type, dim=1) for t in tensors], dim=-1)


def total_norm_of(tensors, norm_type: float, stacked: bool = False) -> torch.Tensor:
    """The total p-norm of the tensors (0-d), or of each member's (K,)."""
    return torch.linalg.vector_norm(tensor_norms(tensors, norm_type, stacked), norm_type, dim=-1)


def scale_(grads, coefs) -> None:
    """Multiply the gradients in place: by one factor (0-d, or (K,) one per member), or by one per
    tensor (a sequence)."""
    if isinstance(coefs, torch.Tensor) and coefs.dim() == 0:
        torch._foreach_mul_(grads, coefs)
    elif isinstance(coefs, torch.Tensor):
        torch._foreach_mul_(grads, [per_member(coefs, g).to(g.dtype) for g in grads])
    else:
        torch._foreach_mul_(grads, [per_member(c, g).to(g.dtype) for c, g in zip(coefs, grads)])


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
                raise ValueError(
                    f"{name} state[{k!r}] has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
                )
        self.state = {k: state[k].detach().to(v.dtype).clone() for k, v in self.state.items()}


def build_clip(clip_cfg: dict, norm_type: float, model: torch.nn.Module | None = None):
    """The strategy a clip config names by `_target_`; the keys but `mode` are its knobs.

    `model` is the network being trained (modes that need it, agc, fail without it).
    """
    return components.build("clip", clip_cfg, norm_type=norm_type, model=model)


def stacked_knobs(cls) -> tuple:
    """The knobs of a strategy class that may differ between the members of a stacked call."""
    return tuple(name for name, (_, knob) in declared(cls).items() if knob.stacked)


def stack(strategies: list, device: torch.device):
    """One strategy for K members that clips as each of `strategies` (the members', of one class and
    equal but for their stacked knobs) would clip its own run."""
    first = strategies[0]
    if isinstance(first, Chain):
        return Chain([stack(list(links), device) for links in zip(*(s.links for s in strategies))])
    batch = copy.copy(first)
    for name in stacked_knobs(type(first)):
        setattr(batch, name, torch.tensor([float(getattr(s, name)) for s in strategies], device=device))
    if isinstance(first, TensorState):
        batch.state = {k: torch.stack([s.state[k] for s in strategies]).to(device) for k in first.state}
    return batch


def select(batch, keep: torch.Tensor):
    """A stacked strategy for the members `keep` (indices) of `batch`'s."""
    if isinstance(batch, Chain):
        return Chain([select(link, keep) for link in batch.links])
    kept = copy.copy(batch)
    for name in stacked_knobs(type(batch)):
        setattr(kept, name, getattr(batch, name)[keep])
    if isinstance(batch, TensorState):
        kept.state = {k: v[keep] for k, v in batch.state.items()}
    return kept


def measure(params, norm_type: float, stacked: bool = False) -> tuple:
    """The parameters that have gradients, each gradient's p-norm (L,) and their total p-norm (0-d);
    with `stacked` members (a first axis), each member's: (K, L) and (K,)."""
    params = [p for p in params if p.grad is not None]
    layer_norms = tensor_norms([p.grad for p in params], norm_type, stacked)
    return params, layer_norms, torch.linalg.vector_norm(layer_norms, norm_type, dim=-1 if stacked else None)


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
    norm_after: torch.Tensor  # ... and after it
    fired: torch.Tensor  # bool 0-d: did clipping change any gradient


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
        full = next(
            (k for k in (key, f"{mode}_{key}", f"clip_{key}") if k in cfg and k not in ("mode", "_target_")),
            None,
        )
        if full is None:
            allowed = [k for k in cfg if k not in ("mode", "_target_")]
            raise ConfigError(
                f"{key}={value}: not a knob of clip mode {mode}; allowed: {', '.join(allowed) or 'none'}"
            )
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
        raise ConfigError(
            f"norm_type: the clippers of a chain measure the same norm, got {sorted(norm_types)}"
        )
    return Clipper(Chain([c.strategy for c in clippers]), norm_types.pop())


def _modes() -> dict[str, str]:
    """clip=<mode> -> its class path, one mode per module of this package (`none` first)."""
    names = sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda name: (name != "none", name))
    return {
        name: f"{__name__}.{name}.{importlib.import_module(f'{__name__}.{name}').STRATEGY.__name__}"
        for name in names
    }


MODES = _modes()
