"""Clipping strategies: the contract every mode keeps, each mode's own invariants (the
bound holds, it matches torch's reference function, clipping twice changes nothing),
and bad knobs failing in one line naming the key."""

import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from gradlab.clip import MODES, build_clip, declared, mode_class, short_names, stacked_knobs
from gradlab.components import option, options
from gradlab.errors import ConfigError

NORM_TYPES = [1.0, 2.0, math.inf]
SHAPES = [(3, 4), (5,), (2, 3, 2)]  # a few parameter tensors, 29 elements
# gradient scales: all norms and elements under the thresholds below / some over / all over
SCALES = [0.01, 0.3, 10.0]
MAX_NORM, CLIP_VALUE = 1.0, 0.5
KNOBS = {
    "none": {},
    "value": {"clip_value": CLIP_VALUE},
    "norm": {"max_norm": MAX_NORM},
    "norm_per_layer": {"max_norm": MAX_NORM},
    "autoclip": {"clip_percentile": 10, "autoclip_window": 0},
    "zclip": {"zclip_alpha": 0.97, "zclip_warmup": 25, "zclip_z": 2.5, "zclip_max_norm": MAX_NORM},
    "agc": {"agc_lambda": 0.01, "agc_eps": 1e-3, "agc_exclude_final": False},
}


def make_params(scale: float, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


def copy_params(params) -> list:
    """Detached copies carrying copies of the gradients, for torch's reference functions."""
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for c, p in zip(copies, params):
        c.grad = p.grad.clone()
    return copies


def grads(params) -> list:
    return [p.grad.clone() for p in params]


def total_norm(params, p: float) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([q.grad for q in params], p)


def clip(mode: str, params, p: float):
    """Apply the strategy as the step does: once, with the pre-clip total norm."""
    return build_clip(option("clip", mode, **KNOBS[mode]), p)(params, total_norm(params, p))


def assert_same(a: list, b: list) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_every_registered_mode_has_test_knobs():
    assert set(KNOBS) == set(options("clip"))


GRID = pytest.mark.parametrize("p,scale", list(itertools.product(NORM_TYPES, SCALES)))
# torch's own function for each mode, applied to a copy of the same gradients
TORCH = {
    "none": lambda params, p: None,
    "value": lambda params, p: torch.nn.utils.clip_grad_value_(params, CLIP_VALUE),
    "norm": lambda params, p: torch.nn.utils.clip_grad_norm_(params, MAX_NORM, norm_type=p),
    "norm_per_layer": lambda params, p: [
        torch.nn.utils.clip_grad_norm_([q], MAX_NORM, norm_type=p) for q in params
    ],
    # a fresh autoclip's first threshold is the norm itself; zclip's warm-up only applies its cap
    "autoclip": lambda params, p: None,
    "zclip": lambda params, p: torch.nn.utils.clip_grad_norm_(params, MAX_NORM, norm_type=p),
    "agc": None,  # no torch function: tests/test_adaptive_clip.py checks it against a reference
}
# a second norm clip moves gradients by ~1e-6: torch adds 1e-6 to the norm it divides by
AGAIN_RTOL = {
    "none": 0.0,
    "value": 0.0,
    "norm": 1e-5,
    "norm_per_layer": 1e-5,
    "autoclip": 0.0,
    "zclip": 1e-5,
    "agc": 1e-5,
}


@GRID
@pytest.mark.parametrize("mode", options("clip"))
def test_contract_of_every_mode(mode, p, scale):
    params = make_params(scale)
    reference = copy_params(params)
    before, pre = grads(params), total_norm(params, p)
    result = clip(mode, params, p)
    assert result.norm_after.shape == () and result.fired.shape == () and result.fired.dtype == torch.bool
    # norm_after is what the gradients now measure, and clipping never increases the norm
    torch.testing.assert_close(result.norm_after, total_norm(params, p), rtol=1e-6, atol=0)
    assert result.norm_after <= pre * (1 + 1e-6)
    if not result.fired:
        assert_same(grads(params), before)

    if TORCH[mode]:
        TORCH[mode](reference, p)
        assert_same(grads(params), grads(reference))

    clipped = grads(params)
    # per-tensor and per-unit bounds hold to float32 rounding: a second pass may rescale by ~1e-7
    assert not clip(mode, params, p).fired or mode in ("norm_per_layer", "agc")
    for again, once in zip(grads(params), clipped):
        torch.testing.assert_close(again, once, rtol=AGAIN_RTOL[mode], atol=0)


@GRID
def test_norm_rescales_all_gradients_together_to_the_bound(p, scale):
    params = make_params(scale)
    before, pre = grads(params), total_norm(params, p)
    result = clip("norm", params, p)
    assert bool(result.fired) == bool(pre > MAX_NORM)
    assert total_norm(params, p) <= MAX_NORM * (1 + 1e-6)
    # one positive factor for every element: the direction is kept (Pascanu et al. eq. 5)
    factor = min(1.0, MAX_NORM / float(pre))
    for after, g in zip(grads(params), before):
        torch.testing.assert_close(after, g * factor, rtol=1e-5, atol=0)


@GRID
def test_value_clamps_every_element(p, scale):
    params = make_params(scale)
    before = grads(params)
    result = clip("value", params, p)
    assert all(g.abs().max() <= CLIP_VALUE for g in grads(params))
    assert bool(result.fired) == any(bool((g.abs() > CLIP_VALUE).any()) for g in before)


@GRID
def test_none_leaves_gradients_untouched_and_reports_the_measured_norm(p, scale):
    params = make_params(scale)
    before, pre = grads(params), total_norm(params, p)
    result = build_clip(option("clip", "none"), p)(params, pre)
    assert_same(grads(params), before)
    assert torch.equal(result.norm_after, pre) and not result.fired


@pytest.mark.parametrize(
    "mode,key,value",
    [
        ("norm", "max_norm", 0),
        ("norm", "max_norm", -1),
        ("norm", "max_norm", math.nan),
        ("norm", "max_norm", "abc"),
        ("norm", "max_norm", True),
        ("value", "clip_value", 0),
        ("value", "clip_value", -0.5),
    ],
)
def test_bad_knob_fails_in_one_line_naming_the_key(mode, key, value):
    with pytest.raises(ConfigError) as err:
        build_clip(option("clip", mode, **{key: value}), 2.0)
    message = str(err.value)
    assert message.startswith(f"{key}=") and "\n" not in message


@pytest.mark.parametrize(
    "clip_cfg,start",
    [
        ({"max_norm": 1.0, "clip_value": 0.5}, "clip.clip_value: unknown key for clip=norm"),
        (
            {"_target_": "gradlab.clip.norm.ClipByNorms"},
            r"clip._target_=gradlab.clip.norm.ClipByNorms: cannot import it",
        ),
        ({"_target_": "ClipByNorm"}, "clip._target_=ClipByNorm: name the class as package.module.Class"),
    ],
)
def test_unknown_class_or_key_fails_naming_it(clip_cfg, start):
    with pytest.raises(ConfigError, match=f"^{start}"):
        build_clip(option("clip", "norm", **clip_cfg), 2.0)
    with pytest.raises(ConfigError, match="^clip=nope: choose from agc, autoclip, none"):
        option("clip", "nope")


README = Path(__file__).resolve().parents[1] / "README.md"


def shown(value) -> str:
    """A default as the README and YAML write it."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("mode", options("clip"))
def test_a_modes_config_comes_from_its_signature(compose, mode):
    """`clip=<mode>` composes to the class's declared knobs, in its signature's order, at their
    declared defaults; each is set by its top-level short name."""
    known = declared(mode_class(mode))
    conf = compose(f"clip={mode}")
    assert list(conf["clip"]) == ["_target_", "mode", *known]
    assert {k: conf["clip"][k] for k in known} == {k: d.default for k, d in known.items()}
    assert all(conf[k] == d.default for k, d in known.items())
    if known:
        first = next(iter(known))
        value = 0.5 if isinstance(known[first].default, float) else known[first].default
        assert compose(f"clip={mode}", f"{first}={value}")["clip"][first] == value


def test_the_short_names_are_the_declared_knobs_and_nothing_else(compose):
    conf = compose()
    declared_names = {k for mode in MODES for k in declared(mode_class(mode))}
    assert set(short_names()) == declared_names
    assert declared_names <= set(conf)
    assert {k for k, (_, docs) in short_names().items() if len(docs) > 1} == {
        "max_norm"
    }  # norm, norm_per_layer


def test_stacked_knobs_are_the_numbers_that_may_differ_in_a_group():
    assert {mode: stacked_knobs(mode_class(mode)) for mode in MODES} == {
        "none": (),
        "value": ("clip_value",),
        "norm": ("max_norm",),
        "norm_per_layer": ("max_norm",),
        "autoclip": ("clip_percentile",),
        "agc": ("agc_lambda", "agc_eps"),
        "zclip": ("zclip_z", "zclip_alpha", "zclip_warmup", "zclip_max_norm"),
    }


def test_readme_table_lists_each_modes_declared_knobs():
    """The README's clip table names each mode's knobs as declared, in order, with their defaults."""
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"^\| `(\w+)` \| [^|]+ \|\s*([^|]*?)\s*\|", line)
        if match and match[1] in MODES:
            rows[match[1]] = re.findall(r"`(\w+)` \(([^);]+)", match[2])
    assert set(rows) == set(MODES)
    for mode, knobs in rows.items():
        expected = [(k, shown(d.default)) for k, d in declared(mode_class(mode)).items()]
        assert [(k, v.split(" ")[0]) for k, v in knobs] == expected, mode
