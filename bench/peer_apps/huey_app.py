"""huey's RedisHuey at its defaults (results stored in one hash, blocking BRPOP dequeue):
`huey_consumer peer_apps.huey_app.huey` (1 worker thread by default)."""

from __future__ import annotations

from typing import Any

from huey import RedisHuey

from peer_apps import mark_ready, redis_url

huey = RedisHuey("bench", url=redis_url())


@huey.task()
def echo(value: Any) -> Any:
    return value


@huey.on_startup()
def _ready() -> None:
    mark_ready()
