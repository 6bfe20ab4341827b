"""Components by `_target_`: every model, task, clip mode and optimizer config names its class.

    model:                                  # conf/model/lstm.yaml, or a user's own config
      _target_: gradlab.models.rnn.RecurrentNet
      name: lstm                            # gradlab's own keys (RESERVED) are read by gradlab,
      lr: 3.0e-3                            # not passed to the class
      hidden_size: 128                      # every other key is a keyword argument of the class

The class is built with `hydra.utils.instantiate`. Before that, its knobs are checked against
its signature, so a misspelt knob, a missing one or a class that cannot be imported is one
line (ConfigError) at setup, never a traceback mid-run. Run-time values that are not
configuration (a model's task spec, a clip mode's norm type) go in as `context`: each is
passed only when the class's signature takes it.
"""

from __future__ import annotations

import functools
import inspect
from importlib import resources

from gradlab.errors import ConfigError

GROUPS = ("model", "task", "clip", "optim")
# keys of a component config that gradlab reads itself, per group
RESERVED = {
    "model": ("name", "lr"),
    "task": ("name", "steps", "batch_size"),
    "clip": ("mode",),
    "optim": ("name", "schedule", "warmup_steps"),
}
HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_args_")  # read by instantiate itself


def target(group: str, cfg: dict) -> str:
    """The class path of a component config; ConfigError when it names none."""
    path = cfg.get("_target_")
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(
            f"{group}._target_={path}: name the class as package.module.Class, "
            f"e.g. {group}._target_=mypkg.nets.Net"
        )
    return path


def label(group: str, cfg: dict) -> str:
    """What runs and tables call the component: its `name` (`mode` for clip), else its class in lower case."""
    named = cfg.get("mode" if group == "clip" else "name")
    return str(named) if named else target(group, cfg).rsplit(".", 1)[-1].lower()


def locate(group: str, cfg: dict):
    """The class (or factory) a config names; ConfigError naming what could not be imported."""
    import logging

    from hydra.utils import get_object

    path = target(group, cfg)
    said = logging.getLogger("hydra.utils")  # logs a failure as an error: the ConfigError below says it
    said.disabled, was = True, said.disabled
    try:
        return get_object(path)
    except Exception as e:  # ImportError inside the user's module, or a missing attribute
        cause = e.__cause__ or e
        raise ConfigError(
            f"{group}._target_={path}: cannot import it ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else ''}); is its package installed "
            "or on PYTHONPATH?"
        ) from None
    finally:
        said.disabled = was


def knobs(group: str, cfg: dict) -> dict:
    """The keyword arguments a config gives its class."""
    return {k: v for k, v in cfg.items() if k not in RESERVED.get(group, ()) and k not in HYDRA_KEYS}


def check(group: str, cfg: dict, context: dict = None) -> dict:
    """The config's knobs fit its class's signature: none unknown, none missing. The `context`
    values that the signature takes."""
    cls = locate(group, cfg)
    given, context = knobs(group, cfg), context or {}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a builtin without a signature: instantiate will say
        return context
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [
        n
        for n, p in params.items()
        if n not in context
        and n not in ("self", "params")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in given:
        if key not in accepted and not open_ended:
            raise ConfigError(
                f"{group}.{key}: unknown key for {group}={label(group, cfg)} "
                f"({target(group, cfg)}); allowed: {', '.join(accepted) or 'none'}"
            )
    missing = [
        n
        for n in accepted
        if params[n].default is inspect.Parameter.empty
        and n not in given
        and params[n].kind is not inspect.Parameter.VAR_POSITIONAL
    ]
    if missing:
        raise ConfigError(
            f"{group}.{missing[0]}: required by {target(group, cfg)}; set it with "
            f"+{group}.{missing[0]}=VALUE or in the {group}'s config"
        )
    return {k: v for k, v in context.items() if open_ended or k in params}


def build(group: str, cfg: dict, *args, **context):
    """The component a config describes: its class called with `args`, its knobs, and those
    `context` values that its signature takes."""
    from hydra.utils import instantiate

    taken = check(group, cfg, context)
    special = {k: cfg[k] for k in HYDRA_KEYS if k in cfg}
    # a partial first: context objects (a TaskSpec, the model) must not pass through OmegaConf
    factory = instantiate({**special, **knobs(group, cfg)}, _partial_=True, _convert_="all")
    try:
        return factory(*args, **taken)
    except ConfigError:
        raise
    except Exception as e:  # the class refused its knobs (torch's argument checks), or the user's code failed
        message = f"{type(e).__name__}: {e}".splitlines()[0]
        raise ConfigError(
            f"{group}={label(group, cfg)} ({target(group, cfg)}) could not be built: {message}"
        ) from e


def _stored(path: str) -> dict | None:
    """A config that gradlab.conf put in Hydra's ConfigStore (the clip modes', derived from their
    signatures), e.g. `clip/norm`; None if there is none."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    resources.files("gradlab.conf")  # loading the package stores its configs
    try:
        return OmegaConf.to_container(ConfigStore.instance().load(f"{path}.yaml").node)
    except Exception:  # hydra.errors.ConfigLoadError: not stored
        return None


def _config(group: str | None, name: str) -> dict:
    """One of gradlab's own configs, as written: a file in conf/, else a stored one."""
    import yaml

    folder = resources.files("gradlab.conf")
    f = folder.joinpath(group, f"{name}.yaml") if group else folder.joinpath(f"{name}.yaml")
    return yaml.safe_load(f.read_text()) if f.is_file() else _stored(f"{group}/{name}" if group else name)


def options(group: str) -> list[str]:
    """gradlab's own options of a group: the names of conf/<group>/*.yaml and of the stored configs."""
    from hydra.core.config_store import ConfigStore

    folder = resources.files("gradlab.conf") / group
    files = [f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml")] if folder.is_dir() else []
    stored = ConfigStore.instance().repo.get(group, {})
    return sorted({*files, *(n[:-5] for n in stored if n.endswith(".yaml"))})


def option(group: str, name: str, **changes) -> dict:
    """The config of one of gradlab's own options, with the defaults of the top-level keys it reads
    (`max_norm: ${max_norm}`), and `changes` on top: what `gradlab train {group}={name}` would
    build, for code that builds components itself."""
    if name not in options(group):
        raise ConfigError(f"{group}={name}: choose from {', '.join(options(group))}")
    top = {**_config(None, "config"), **_config(None, "clip_knobs")}
    cfg = _config(group, name)
    cfg.pop("defaults", None)
    resolved = {k: top[v[2:-1]] if isinstance(v, str) and v.startswith("${") else v for k, v in cfg.items()}
    return {**resolved, **changes}


@functools.cache
def shipped_targets() -> frozenset:
    """The classes of gradlab's own options: named by their option, so their `_target_` is not
    part of a run's identity."""
    found = {_config(group, name).get("_target_") for group in GROUPS for name in options(group)}
    return frozenset(found - {None, "???"})
