"""Celery with a Redis broker and its Redis result backend (results stored, Celery's default
once a backend is set): `celery -A peer_apps.celery_app worker --pool solo`."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready

from peer_apps import mark_ready, redis_url

app = Celery("peer_apps.celery_app", broker=redis_url(), backend=redis_url())
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                worker_redirect_stdouts=False)  # fmt: skip


@app.task(name="bench.echo")
def echo(value: Any) -> Any:
    return value


@worker_ready.connect
def _ready(**kwargs: Any) -> None:
    mark_ready()
