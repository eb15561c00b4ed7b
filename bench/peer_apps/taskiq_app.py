"""taskiq with taskiq-redis: its README's RedisStreamBroker and a RedisAsyncResultBackend
(results kept after reading, its default): `taskiq worker peer_apps.taskiq_app:broker`."""

from __future__ import annotations

from typing import Any

from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from peer_apps import mark_ready, redis_url

broker = RedisStreamBroker(url=redis_url()).with_result_backend(RedisAsyncResultBackend(redis_url=redis_url()))


@broker.task(task_name="bench.echo")
async def echo(value: Any) -> Any:
    return value


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _ready(state: TaskiqState) -> None:
    mark_ready()
