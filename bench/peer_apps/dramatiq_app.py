"""dramatiq's RedisBroker with the Results middleware on a RedisBackend: dramatiq stores no
results by default; the actor opts in with store_results=True. `dramatiq peer_apps.dramatiq_app`."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from peer_apps import mark_ready, redis_url


class Ready(Middleware):
    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        mark_ready()


backend = RedisBackend(url=redis_url())
broker = RedisBroker(url=redis_url())
broker.add_middleware(Results(backend=backend))
broker.add_middleware(Ready())
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def echo(value: Any) -> Any:
    return value
