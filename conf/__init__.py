"""gradlab's configs: the YAML files here, and the clip modes' configs, which come from the modes'
own signatures (gradlab.clip.declared) and are put in Hydra's ConfigStore when this package is
loaded, as Hydra loads it to read the files:

- `clip/<mode>` for each mode of gradlab.clip.MODES: its `_target_`, `mode` and each knob read
  from its top-level short name (`max_norm: ${max_norm}`);
- `clip_knobs`, merged into config.yaml (its defaults list): the short names with their defaults
  (`max_norm: 1.0`), so that `gradlab sweep max_norm=1,5` sets them by name.
"""

from hydra.core.config_store import ConfigStore

from gradlab import clip


def _store() -> None:
    store = ConfigStore.instance()
    for mode in clip.MODES:
        store.store(group="clip", name=mode, node=clip.node(mode))
    store.store(name="clip_knobs", node={name: default for name, (default, _) in clip.short_names().items()})


_store()
