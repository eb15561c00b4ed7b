"""Every routing policy against the central-queue bound, in simulation; prints markdown.

Speeds 1,1,1,1,2,2,4,8, exponential service, loads 0.5/0.8/0.9/0.95, under fresh
information and heartbeats 2 and 10 service times old in both information models of
dispatcher/simulator.py: "heartbeat" (queued counts current, `running` and utilization
from each node's own heartbeat: what the real dispatcher reads) and "bulletin" (the whole
state refreshed for all nodes together: the harsher case). Every policy runs with late
binding (capacity 1 + prefetch 2); shortest-expected-delay also runs with unbounded node
queues (immediate dispatch). Then the default policy with prefetch 0, 1 and 2, and the
issue's target at load 0.9 over several seeds. Cells are mean / p99 time in system in mean
service times of a speed-1 node. All policies of a seed see the same jobs. Writes nothing
but stdout.

    python bench/simulate_policies.py [--jobs 100000] [--workers 2] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpufleet.dispatcher.routing.policies import DEFAULT_POLICY, POLICY_NAMES
from gpufleet.dispatcher.sim.simulator import CENTRAL_QUEUE, SimConfig, simulate

SPEEDS = (1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 8.0)
LOADS = (0.5, 0.8, 0.9, 0.95)
TARGET_LOAD = 0.9
INFOS = (("heartbeat", 0.0), ("heartbeat", 2.0), ("heartbeat", 10.0), ("bulletin", 2.0), ("bulletin", 10.0))
PREFETCHES = (0, 1, 2)
UNBOUNDED = f"{DEFAULT_POLICY} (max-node-queue 0)"
ROWS = (CENTRAL_QUEUE, *POLICY_NAMES, UNBOUNDED)

# (row, model, stale, prefetch, load, jobs, seed)
Case = tuple[str, str, float, int, float, int, int]


def label(model: str, stale: float) -> str:
    return "fresh" if stale == 0 else f"{model} model, stale {stale:g}"


def run(case: Case) -> tuple[Case, float, float]:
    row, model, stale, prefetch, load, jobs, seed = case
    policy, bound = (DEFAULT_POLICY, 0) if row == UNBOUNDED else (row, None)
    cfg = SimConfig(policy=policy, speeds=SPEEDS, load=load, jobs=jobs, stale=stale, stale_model=model,
                    max_node_queue=bound, prefetch=prefetch, seed=seed)  # fmt: skip
    r = simulate(cfg)
    return case, r.mean, r.p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="Jobs per run.")
    parser.add_argument("--seeds", default="1,2,3", help="Seeds for the target table; the first one for all others.")
    parser.add_argument("--workers", type=int, default=2, help="Processes to run cases in.")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    seed, jobs = seeds[0], args.jobs
    cases: set[Case] = set()
    for model, stale in INFOS:
        cases |= {(row, model, stale, 2, load, jobs, seed) for row in ROWS for load in LOADS}
        cases |= {(DEFAULT_POLICY, model, stale, p, load, jobs, seed) for p in PREFETCHES for load in LOADS}
        cases |= {(DEFAULT_POLICY, model, stale, p, TARGET_LOAD, jobs, s) for p in PREFETCHES for s in seeds}
    cases |= {(CENTRAL_QUEUE, "heartbeat", 0.0, 2, TARGET_LOAD, jobs, s) for s in seeds}
    with Pool(args.workers) as pool:
        res = {case: (mean, p99) for case, mean, p99 in pool.imap_unordered(run, sorted(cases), chunksize=1)}

    def cell(row: str, model: str, stale: float, load: float, prefetch: int = 2, s: int = seed) -> tuple[float, float]:
        if row == CENTRAL_QUEUE:  # needs no heartbeat: one run serves every table
            model, stale = "heartbeat", 0.0
        return res[(row, model, stale, prefetch, load, jobs, s)]

    def fmt(mean_p99: tuple[float, float]) -> str:
        return f"{mean_p99[0]:.2f} / {mean_p99[1]:.2f}"

    print(f"Speeds {','.join(f'{s:g}' for s in SPEEDS)}; exponential service; {jobs:,} jobs per run "
          f"(first 10% warm-up dropped); seed {seed}. Cells: mean / p99 time in system.\n")
    for model, stale in INFOS:
        print(f"### {label(model, stale)}\n")
        print("| policy | " + " | ".join(f"load {load}" for load in LOADS) + " |")
        print("|---|" + "---|" * len(LOADS))
        for row in ROWS:
            print(f"| {row} | " + " | ".join(fmt(cell(row, model, stale, load)) for load in LOADS) + " |")
        print()

    print(f"### Prefetch: {DEFAULT_POLICY} with late binding (capacity 1 + prefetch), seed {seed}\n")
    print("| information | prefetch | " + " | ".join(f"load {load}" for load in LOADS) + " |")
    print("|---|---|" + "---|" * len(LOADS))
    for model, stale in INFOS:
        for p in PREFETCHES:
            cells = " | ".join(fmt(cell(DEFAULT_POLICY, model, stale, load, p)) for load in LOADS)
            print(f"| {label(model, stale)} | {p} | {cells} |")
    print(f"| (central queue) | - | {' | '.join(fmt(cell(CENTRAL_QUEUE, '', 0, load)) for load in LOADS)} |\n")

    print(f"### Target: {DEFAULT_POLICY} with late binding at load {TARGET_LOAD}, against the central queue\n")
    print(f"Ratios per seed ({', '.join(map(str, seeds))}); met = mean <= 1.25x and p99 <= 1.5x for every seed.\n")
    print("| information | prefetch | mean ratio | p99 ratio | met |")
    print("|---|---|---|---|---|")
    for model, stale in INFOS:
        for p in PREFETCHES:
            ratios = []
            for s in seeds:
                cq_mean, cq_p99 = cell(CENTRAL_QUEUE, "", 0, TARGET_LOAD, s=s)
                mean, p99 = cell(DEFAULT_POLICY, model, stale, TARGET_LOAD, p, s)
                ratios.append((mean / cq_mean, p99 / cq_p99))
            met = "yes" if all(m <= 1.25 and q <= 1.5 for m, q in ratios) else "no"
            means = " / ".join(f"{m:.2f}" if m < 100 else f"{m:.0f}" for m, _ in ratios)
            p99s = " / ".join(f"{q:.2f}" if q < 100 else f"{q:.0f}" for _, q in ratios)
            print(f"| {label(model, stale)} | {p} | {means} | {p99s} | {met} |")


if __name__ == "__main__":
    main()
