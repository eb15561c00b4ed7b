"""Every routing policy on the mixed fleet against the central queue and the optimum; prints markdown.

Speeds 1,1,1,1,2,2,4,8, exponential service, loads 0.5/0.7/0.9/0.95. "x central" divides a
policy's simulated mean by the central queue's in the same run (same jobs: common random
numbers). "x optimal" is that ratio times the exact central / optimal ratio of
bench/mdp_optimum.py (the full Markov decision problem), which cancels the simulation's own
sampling error at high load (the simulated central queue reads up to 5% above its exact mean
at 0.9 over 100,000 jobs). Cells: mean (x central, x optimal); p99 is given against the
central queue's p99. Two information models: fresh (instant dispatch, the MDP's own setting)
and the real dispatcher loop (`--stale-model loop`: 3 ms dispatch latency, 150 ms snapshots,
EWMA service times sent once a second) for jobs of 0.5 s and 50 ms on a speed-1 node, with no
per-job overhead (`--job-overhead-s 0`), so the fleet has the optimum's capacity and only
the information differs.

    python bench/mixed_fleet.py [--jobs 100000] [--loop-jobs 20000] [--seed 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mdp_optimum import optimum  # type: ignore[import-not-found]

from gpufleet.dispatcher.routing.policies import DEFAULT_POLICY, POLICY_NAMES
from gpufleet.dispatcher.sim.simulator import CENTRAL_QUEUE, SimConfig, simulate

SPEEDS = (1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 4.0, 8.0)
LOADS = (0.5, 0.7, 0.9, 0.95)
LOOP_POLICIES = (CENTRAL_QUEUE, DEFAULT_POLICY, "shortest-expected-delay", "power-of-two", "random")
LOOP_JOB_S = (0.5, 0.05)

Case = tuple[str, float, float, int, int]  # policy, load, job_s (0: fresh), jobs, seed


def run(case: Case) -> tuple[Case, float, float]:
    policy, load, job_s, jobs, seed = case
    loop = dict(stale_model="loop", job_s=job_s, job_overhead_s=0.0) if job_s and policy != CENTRAL_QUEUE else {}
    r = simulate(SimConfig(policy=policy, speeds=SPEEDS, load=load, jobs=jobs, seed=seed, **loop))  # type: ignore[arg-type]
    return case, r.mean, r.p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="Jobs per fresh run.")
    parser.add_argument("--loop-jobs", type=int, default=20_000, help="Jobs per loop-model run.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="Processes to run cases in.")
    args = parser.parse_args()
    fresh_rows = (CENTRAL_QUEUE, *POLICY_NAMES)
    cases = [(p, load, 0.0, args.jobs, args.seed) for p in fresh_rows for load in LOADS]
    cases += [(p, load, job_s, args.loop_jobs, args.seed) for job_s in LOOP_JOB_S for p in LOOP_POLICIES[1:]
              for load in LOADS]  # fmt: skip
    cases += [(CENTRAL_QUEUE, load, job_s, args.loop_jobs, args.seed) for job_s in LOOP_JOB_S for load in LOADS]
    exact = {load: optimum(SPEEDS, load) for load in LOADS}
    with Pool(args.workers) as pool:
        res = {case: (mean, p99) for case, mean, p99 in pool.imap_unordered(run, cases, chunksize=1)}

    print(f"Speeds {','.join(f'{s:g}' for s in SPEEDS)}; exponential service; seed {args.seed}. Exact (MDP): "
          + "; ".join(f"load {load}: optimal {o.mean_sojourn:.4f}, central {o.central_mean_sojourn:.4f}"
                      for load, o in exact.items()) + ".\n")  # fmt: skip
    tables = [("fresh (instant dispatch)", 0.0, fresh_rows, args.jobs)]
    tables += [(f"loop model, {job_s:g} s jobs", job_s, LOOP_POLICIES, args.loop_jobs) for job_s in LOOP_JOB_S]
    for title, job_s, rows, jobs in tables:
        print(f"### {title}, {jobs:,} jobs per run\n")
        print("| policy | " + " | ".join(f"load {load}" for load in LOADS) + " | p99 x central (per load) |")
        print("|---|" + "---|" * len(LOADS) + "---|")
        for policy in rows:
            cells, p99s = [], []
            for load in LOADS:
                mean, p99 = res[(policy, load, job_s, jobs, args.seed)]
                c_mean, c_p99 = res[(CENTRAL_QUEUE, load, job_s, jobs, args.seed)]
                x_central = mean / c_mean
                x_opt = x_central * exact[load].central_mean_sojourn / exact[load].mean_sojourn
                cells.append(f"{mean:.3f} ({x_central:.3f}, {x_opt:.3f})")
                p99s.append(f"{p99 / c_p99:.2f}")
            print(f"| {policy} | " + " | ".join(cells) + f" | {' / '.join(p99s)} |")
        print()


if __name__ == "__main__":
    main()
