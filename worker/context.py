"""The node a task runs on, for tasks that need to know (the sim speed, the models kept warm)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeContext:
    """Set once by the worker at start; tasks read it and may record the models they load."""

    node_id: str = "local"
    sim_speed: float = 1.0
    gpus: tuple[str, ...] = ()  # the CUDA_VISIBLE_DEVICES this process is pinned to (worker --gpus)
    models: set[str] = field(default_factory=set)


_current = NodeContext()


def current() -> NodeContext:
    return _current


def set_current(ctx: NodeContext) -> None:
    global _current
    _current = ctx
