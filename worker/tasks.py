"""Built-in tasks: what the demo, the tests and the benchmarks run.

A task takes the job's `input` (any JSON value) and returns a JSON value.
"""

from __future__ import annotations

import time
from typing import Any

from . import context


def echo(value: Any) -> Any:
    """Return the input unchanged: the no-op job of the benchmarks."""
    return value


def synthetic(spec: dict[str, Any]) -> dict[str, Any]:
    """A simulated inference: busy for `cost / sim_speed` seconds on this node.

    Input: {"cost": seconds on a speed-1 node, "fail"?: true to raise, ...}. Returns the node,
    how long it took and the input, so a batch's results show where each job ran.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("cost", 0), (int, float)):
        raise ValueError('synthetic expects {"cost": seconds}')
    node = context.current()
    seconds = float(spec.get("cost", 0)) / node.sim_speed
    started = time.perf_counter()
    time.sleep(max(0.0, seconds))
    if spec.get("fail"):
        raise RuntimeError("synthetic failure requested by the job input")
    return {"node": node.node_id, "seconds": round(time.perf_counter() - started, 6), "input": spec}
