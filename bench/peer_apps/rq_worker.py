"""One rq SimpleWorker (JSONSerializer) on one queue, for as long as it runs:
`python -m peer_apps.rq_worker QUEUE`. rq needs no app module: its jobs name the function."""

from __future__ import annotations

import sys

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

import gpufleet.worker.tasks  # noqa: F401 (what the first job would import: before the clock)
from peer_apps import mark_ready, redis_url


def main() -> None:
    r = Redis.from_url(redis_url())
    queue = Queue(sys.argv[1], connection=r, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=r, serializer=JSONSerializer)
    mark_ready()
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    main()
