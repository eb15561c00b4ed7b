"""The job stream of a run: every job's arrival, work and affinity key, drawn before the run."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import SimConfig

LOGNORMAL_SIGMA = 1.0  # squared coefficient of variation e^1 - 1 ~ 1.72, against exp's 1


@dataclass(frozen=True)
class Workload:
    """Every job's arrival time, work (mean 1) and affinity key index (-1: none), and the
    arrival rate they were drawn at."""

    arrivals: list[float]
    works: list[float]
    keys: list[int]
    rate: float


def make_workload(cfg: SimConfig) -> Workload:
    """The job stream for `cfg`. Arrivals, work and keys each have their own seeded stream,
    so every policy sees the very same jobs (common random numbers)."""
    rate = cfg.load * sum(cfg.speeds)
    arrival_rng, work_rng, key_rng = (random.Random(f"{cfg.seed}:{name}") for name in ("arrival", "work", "key"))
    arrivals, t = [], 0.0
    for _ in range(cfg.jobs):
        t += arrival_rng.expovariate(rate)
        arrivals.append(t)
    if cfg.service == "exp":
        works = [work_rng.expovariate(1.0) for _ in range(cfg.jobs)]
    else:
        mu = -LOGNORMAL_SIGMA**2 / 2  # mean exp(mu + sigma^2/2) = 1
        works = [work_rng.lognormvariate(mu, LOGNORMAL_SIGMA) for _ in range(cfg.jobs)]
    k = cfg.affinity_keys
    keys = [key_rng.randrange(k) for _ in range(cfg.jobs)] if k else [-1] * cfg.jobs
    return Workload(arrivals, works, keys, rate)
