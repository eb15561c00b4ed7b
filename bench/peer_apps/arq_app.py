"""arq at its defaults (results kept 3600 s; 10 jobs at a time; an idle worker polls its queue
every 0.5 s): `arq peer_apps.arq_app.WorkerSettings`."""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings

from peer_apps import mark_ready, redis_url


async def echo(ctx: dict[str, Any], value: Any) -> Any:
    return value


async def _ready(ctx: dict[str, Any]) -> None:
    mark_ready()


class WorkerSettings:
    functions = [echo]  # noqa: RUF012 (arq reads class attributes)
    on_startup = _ready
    redis_settings = RedisSettings.from_dsn(redis_url())
