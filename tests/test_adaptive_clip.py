"""Adaptive clipping modes (autoclip, agc, zclip, norm_per_layer): over consecutive steps
each matches a plain float64 reference written here, spikes and zero, missing and
non-finite gradients included, under each of its rules (AGC's two unit rules, AutoClip's
paper and package variants); AGC's units are the documented ones on MLP and Transformer
weights and the output layer is left alone; no step reads a value back from the device;
state survives state_dict/load_state_dict; every YAML composes, builds, sweeps and trains
with the papers' defaults; bad knobs fail in one line naming the key."""

import collections
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradlab.clip import build_clip
from gradlab.clip.autoclip import AutoClip
from gradlab.components import option
from gradlab.config import sweep_dir
from gradlab.errors import ConfigError
from gradlab.sweep import expand
from gradlab.train import build, train

# conf/config.yaml's defaults, but a short zclip warm-up so that z-clipping is reached
KNOBS = {
    "autoclip": {
        "clip_percentile": 10,
        "autoclip_window": 0,
        "autoclip_current": True,
        "autoclip_scope": "global",
    },
    "agc": {"agc_lambda": 0.01, "agc_eps": 1e-3, "agc_exclude_final": False, "agc_units": "nfnets"},
    "zclip": {"zclip_alpha": 0.97, "zclip_warmup": 4, "zclip_z": 2.5, "zclip_max_norm": None},
    "norm_per_layer": {"max_norm": 1.0},
}
MODES = sorted(KNOBS)
STATEFUL = ("autoclip", "zclip")
SHAPES = [(4, 3), (4,), (2, 3, 2), (1, 5, 2), (1,), ()]
# gradient scale of each step: zeros, a spike, an inf and a nan gradient among ordinary steps
STEPS = [1, 2, 0.5, 1.5, 0, 1, 1.2, 1e3, 0.8, "inf", 1.1, "nan", 0.9, 1, 3, 1]
SPIKE = STEPS.index(1e3)


def strategy(mode, p=2.0, model=None, **knobs):
    return build_clip(option("clip", mode, **{**KNOBS[mode], **knobs}), p, model)


def make_params(seed=0) -> list:
    """Parameters of SHAPES, then one that never gets a gradient (.grad None)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [*SHAPES, (3,)]]


def set_grads(params, seed, scale) -> None:
    """Log-normally spread gradients around `scale` (units and tensors differ by orders of
    magnitude); scale "inf"/"nan" puts that value into one element of ordinary gradients."""
    g = torch.Generator().manual_seed(1000 + seed)
    factor = 1.0 if isinstance(scale, str) else scale
    for p in params[:-1]:
        p.grad = (
            torch.randn(p.shape, generator=g) * torch.exp(torch.randn(p.shape, generator=g)) * factor
        ).to(p.device)
    if isinstance(scale, str):
        params[2].grad[1, 0, 1] = float(scale)


def clip_step(clip, params, p=2.0):
    """Call the strategy as the step does: with the total norm of the gradients there are."""
    total = torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None], p)
    return clip(params, total)


def as_numpy(tensors) -> list:
    return [None if t is None else t.detach().double().numpy().copy() for t in tensors]


def assert_grads(params, expected, rtol=1e-5) -> None:
    for p, e in zip(params, expected, strict=True):
        if e is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(p.grad.double().numpy(), e, rtol=rtol, atol=1e-12, equal_nan=True)


# --- references: float64, one tensor (one unit) at a time


def ref_norm(grads, p) -> float:
    return float(np.linalg.norm(np.concatenate([g.ravel() for g in grads if g is not None]), ord=p))


def ref_rescale(grads, norm, threshold):
    """clip=norm's rule: times threshold / (norm + 1e-6) when a finite norm exceeds threshold."""
    if math.isfinite(norm) and norm > threshold:
        return [None if g is None else g * (threshold / (norm + 1e-6)) for g in grads], True
    return grads, False


class RefAutoClip:
    """Seetharaman et al.'s code: np.percentile of every norm so far, this one included (or the
    last `window`). autoclip_current=false and per_parameter, the autoclip package's
    QuantileClip: the quantile of the earlier norms (none: not clipped), then this norm is
    recorded; per_parameter, every tensor on its own. Non-finite norms are not recorded."""

    def __init__(self, clip_percentile, autoclip_window, autoclip_current, autoclip_scope):
        self.percentile, self.current, self.window = (
            clip_percentile,
            autoclip_current,
            autoclip_window or None,
        )
        self.per_parameter = autoclip_scope == "per_parameter"
        self.histories = collections.defaultdict(lambda: collections.deque(maxlen=self.window))

    def __call__(self, weights, grads, p):
        if not self.per_parameter:
            return self._clip(0, grads, p)
        out, fired = [], False
        for i, g in enumerate(grads):
            if g is not None:
                [g], f = self._clip(i, [g], p)
                fired |= f
            out.append(g)
        return out, fired

    def _clip(self, key, grads, p):
        norm, history = ref_norm(grads, p), self.histories[key]
        threshold = np.percentile(history, self.percentile) if history and not self.current else math.inf
        if not math.isfinite(norm):
            return grads, False
        history.append(norm)
        if self.current:
            threshold = np.percentile(history, self.percentile)
        return ref_rescale(grads, norm, threshold)


class RefZClip:
    """The ZClip authors' z-score mode with adaptive scaling, non-finite steps left out."""

    def __init__(self, zclip_alpha, zclip_warmup, zclip_z, zclip_max_norm):
        self.alpha, self.warmup, self.z = zclip_alpha, zclip_warmup, zclip_z
        self.cap = math.inf if zclip_max_norm is None else zclip_max_norm
        self.first, self.mean, self.var, self.count = [], None, None, 0

    def __call__(self, weights, grads, p):
        norm = ref_norm(grads, p)
        if not math.isfinite(norm):
            return grads, False
        self.count += 1
        if self.mean is None:
            self.first.append(norm)
            if len(self.first) == self.warmup:
                self.mean, self.var = np.mean(self.first), np.var(self.first)
            return ref_rescale(grads, norm, self.cap)
        std = math.sqrt(self.var)
        z = (norm - self.mean) / (std + 1e-6)
        seen = self.mean + self.z * std / (z / self.z) if z > self.z else norm
        result = ref_rescale(grads, norm, min(seen, self.cap))
        self.mean = self.alpha * self.mean + (1 - self.alpha) * seen
        self.var = self.alpha * self.var + (1 - self.alpha) * (seen - self.mean) ** 2
        return result


def ref_agc(weights, grads, lam, eps, frozen=(), units="nfnets"):
    """NFNets' rule unit by unit. A unit, agc_units=nfnets: a scalar or vector whole, else a slice
    along the first dimension (deepmind-research nfnets/optim.py, unitwise_norm);
    first_nonsingleton: a slice along the first dimension of size > 1."""
    out, fired = [], False
    for i, (w, g) in enumerate(zip(weights, grads)):
        if g is None or i in frozen:
            out.append(g)
            continue
        if units == "nfnets":
            rows = 1 if g.ndim <= 1 else g.shape[0]
        else:
            rows = next((size for size in g.shape if size > 1), 1)
        w_units = w.reshape(rows, -1)
        g_units = g.reshape(rows, -1).copy()
        for u in range(len(g_units)):
            g_norm = math.sqrt(np.sum(g_units[u] ** 2))
            w_norm = max(math.sqrt(np.sum(w_units[u] ** 2)), eps)
            if math.isfinite(g_norm) and g_norm > lam * w_norm:
                g_units[u] = g_units[u] * (lam * w_norm / g_norm)
                fired = True
        out.append(g_units.reshape(g.shape))
    return out, fired


def ref_per_layer(grads, max_norm, p):
    """clip=norm's rule on every tensor alone; also which tensors fired."""
    out, fired = [], []
    for g in grads:
        if g is not None:
            [g], f = ref_rescale([g], ref_norm([g], p), max_norm)
            fired.append(f)
        out.append(g)
    return out, fired


def reference_of(mode: str, knobs: dict):
    """`mode`'s reference as one callable: (weights, grads, p) -> (clipped grads, fired)."""
    if mode == "autoclip":
        return RefAutoClip(**knobs)
    if mode == "zclip":
        return RefZClip(**knobs)
    if mode == "agc":
        return lambda weights, grads, p: ref_agc(
            weights, grads, knobs["agc_lambda"], knobs["agc_eps"], units=knobs["agc_units"]
        )

    def per_layer(weights, grads, p):
        out, fired = ref_per_layer(grads, knobs["max_norm"], p)
        return out, any(fired)

    return per_layer


# --- each mode against its reference, step after step


CASES = [
    ("autoclip", {}, 2.0),
    ("autoclip", {"autoclip_window": 3, "clip_percentile": 50}, 1.0),
    ("autoclip", {"clip_percentile": 100}, math.inf),
    ("autoclip", {"clip_percentile": 25, "grow": True}, 2.0),  # unbounded history past its first capacity
    ("autoclip", {"autoclip_current": False, "clip_percentile": 90, "autoclip_window": 4}, 2.0),
    ("autoclip", {"autoclip_scope": "per_parameter"}, 1.0),
    (
        "autoclip",
        {
            "autoclip_scope": "per_parameter",
            "autoclip_current": False,
            "clip_percentile": 90,  # the package
            "autoclip_window": 5,
        },
        2.0,
    ),
    ("zclip", {}, 2.0),
    (
        "zclip",
        {"zclip_alpha": 0.5, "zclip_z": 1.0, "zclip_max_norm": 10.0},
        math.inf,
    ),  # the cap bites in warm-up
    ("agc", {}, 2.0),
    ("agc", {"agc_lambda": 0.1, "agc_eps": 0.5}, 1.0),
    ("agc", {"agc_units": "first_nonsingleton"}, 2.0),
    ("agc", {"agc_units": "first_nonsingleton", "agc_lambda": 0.1, "agc_eps": 0.5}, 1.0),
    ("norm_per_layer", {}, 2.0),
    ("norm_per_layer", {"max_norm": 0.5}, math.inf),
]


@pytest.mark.parametrize("mode,knobs,p", CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_mode_matches_its_reference_step_after_step(mode, knobs, p, monkeypatch):
    if knobs.get("grow"):
        monkeypatch.setattr(AutoClip, "CAPACITY", 2)
    knobs = {**KNOBS[mode], **{k: v for k, v in knobs.items() if k != "grow"}}
    params = make_params()
    clip, reference = strategy(mode, p, holder(params), **knobs), reference_of(mode, knobs)
    per_tensor = mode == "norm_per_layer" or knobs.get("autoclip_scope") == "per_parameter"
    weights = as_numpy(params)
    for step, scale in enumerate(STEPS):
        set_grads(params, step, scale)
        before = as_numpy(q.grad for q in params)
        pre = ref_norm(before, p)
        state = clip.state_dict() if mode in STATEFUL else None
        expected, fired = reference(weights, before, p)
        result = clip_step(clip, params, p)

        assert_grads(params, expected)
        assert bool(result.fired) == fired, f"step {step}"
        np.testing.assert_allclose(float(result.norm_after), ref_norm(expected, p), rtol=1e-5, equal_nan=True)
        assert result.norm_after.shape == () and result.fired.shape == () and result.fired.dtype == torch.bool
        if mode == "norm_per_layer":  # one flag per parameter with a gradient, in order
            assert clip.last_fired.tolist() == ref_per_layer(before[:-1], knobs["max_norm"], p)[1]
        if scale == 0:  # zero gradients: nothing clipped, no nan
            assert not result.fired and float(result.norm_after) == 0
        if isinstance(scale, str):  # inf/nan: no crash, the state is left as it was (see the modules)
            assert not math.isfinite(float(result.norm_after))
            if state is not None and not per_tensor:
                assert_same_state(state, clip.state_dict())
        if (
            step == SPIKE and mode in STATEFUL and knobs.get("clip_percentile") != 100
        ):  # a huge spike is clipped
            assert result.fired and float(result.norm_after) < pre / 10
    if mode == "autoclip":  # each history holds the reference's norms
        state = clip.state_dict()
        for row, (history, count) in enumerate(zip(state["history"], state["count"])):
            expected = reference.histories[row]
            assert len(history) >= len(expected) and (count == len(expected) or knobs["autoclip_window"])
            np.testing.assert_allclose(
                sorted(history[torch.isfinite(history)].tolist()), sorted(expected), rtol=1e-6
            )
    if mode == "zclip":
        state = clip.state_dict()
        assert state["count"] == reference.count
        np.testing.assert_allclose(
            [float(state["mean"]), float(state["var"])], [reference.mean, reference.var], rtol=1e-4
        )


def holder(params) -> torch.nn.Module:
    """A model whose parameters are those of make_params() that get gradients."""
    return torch.nn.ParameterList(params[:-1])


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


VARIANTS = [(mode, {}) for mode in MODES] + [
    ("agc", {"agc_units": "first_nonsingleton"}),
    ("autoclip", {"autoclip_scope": "per_parameter"}),
    ("autoclip", {"autoclip_current": False, "autoclip_window": 4}),
]
# aten ops that read a value back to the host (item, bool, float), or whose output's size
# depends on the data (boolean masks): each waits for the device on a GPU
SYNCING = {
    "aten._local_scalar_dense",
    "aten.nonzero",
    "aten.masked_select",
    "aten.is_nonzero",
    "aten.equal",
    "aten.unique",
    "aten._unique2",
    "aten.masked_scatter",
}


class HostReads(TorchDispatchMode):
    """The ops of SYNCING that run inside this block, on any device."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket._qualified_op_name.replace("::", ".") in SYNCING:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode,knobs", VARIANTS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(VARIANTS)])
def test_no_host_reads_on_any_device(mode, knobs):
    """What the CUDA sync check below shows on a GPU, shown here on the CPU: every step of
    every mode, spikes and non-finite steps included, runs without one read back."""
    params = make_params()
    clip = strategy(mode, 2.0, holder(params), **knobs)
    with HostReads() as reads:
        bool(torch.ones(()))  # the check sees a read
        assert reads.ops == ["aten._local_scalar_dense.default"]
        reads.ops.clear()
        for step, scale in enumerate(STEPS):
            set_grads(params, step, scale)
            clip_step(clip, params)
    assert reads.ops == []


@pytest.mark.cuda  # host-device syncs only show on CUDA
@pytest.mark.parametrize("mode,knobs", VARIANTS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(VARIANTS)])
def test_no_host_sync_on_cuda(mode, knobs):
    params = [torch.nn.Parameter(p.detach().cuda()) for p in make_params()]
    clip = strategy(mode, 2.0, holder(params), **knobs)
    for step, scale in enumerate(STEPS):
        set_grads(params, step, scale)
        total = torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None], 2.0)
        torch.cuda.set_sync_debug_mode("error" if step else "default")  # the first call moves the state over
        try:
            result = clip(params, total)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert result.norm_after.is_cuda and result.fired.is_cuda


# --- AGC on real models: which slice is a unit, which layer is left alone

SMALL = {  # tiny runs of three model families (overrides)
    "mlp": ["model=mlp", "task=regression", "model.hidden=[8,6]", "task.n_samples=16", "task.features=5"],
    "lstm": ["model=lstm", "model.hidden_size=8", "task.length=8", "task.eval_size=10"],
    "transformer": [
        "model=transformer",
        "model.d_model=8",
        "model.n_heads=2",
        "model.n_layers=1",
        "model.d_ff=16",
        "task.seq_len=6",
        "task.max_bytes=4000",
        "task.eval_size=4",
    ],
}
FINAL = {"mlp": "net.4.", "lstm": "head.", "transformer": "head."}  # prefix of the output layer's parameters
LAM, EPS = KNOBS["agc"]["agc_lambda"], KNOBS["agc"]["agc_eps"]


def small_grads(model, seed=0) -> None:
    """Gradients far under the AGC bound: 1e-4 of the weights, plus noise."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = p.detach() * 1e-4 + torch.randn(p.shape, generator=g) * 1e-9


@pytest.mark.parametrize("family", sorted(SMALL))
def test_agc_matches_its_reference_on_each_model_family_and_leaves_the_output_layer(compose, family):
    run = build(compose(*SMALL[family], "clip=agc"))
    names, params = zip(*run.model.named_parameters())
    frozen = [i for i, n in enumerate(names) if n.startswith(FINAL[family])]
    assert len(frozen) == 2 and max(frozen) == len(names) - 1  # weight and bias of the layer registered last
    set_grads([*params, None], 0, 0.01)
    before = as_numpy(p.grad for p in params)
    expected, fired = ref_agc(as_numpy(params), before, LAM, EPS, frozen)
    result = clip_step(run.clip, params)
    assert_grads(params, expected)
    assert bool(result.fired) == fired
    assert all(torch.equal(params[i].grad, torch.from_numpy(before[i]).float()) for i in frozen)

    unfrozen = strategy("agc", model=run.model, agc_exclude_final=False)
    set_grads([*params, None], 0, 0.01)
    clip_step(unfrozen, params)
    assert_grads(params, ref_agc(as_numpy(params), before, LAM, EPS)[0])


# (parameter name, index of one unit) in the small Transformer: the unit it must be under each rule
ROWS = [
    ("encoder.layers.0.self_attn.in_proj_weight", (9,)),  # (3d, d): a row of the packed q/k/v projections
    ("encoder.layers.0.self_attn.out_proj.weight", (2,)),  # (d, d): an output row
    ("encoder.layers.0.linear1.weight", (15,)),  # (d_ff, d): an output row
    ("encoder.layers.0.linear2.weight", (0,)),  # (d, d_ff): an output row
    ("embed.weight", (65,)),  # (vocab, d): one token's vector
]
TRANSFORMER_UNITS = {
    "nfnets": ROWS
    + [
        ("position", ()),  # (1, T, d): first dim 1, so the whole tensor
        ("encoder.layers.0.self_attn.in_proj_bias", ()),  # 1-D: the whole vector
        ("encoder.layers.0.norm1.weight", ()),  # 1-D LayerNorm gain: the whole vector
    ],
    "first_nonsingleton": ROWS
    + [
        ("position", (0, 4)),  # (1, T, d): one position's vector (dim 1)
        ("encoder.layers.0.self_attn.in_proj_bias", (3,)),  # 1-D, zero-initialised: one element, eps floor
        ("encoder.layers.0.norm1.weight", (5,)),  # 1-D LayerNorm gain: one element
    ],
}


@pytest.mark.parametrize("rule", sorted(TRANSFORMER_UNITS))
def test_agc_units_of_transformer_weights(compose, rule):
    run = build(compose(*SMALL["transformer"], "clip=agc", f"agc_units={rule}"))
    named = dict(run.model.named_parameters())
    small_grads(run.model)
    for name, unit in TRANSFORMER_UNITS[rule] + [("head.weight", (1,))]:
        named[name].grad[unit] = 10.0
    before = {n: p.grad.clone() for n, p in named.items()}
    assert clip_step(run.clip, list(named.values())).fired
    for name, unit in TRANSFORMER_UNITS[rule]:
        grad, weight = named[name].grad, named[name].detach()
        bound = LAM * max(float(weight[unit].norm()), EPS)
        assert math.isclose(float(grad[unit].norm()), bound, rel_tol=1e-5), name
        others = torch.ones_like(grad, dtype=torch.bool)
        others[unit] = False
        assert torch.equal(grad[others], before[name][others]), name  # the rest of the tensor is untouched
    assert all(torch.equal(p.grad, before[n]) for n, p in named.items() if n.startswith("head."))


def test_agc_needs_the_model_to_exclude_the_final_layer():
    with pytest.raises(ConfigError, match="^agc_exclude_final="):
        strategy("agc", agc_exclude_final=True)


# --- state


@pytest.mark.parametrize(
    "mode,knobs",
    [
        ("autoclip", {}),
        ("autoclip", {"autoclip_window": 4}),
        ("autoclip", {"grow": True}),
        ("zclip", {}),
    ],
    ids=["autoclip", "autoclip-window", "autoclip-growing", "zclip"],
)
def test_state_round_trips_and_the_run_continues_identically(mode, knobs, monkeypatch):
    if knobs.get("grow"):
        monkeypatch.setattr(AutoClip, "CAPACITY", 4)
    knobs = {k: v for k, v in knobs.items() if k != "grow"}
    params, first = make_params(), strategy(mode, **knobs)
    for step in range(6):
        set_grads(params, step, 1 + step % 3)
        clip_step(first, params)
    saved = first.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in saved.values())
    second = strategy(mode, **knobs)
    second.load_state_dict(saved)
    for step, scale in enumerate([1, 1e3, 0.5, 2, "inf", 1, 3, 0.7, 1.5, 2], start=6):
        outcomes = []
        for clip in (first, second):
            set_grads(params, step, scale)
            outcomes.append((clip_step(clip, params), [p.grad for p in params]))
        (a, grads_a), (b, grads_b) = outcomes
        assert torch.equal(a.norm_after, b.norm_after) and torch.equal(a.fired, b.fired)
        assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    assert_same_state(first.state_dict(), second.state_dict())


def test_state_dict_is_a_copy_and_a_foreign_state_is_refused():
    clip = strategy("zclip")
    clip.state_dict()["mean"].fill_(5.0)
    assert clip.state_dict()["mean"] == 0
    with pytest.raises(ValueError, match="keys"):
        clip.load_state_dict({"mean": torch.zeros(())})
    with pytest.raises(ValueError, match="shape"):
        strategy("autoclip", autoclip_window=3).load_state_dict(
            strategy("autoclip", autoclip_window=4).state_dict()
        )


# --- configs: compose, build, sweep, train


@pytest.mark.parametrize("mode", MODES)
def test_yaml_composes_builds_and_trains(compose, mode):
    conf = compose(*SMALL["mlp"], f"clip={mode}", "steps=5", "wandb=off", "zclip_warmup=2", "log_every=2")
    knobs = {k: v for k, v in conf["clip"].items() if k not in ("mode", "_target_")}
    assert conf["clip"]["mode"] == mode and knobs and all(conf[k] == v for k, v in knobs.items())
    build(conf)
    summary = train(conf)
    assert summary["status"] == "completed" and summary["steps_done"] == 5, summary.get("error")
    h = pd.read_csv(sweep_dir(conf) / summary["run_id"] / "history.csv")
    assert len(h) == 5 and (h["grad_norm_clipped"] <= h["grad_norm"] * (1 + 1e-6)).all()


@pytest.mark.parametrize(
    "mode,knob,values",
    [
        ("autoclip", "clip_percentile", [5, 10]),
        ("autoclip", "autoclip_window", [0, 50]),
        ("agc", "agc_lambda", [0.01, 0.02]),
        ("zclip", "zclip_z", [2.5, 3]),
        ("norm_per_layer", "max_norm", [1, 5]),
        ("agc", "agc_units", ["nfnets", "first_nonsingleton"]),
        ("autoclip", "autoclip_scope", ["global", "per_parameter"]),
        ("autoclip", "autoclip_current", [True, False]),
    ],
)
def test_knobs_sweep_by_their_top_level_names(compose, mode, knob, values):
    jobs = expand([f"clip={mode}", f"{knob}={','.join(map(str, values))}"])
    assert [compose(*job)["clip"][knob] for job in jobs] == values


# --- bad knobs


BAD = [
    ("autoclip", "clip_percentile", 0),
    ("autoclip", "clip_percentile", 100.5),
    ("autoclip", "clip_percentile", -5),
    ("autoclip", "clip_percentile", "ten"),
    ("autoclip", "autoclip_window", 1),
    ("autoclip", "autoclip_window", -1),
    ("autoclip", "autoclip_window", 2.5),
    ("agc", "agc_lambda", 0),
    ("agc", "agc_lambda", -0.01),
    ("agc", "agc_eps", 0),
    ("agc", "agc_eps", -1e-3),
    ("agc", "agc_exclude_final", "yes"),
    ("zclip", "zclip_alpha", 0),
    ("zclip", "zclip_alpha", 1),
    ("zclip", "zclip_alpha", 1.5),
    ("zclip", "zclip_warmup", 0),
    ("zclip", "zclip_warmup", 2.5),
    ("zclip", "zclip_z", 0),
    ("zclip", "zclip_z", -1),
    ("zclip", "zclip_max_norm", 0),
    ("zclip", "zclip_max_norm", -1),
    ("norm_per_layer", "max_norm", 0),
    ("agc", "agc_units", "rows"),
    ("autoclip", "autoclip_current", "no"),
    ("autoclip", "autoclip_scope", "layer"),
    ("autoclip", "autoclip_scope", "per_parameter"),  # without the model, whose tensors it counts
]


@pytest.mark.parametrize("mode,key,value", BAD)
def test_bad_knob_fails_in_one_line_naming_the_key(mode, key, value):
    with pytest.raises(ConfigError) as err:
        strategy(mode, **{key: value})
    assert str(err.value).startswith(f"{key}=") and "\n" not in str(err.value)


def test_defaults_are_the_papers_settings(compose):
    """autoclip: the paper's (whole history, this step's norm included, one global norm); agc: the
    NFNets code's units; zclip: the authors' constructor's hard cap, max_grad_norm=1.0."""
    assert {k: v for k, v in compose("clip=autoclip")["clip"].items() if k.startswith("autoclip")} == {
        "autoclip_window": 0,
        "autoclip_current": True,
        "autoclip_scope": "global",
    }
    assert compose("clip=agc")["clip"]["agc_units"] == "nfnets"
    assert compose("clip=zclip")["clip"]["zclip_max_norm"] == 1.0


def test_bad_knob_on_the_command_line_fails_at_build(compose):
    with pytest.raises(ConfigError, match=r"^clip_percentile=0: must be a number in \(0, 100\]$"):
        build(compose(*SMALL["mlp"], "clip=autoclip", "clip_percentile=0"))


def _layer_fractions(conf) -> pd.DataFrame:
    """layer_norms.csv of the run (a row per layer and step), made with a layer record every step."""
    from gradlab.config import run_id, sweep_dir
    from gradlab.train import train

    assert train(conf)["status"] == "completed"
    return pd.read_csv(sweep_dir(conf) / run_id(conf) / "layer_norms.csv")


def test_per_layer_clip_fractions_of_norm_per_layer_follow_the_recorded_norms(compose):
    """A tensor is clipped at a step exactly when its pre-clip norm exceeds max_norm: its clip
    fraction at step t is the share of steps 1..t at which that happened."""
    layers = _layer_fractions(
        compose(
            "model=mlp",
            "task=regression",
            "steps=12",
            "layer_norms_every=1",
            "clip=norm_per_layer",
            "max_norm=0.05",
            "wandb=off",
        )
    )
    expected = (
        layers.assign(over=layers["grad_norm"] > 0.05)
        .groupby("layer")["over"]
        .transform(lambda over: over.cumsum() / np.arange(1, len(over) + 1))
    )
    over = layers["grad_norm"] > 0.05
    assert over.any() and not over.all()  # tensors clipped and tensors not: the test has a subject
    np.testing.assert_allclose(layers["clip_fraction"], expected, rtol=1e-6)


@pytest.mark.parametrize("lam,fraction", [(1e-9, 1.0), (1e9, 0.0)])
def test_per_layer_clip_fractions_of_agc(compose, lam, fraction):
    """agc_lambda 1e-9: every unit of every tensor but the output layer's is clipped at every step
    (fraction 1); 1e9: none ever is (0). The output layer is never clipped (agc_exclude_final)."""
    layers = _layer_fractions(
        compose(
            "model=mlp",
            "task=regression",
            "steps=6",
            "layer_norms_every=1",
            "clip=agc",
            f"agc_lambda={lam}",
            "wandb=off",
        )
    )
    head = layers["layer"].str.startswith(layers["layer"].iloc[-1].rsplit(".", 1)[0] + ".")
    assert layers["clip_fraction"].notna().all()
    assert (layers.loc[~head, "clip_fraction"] == fraction).all() and (
        layers.loc[head, "clip_fraction"] == 0
    ).all()
