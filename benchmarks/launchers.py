"""Wall time of one 8-run sweep under the basic launcher vs launcher=local (joblib).

    python benchmarks/launchers.py [REPEATS] [-- EXTRA OVERRIDES]

The sweep is the main job's LSTM on the adding problem, 4 norm thresholds x 2 seeds,
started as a user starts it (`gradlab sweep`, a fresh process and results folder each
time), W&B offline. The two launchers alternate; medians over the repeats.
"""

import statistics
import subprocess
import sys
import tempfile
import time

SWEEP = ["sweep", "model=lstm", "clip=norm", "max_norm=0.5,1,2,5", "seed=0,1", "steps=300", "progress=none"]
LAUNCHERS = {"basic": [], "local": ["launcher=local"]}


def wall_time(args: list[str]) -> float:
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gradlab", *args, f"results_root={root}"], check=True)
        return time.perf_counter() - start


def main(repeats: int, extra: list[str]) -> None:
    times = {name: [] for name in LAUNCHERS}
    for _ in range(repeats):
        for name, launcher in LAUNCHERS.items():
            times[name].append(wall_time([*SWEEP, *launcher, *extra]))
    basic = statistics.median(times["basic"])
    print(f"8-run sweep ({' '.join(SWEEP[1:] + extra)}), median of {repeats}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<6} {median:7.1f} s   {basic / median:4.2f}x   (runs: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    args = sys.argv[1:]
    extra = args[args.index("--") + 1:] if "--" in args else []
    main(int(args[0]) if args and args[0] != "--" else 3, extra)
