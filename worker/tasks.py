"""Built-in tasks: what the demo, the tests and the benchmarks run.

A task takes the job's `input` (any JSON value) and returns a JSON value.
"""

from __future__ import annotations

import time
from typing import Any

from . import context
from .batching import batched


def echo(value: Any) -> Any:
    """Return the input unchanged: the no-op job of the benchmarks."""
    return value


def synthetic(spec: dict[str, Any]) -> dict[str, Any]:
    """A simulated inference: busy for `(cost + item_cost) / sim_speed` seconds on this node.

    Input: {"cost": seconds on a speed-1 node, "item_cost"?: seconds, "fail"?: true to raise,
    ...}. Returns the node, its GPUs, how long it took and the input, so a batch's results show
    where each job ran.
    """
    seconds = _cost(spec) + _cost(spec, "item_cost")
    node = context.current()
    started = time.perf_counter()
    time.sleep(seconds / node.sim_speed)
    if spec.get("fail"):
        raise RuntimeError("synthetic failure requested by the job input")
    return _ran(spec, started)


@batched(max_size=32, max_wait_ms=5)
def synthetic_batched(specs: list[dict[str, Any]]) -> list[Any]:
    """`synthetic`, batched as a GPU batches: one call costs the largest `cost` of its inputs
    (the fixed cost of a forward pass) plus the sum of their `item_cost`, over sim_speed. An
    input with "fail": true fails only its own job."""
    seconds = max(_cost(s) for s in specs) + sum(_cost(s, "item_cost") for s in specs)
    started = time.perf_counter()
    time.sleep(seconds / context.current().sim_speed)
    return [RuntimeError("synthetic failure requested by the job input") if s.get("fail") else _ran(s, started)
            for s in specs]  # fmt: skip


def _cost(spec: Any, field: str = "cost") -> float:
    if not isinstance(spec, dict) or not isinstance(spec.get(field, 0), (int, float)) or spec.get(field, 0) < 0:
        raise ValueError(f'synthetic expects {{"cost": seconds, "item_cost"?: seconds}}; got {spec!r}')
    return float(spec.get(field, 0))


def _ran(spec: dict[str, Any], started: float) -> dict[str, Any]:
    node = context.current()
    return {"node": node.node_id, "gpus": list(node.gpus), "seconds": round(time.perf_counter() - started, 6),
            "input": spec}  # fmt: skip
