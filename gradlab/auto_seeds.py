"""`gradlab sweep ... seed=auto`: a sweep's seeds in batches until its paired comparison is decided.

After each batch of seeds (0, 1, ... in batches of `batch`, up to `cap`), each setting of the
sweep (a row of `gradlab compare`, its seeds pooled) is compared with the best one, seed by seed,
by the group-sequential design of gradlab/stats.py (`Sequential`): the paired difference gets a
repeated 95% interval under an O'Brien-Fleming alpha-spending boundary, so that all looks
together keep 95%. A row is "different" when its interval excludes 0, and "equivalent" when it lies
within +-effect (only with an effect: the smallest difference of the metric that matters). The
sweep stops when every row is decided at one look, or at the cap. The design is written beside the
runs (compare.DESIGN), so that `gradlab compare --paired` on the folder shows the same intervals.
"""

from __future__ import annotations

from pathlib import Path

from gradlab.errors import ConfigError

AUTO = "seed=auto"


def sweep(
    overrides: list[str], batch: int, cap: int, effect: float | None, metric: str, dry_run: bool
) -> dict:
    """Run the sweep `overrides` (one of them seed=auto) batch by batch; its runs' counts, all batches."""
    from gradlab import launch
    from gradlab.compare import Design, compare, load_runs, paired_text
    from gradlab.stats import Sequential
    from gradlab.sweep import default_name, key_of

    try:
        looks = Sequential(batch, cap).looks()
    except ValueError as e:
        raise ConfigError(f"seed=auto: {e}") from None
    if effect is not None and not effect > 0:
        raise ConfigError(f"--effect {effect}: the smallest difference that matters, a number > 0")
    design = Design(batch, cap, effect, metric)
    rest = [o for o in overrides if o != AUTO]
    if not any(key_of(o) == "name" for o in rest):
        rest.append(f"name='{default_name(overrides)}'")  # one folder for every batch (quoted: commas)
    counts: dict[str, int] = {}
    for n in looks:
        swept = launch.sweep([*rest, f"seed=range(0,{n})"], dry_run=dry_run)
        if dry_run:
            print(f"seed=auto: seeds in batches of {batch} (looks at {', '.join(map(str, looks))} seeds)")
            return {}
        for status, k in swept.counts.items():
            counts[status] = counts.get(status, 0) + k
        design.write(Path(swept.runs[0]).parent)  # `gradlab compare --paired` then reads it
        comparison = compare(load_runs(swept.runs), metric=metric, paired=True, design=design)
        rows = comparison.table[comparison.table["best"] != "*"]
        print(f"seed=auto, {n} seeds, {comparison.metric} against the best row:", flush=True)
        for _, row in rows.iterrows():
            label = ", ".join(f"{k}={row[k]}" for k in comparison.by) or "the row"
            print(f"  {label}: {paired_text(row, comparison.metric)}", flush=True)
        if rows.empty:
            print("seed=auto: one setting, nothing to compare: no more seeds")
            break
        if rows["vs_best_decision"].isin(["different", "equivalent"]).all():
            print(f"seed=auto: every row decided at {n} seeds")
            break
    else:
        print(f"seed=auto: the cap of {cap} seeds reached, some rows undecided")
    return counts
