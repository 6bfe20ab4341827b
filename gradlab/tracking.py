"""Weights & Biases logging: one W&B run per gradlab run, comparable in the dashboard.

- id = derived from the run's folder (its sweep and run id), so a re-run, continued or
  `--force`d, logs to the same W&B run instead of adding one; group = the sweep, job_type =
  the model, name = the run's readable name, tags = model, task and clip mode, config = what
  determines the run's numbers, flattened to dotted keys (`clip.mode`, `clip.max_norm`,
  `model.hidden_size`, ...): its own clip mode's knobs only, each value under one key.
- One point per log interval on the `step` axis (the optimizer step): interval means of
  loss and pre-/post-clip gradient norms, the interval's largest norm, clip coefficient
  and fraction, lr, scaler skips, throughput; eval metrics, per-layer norms
  (`layers/...`) and a histogram of recent gradient norms when they are due. A figure the
  task does not have (eval/acc of a regression) is not logged.
- The summary is the run record's summary alone (status, final and best figures): the
  series are declared with `define_metric(summary="none")`, so W&B adds no "last value"
  of its own beside them.
- The W&B files live in the run's own folder (`<run>/wandb/`), so `wandb sync` of a
  sweep's folders uploads every run.

W&B's environment variables count where gradlab's keys are left at their defaults:
WANDB_MODE (and WANDB_DISABLED) under `wandb=auto`, WANDB_PROJECT and WANDB_ENTITY under a
null `logger.wandb.project`/`entity`, WANDB_RUN_GROUP and WANDB_JOB_TYPE instead of the sweep
and the model, WANDB_TAGS beside gradlab's tags. Modes: `auto` is online with credentials and
offline without; an online run whose server cannot be reached at start falls back to
offline. Logging never fails a run, except a local write error (disk full), which is the
run's own failure.
"""

from __future__ import annotations

import hashlib
import math
import netrc
import os
import sys
from urllib.parse import urlsplit

from gradlab import figures
from gradlab.config import NOT_IDENTITY, SWITCHED, clip_label, display_name
from gradlab.errors import ConfigError, bad, positive

MODES = ("auto", "online", "offline", "disabled")
ALIASES = {"off": "disabled", False: "disabled", "false": "disabled", "dryrun": "offline"}
PROJECT = "gradlab"  # the project when neither logger.wandb.project nor WANDB_PROJECT names one
# keys whose values are defaults of top-level keys (conf/config.yaml: steps, batch_size, lr): the
# run's config shows the value it ran with, once
DEFAULT_SOURCES = ("task.steps", "task.batch_size", "model.lr")


def has_credentials() -> bool:
    """A W&B API key in the environment or in the netrc file for the configured host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(requested) -> str:
    """online | offline | disabled, from the configured mode (`auto`: WANDB_MODE, or WANDB_DISABLED,
    when set); ConfigError where impossible."""
    mode = ALIASES.get(requested, requested)
    if mode not in MODES:
        raise bad("logger.wandb.mode", requested, f"choose from {', '.join(MODES)} (or wandb=off)")
    if mode == "auto" and os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    if mode == "auto" and os.environ.get("WANDB_MODE"):
        mode = ALIASES.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
        if mode not in MODES[1:]:
            raise bad("WANDB_MODE", os.environ["WANDB_MODE"], "choose from online, offline, disabled")
    if mode == "auto":
        return "online" if has_credentials() else "offline"
    if mode == "online" and not has_credentials():
        raise ConfigError(
            "logger.wandb.mode=online: no W&B credentials; run `wandb login` or set WANDB_API_KEY "
            "(or use wandb=offline and `wandb sync` later)"
        )
    return mode


def check_settings(settings: dict) -> str:
    """The logger.wandb settings checked (ConfigError naming the key); the mode they resolve to."""
    if settings["project"] is not None and (
        not isinstance(settings["project"], str) or not settings["project"]
    ):
        raise bad("logger.wandb.project", settings["project"], "must be a project name, or null")
    if settings["entity"] is not None and not isinstance(settings["entity"], str):
        raise bad("logger.wandb.entity", settings["entity"], "must be a user or team name, or null")
    every = settings["histogram_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise bad("logger.wandb.histogram_every", every, "must be an integer >= 0 (0 = off)")
    positive("logger.wandb.init_timeout", settings["init_timeout"], "must be a number of seconds > 0")
    return wandb_mode(settings["mode"])


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"clip": {"mode": "norm"}} -> {"clip.mode": "norm"}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_config(conf: dict) -> dict:
    """The W&B config of a run: what determines its numbers, flattened, each value once (the clip
    mode's knobs under clip.*, none of the other modes'; no knob of an option that is off), plus
    its sweep."""
    from gradlab.clip import short_names

    off = {knob for switch, knobs in SWITCHED.items() if not conf[switch] for knob in knobs}
    dropped = {*NOT_IDENTITY, *short_names(), *off}
    flat = flatten({k: v for k, v in conf.items() if k not in dropped})
    return {**{k: v for k, v in flat.items() if k not in DEFAULT_SOURCES}, "name": conf["name"]}


def wandb_id(sweep: str, run: str) -> str:
    """The W&B run id of a gradlab run: its id (or a digest of a long one) and its sweep's digest,
    the same every time the run is made, unique in a project across sweeps."""
    digest = hashlib.sha1(sweep.encode()).hexdigest()[:8]
    run = run if len(run) <= 64 else f"{run[:48]}-{hashlib.sha1(run.encode()).hexdigest()[:8]}"
    return f"{run}-{digest}"


def _names(settings: dict, group: str, job_type: str, tags: list) -> dict:
    """Project, entity, group, job_type and tags, W&B's environment variables counted (module doc)."""
    env = os.environ.get
    return dict(
        project=settings["project"] or env("WANDB_PROJECT") or PROJECT,
        entity=settings["entity"] or env("WANDB_ENTITY"),
        group=env("WANDB_RUN_GROUP") or group,
        job_type=env("WANDB_JOB_TYPE") or job_type,
        tags=[*tags, *(t.strip() for t in env("WANDB_TAGS", "").split(",") if t.strip())],
    )


def _init(settings: dict, mode: str, **run):
    """wandb.init with gradlab's settings: quiet, no console capture, no system-metrics sampling, and
    no list of the installed packages (it took half of a run's W&B cost here; the run's summary
    names the versions of gradlab, torch and Python)."""
    import wandb

    return wandb.init(
        mode=mode,
        reinit="create_new",
        resume="allow",  # the run's id is derived from its folder: a re-run logs to the same W&B run
        settings=wandb.Settings(
            silent=True,
            console="off",
            disable_git=True,
            save_code=False,
            x_disable_stats=True,
            x_save_requirements=False,
            init_timeout=settings["init_timeout"],
        ),
        **run,
    )


class Tracker:
    """The W&B side of one run. Every method is a no-op when W&B is disabled."""

    def __init__(self, conf: dict, run_dir, enabled: bool = True):
        self.settings = conf["logger"]["wandb"]
        self.mode = wandb_mode(self.settings["mode"]) if enabled else "disabled"
        self.conf, self.run_dir, self.run = conf, run_dir, None
        self.recent_norms: list = []  # pre-clip norms since the last histogram
        self.declared: set = set()  # keys with a dot, declared (define_metric) on their first point
        self.next_histogram = self.settings["histogram_every"]
        self.warned = False

    def start(self) -> None:
        if self.mode == "disabled":
            return
        import wandb

        from gradlab.config import run_id

        conf = self.conf
        tags = [conf["model"]["name"], conf["task"]["name"], conf["clip"]["mode"]]
        run = dict(
            **_names(self.settings, conf["name"], conf["model"]["name"], tags),
            id=wandb_id(conf["name"], run_id(conf)),
            dir=self.run_dir,
            name=display_name(conf),
            config=run_config(conf),
        )
        try:
            self.run = _init(self.settings, self.mode, **run)
        except wandb.errors.CommError as e:  # server unreachable: keep everything locally
            self._warn(f"W&B server unreachable ({str(e).splitlines()[0]}); logging offline")
            wandb.teardown()  # the failed online attempt still holds the run's id in wandb's service
            self.mode = "offline"
            self.run = _init(self.settings, self.mode, **run)
        self.run.define_metric("step", summary="none")
        self.run.define_metric("*", step_metric="step", summary="none")  # the summary: the record's

    def log(self, rows: list, layer_rows: list) -> None:
        """One log call for the rows of one interval (history dicts) and its per-layer norms."""
        if self.run is None or not rows:
            return
        point = figures.interval_point(rows)
        for _, name, norm, ratio, share in layer_rows:
            point.update({f"layers/{name}": norm, f"update_ratio/{name}": ratio})
            if math.isfinite(share):
                point[f"layer_clip_fraction/{name}"] = share
        self.recent_norms += [r["grad_norm"] for r in rows if math.isfinite(r["grad_norm"])]
        if self.next_histogram and rows[-1]["step"] >= self.next_histogram and self.recent_norms:
            import wandb

            point["grad/norm_histogram"] = wandb.Histogram(self.recent_norms)
            self.recent_norms = []
            self.next_histogram += self.settings["histogram_every"]
        for key in [k for k in point if "." in k and k not in self.declared]:
            # W&B reads a dot as nesting, which the "*" glob does not reach: a layer's key
            # (layers/rnn.weight_hh_l0) is declared on its own, the dot escaped
            self._guard(self.run.define_metric, key.replace(".", "\\."), step_metric="step", summary="none")
            self.declared.add(key)
        self._guard(self.run.log, point)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        shown = {k: v for k, v in flatten(summary).items() if v is not None}
        shown["clip"] = clip_label(self.conf)
        self._guard(self.run.summary.update, shown)
        self._guard(self.run.finish, exit_code=0 if summary["status"] != "failed" else 1)
        self.run = None

    def _guard(self, call, *args, **kwargs) -> None:
        """W&B trouble never fails the run; a local write error (OSError: disk full) does."""
        try:
            call(*args, **kwargs)
        except OSError:
            raise
        except Exception as e:  # wandb raises its own error types, varying by version
            self._warn(f"W&B logging failed ({type(e).__name__}: {e}); the local record goes on")
            self.run = None

    def _warn(self, message: str) -> None:
        if not self.warned:
            print(f"warning: {message}", file=sys.stderr, flush=True)
            self.warned = True


def log_report(group: str, tables: dict, images: dict, settings: dict, out_dir) -> str | None:
    """Log comparison tables (name -> DataFrame) and plots (name -> PNG path) as one W&B run of
    job_type `report` in the sweep's group; returns its offline folder, if offline."""
    mode = wandb_mode(settings["mode"])
    if mode == "disabled":
        return None
    import wandb

    names = _names(settings, group, "report", [])
    run = _init(settings, mode, **names, id=wandb_id(group, "report"), dir=out_dir, name=f"{group}-report")
    run.log(
        {
            **{name: wandb.Table(dataframe=df) for name, df in tables.items()},
            **{name: wandb.Image(str(path)) for name, path in images.items()},
        }
    )
    run.finish()
    return os.fspath(out_dir) if mode == "offline" else None
