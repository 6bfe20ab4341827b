"""Wall time of one 8-run sweep (4 norm thresholds x 2 seeds) with the basic launcher vs launcher=local.

    python benchmarks/launchers.py [MODEL] [STEPS] [REPEATS]     (default: lstm 300 3)

Each sweep is a fresh `gradlab sweep` process writing to a fresh folder, W&B offline; the
launchers alternate; medians over the repeats. `gradlab bench --only sweep` is the 16-run version.
"""

import sys

from gradlab.bench import sweep_throughput

model, steps, repeats = (sys.argv[1:] + ["lstm", "300", "3"][len(sys.argv) - 1 :])[:3]
result = sweep_throughput(model, int(steps), int(repeats), seeds=2)
print(f"8-run sweep, model={model}, {steps} steps per run, median of {repeats}:")
for name, seconds in result["seconds"].items():
    print(f"  {name:<10} {seconds:7.1f} s   {result['vs_sequential'][name]:4.2f}x")
