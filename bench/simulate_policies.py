"""Every routing policy against the central-queue bound, in simulation; prints markdown.

Speeds 1,1,1,1,2,2,4,8, exponential service, loads 0.5/0.8/0.9/0.95, heartbeats fresh
and 2 and 10 service times old. Every policy runs with late binding (capacity 1 +
prefetch 2); shortest-expected-delay also runs with unbounded node queues (immediate
dispatch). Cells are mean / p99 time in system in mean service times of a speed-1 node.
Every run uses the same seed, so all policies see the same jobs. Writes nothing but stdout.

    python bench/simulate_policies.py [--jobs 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatcher.policies import DEFAULT_POLICY, POLICY_NAMES  # noqa: E402
from dispatcher.simulator import CENTRAL_QUEUE, SimConfig, simulate  # noqa: E402

SPEEDS = (1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 8.0)
LOADS = (0.5, 0.8, 0.9, 0.95)
STALENESS = (0.0, 2.0, 10.0)
UNBOUNDED = f"{DEFAULT_POLICY} (max-node-queue 0)"
ROWS = (CENTRAL_QUEUE, *POLICY_NAMES, UNBOUNDED)

Case = tuple[str, float, float, int, int]


def run(case: Case) -> tuple[Case, float, float]:
    row, load, stale, jobs, seed = case
    policy, bound = (DEFAULT_POLICY, 0) if row == UNBOUNDED else (row, None)
    r = simulate(SimConfig(policy=policy, speeds=SPEEDS, load=load, jobs=jobs, stale=stale, max_node_queue=bound, seed=seed))
    return case, r.mean, r.p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="Jobs per run.")
    parser.add_argument("--seed", type=int, default=1, help="The seed every run shares.")
    parser.add_argument("--workers", type=int, default=2, help="Processes to run cases in.")
    args = parser.parse_args()
    cases = [(row, load, stale, args.jobs, args.seed) for stale in STALENESS for row in ROWS for load in LOADS]
    with Pool(args.workers) as pool:
        results = {case[:3]: (mean, p99) for case, mean, p99 in pool.map(run, cases)}

    print(f"Speeds {','.join(f'{s:g}' for s in SPEEDS)}; exponential service; {args.jobs:,} jobs per run "
          f"(first 10% warm-up dropped); seed {args.seed}. Cells: mean / p99 time in system.\n")
    for stale in STALENESS:
        print(f"### Heartbeats {'fresh' if stale == 0 else f'{stale:g} service times old'}\n")
        print("| policy | " + " | ".join(f"load {load}" for load in LOADS) + " |")
        print("|---|" + "---|" * len(LOADS))
        for row in ROWS:
            cells = [f"{results[(row, load, stale)][0]:.2f} / {results[(row, load, stale)][1]:.2f}" for load in LOADS]
            print(f"| {row} | " + " | ".join(cells) + " |")
        print()
    print("### Target: default policy with late binding at load 0.9, against the central queue\n")
    print("| heartbeats | mean ratio (target <= 1.25) | p99 ratio (target <= 1.5) | met |")
    print("|---|---|---|---|")
    for stale in STALENESS:
        cq_mean, cq_p99 = results[(CENTRAL_QUEUE, 0.9, stale)]
        mean, p99 = results[(DEFAULT_POLICY, 0.9, stale)]
        met = "yes" if mean <= 1.25 * cq_mean and p99 <= 1.5 * cq_p99 else "no"
        label = "fresh" if stale == 0 else f"stale {stale:g}"
        print(f"| {label} | {mean / cq_mean:.2f} | {p99 / cq_p99:.2f} | {met} |")


if __name__ == "__main__":
    main()
