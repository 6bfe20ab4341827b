"""How long `gradlab compare` takes on 1,000 run records (a timing, so a benchmark, not a test).

    python benchmarks/load_records.py [N]

Writes N records shaped like real ones (config.yaml, summary.json, a 200-step history.csv)
into a temporary folder, then times loading them and building the comparison table,
median of 3 repeats.
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gradlab.compare import compare, load_runs
from gradlab.config import plain, run_id
from gradlab.launch import compose_all


def make_records(root: Path, n: int) -> None:
    base = plain(compose_all([["model=lstm", "clip=norm"]])[0])
    rng = np.random.default_rng(0)
    history = pd.DataFrame({"step": np.arange(1, 201), "loss": rng.random(200), "grad_norm": rng.random(200)})
    for i in range(n):
        conf = {
            **base,
            "seed": i % 10,
            "max_norm": [0.25, 0.5, 1, 2, 5][i // 10 % 5],
            "clip": {"mode": "norm", "max_norm": [0.25, 0.5, 1, 2, 5][i // 10 % 5]},
            "lr": 10 ** -(1 + i // 50 % 20),
        }
        run = root / "sweep" / f"{run_id(conf)}-{i}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
        history.to_csv(run / "history.csv", index=False)
        (run / "summary.json").write_text(
            json.dumps(
                {
                    "status": "completed",
                    "name": run.name,
                    "sweep": "sweep",
                    "seed": conf["seed"],
                    "eval_loss_final": float(rng.random()),
                    "train_loss_final": float(rng.random()),
                    "train_loss_best": float(rng.random()),
                    "grad_norm_mean": 1.0,
                    "grad_norm_max": 3.0,
                    "clip_fraction": 0.5,
                    "steps_per_s": 100.0,
                }
            )
        )


def main(n: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        make_records(Path(tmp), n)
        load, table = [], []
        for _ in range(3):
            start = time.perf_counter()
            runs = load_runs([tmp])
            load.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = compare(runs)
            table.append(time.perf_counter() - start)
        print(
            f"{n} records: load {statistics.median(load):.2f} s, table {statistics.median(table):.2f} s "
            f"(median of 3; {len(result.table)} groups)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
