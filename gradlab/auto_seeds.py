"""`gradlab sweep ... seed=auto`: a sweep's seeds in batches until its paired comparison is decided.

After each batch of seeds (0, 1, ... in batches of `batch`, up to `cap`), each setting of the
sweep (a row of `gradlab compare`, its seeds pooled) is compared with the best one, seed by seed,
by the group-sequential design of gradlab/stats.py (`Sequential`): the paired difference gets a
repeated 95% interval under an O'Brien-Fleming alpha-spending boundary, so that all looks
together keep 95%. A row is "different" when its interval excludes 0, and "equivalent" when it lies
within +-effect (only with an effect: the smallest difference of the metric that matters). The
sweep stops when every row is decided at one look, or at the cap.
"""

from __future__ import annotations

from gradlab.errors import ConfigError

AUTO = "seed=auto"


def sweep(
    overrides: list[str], batch: int, cap: int, effect: float | None, metric: str, dry_run: bool
) -> dict:
    """Run the sweep `overrides` (one of them seed=auto) batch by batch; its runs' counts, all batches."""
    from gradlab import launch
    from gradlab.compare import compare, load_runs
    from gradlab.stats import Sequential
    from gradlab.sweep import default_name, key_of

    design = Sequential(batch, cap)
    try:
        looks = design.looks()
    except ValueError as e:
        raise ConfigError(f"seed=auto: {e}") from None
    if effect is not None and not effect > 0:
        raise ConfigError(f"--effect {effect}: the smallest difference that matters, a number > 0")
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
        comparison = compare(load_runs(swept.runs), metric=metric)
        decisions = decide(comparison, design, n, effect)
        print(f"seed=auto, {n} seeds, {comparison.metric} against the best row:", flush=True)
        for label, look in decisions:
            print(f"  {label}: {look}", flush=True)
        if not decisions:
            print("seed=auto: one setting, nothing to compare: no more seeds")
            break
        if all(look.decision in ("different", "equivalent") for _, look in decisions):
            print(f"seed=auto: every row decided at {n} seeds")
            break
    else:
        print(f"seed=auto: the cap of {cap} seeds reached, some rows undecided")
    return counts


def decide(comparison, design, n: int, effect: float | None) -> list[tuple[str, object]]:
    """Each row but the best against the best, at this look: (its label, the Look)."""
    from gradlab.compare import by_seed

    table, members, metric = comparison.table, comparison.members, comparison.metric
    best = table.index[table["best"] == "*"]
    if len(best) != 1:
        return []
    a = by_seed(members[best[0]], metric)
    found = []
    for i in table.index.drop(best[0]):
        b = by_seed(members[i], metric)
        label = ", ".join(f"{k}={table.at[i, k]}" for k in comparison.by) or "the row"
        pairs = 0 if a is None or b is None else len((b - a).dropna())
        found.append((label, design.look(a, b, effect) if pairs == n else Unpaired(pairs, n)))
    return found


class Unpaired:
    """A row that cannot be looked at: fewer of the look's seeds completed in it and in the best row."""

    decision = "continue"

    def __init__(self, pairs: int, n: int):
        self.pairs, self.n = pairs, n

    def __str__(self) -> str:
        return f"not compared: {self.pairs} of {self.n} seeds completed in this row and the best one"
