"""saq on Redis at its defaults (a job's result kept in its job key, ttl 600 s; 10 jobs at a time
per worker): `saq peer_apps.saq_app.settings`."""

from __future__ import annotations

from typing import Any

from saq import Queue

from peer_apps import mark_ready, redis_url

queue = Queue.from_url(redis_url())


async def echo(ctx: dict[str, Any], *, value: Any) -> Any:
    return value


async def _ready(ctx: dict[str, Any]) -> None:
    mark_ready()


settings = {"queue": queue, "functions": [echo], "startup": _ready}
