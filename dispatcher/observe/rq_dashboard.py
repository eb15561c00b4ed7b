"""rq-dashboard on a gpufleet Redis: `rq-dashboard --config gpufleet.dispatcher.observe.rq_dashboard -u URL`.

gpufleet's jobs are rq jobs serialized with rq's JSONSerializer (store/job.py), and rq's worker
HASH does not say which serializer its worker uses, so a dashboard has to be told. rq-dashboard
0.9's `--json` flag (or RQ_DASHBOARD_JSON_SERIALIZER=true) tells its queue and job pages, but
its workers endpoint (`/<n>/data/workers.json`, the Workers tab) builds its workers with
`Worker.all(connection=...)` and no serializer, so the job a busy worker runs is read with
pickle: DeserializationError, HTTP 500, for any rq worker of JSON jobs, gpufleet's or rq's own.

Importing this module (what rq-dashboard's `--config MODULE` and RQ_DASHBOARD_CONFIG do) sets
the JSON serializer for every page, the Workers tab included. It needs rq-dashboard installed
(it is not a gpufleet dependency) and changes nothing else; it holds no Flask settings.
"""

from __future__ import annotations

from typing import Any

from rq import Worker
from rq_dashboard import web

from ..store.job import SERIALIZER


class JSONWorkers(Worker):
    """rq's Worker, whose `all` reads workers (and the jobs they run) with the JSON serializer."""

    @classmethod
    def all(cls, connection: Any = None, job_class: Any = None, queue_class: Any = None, queue: Any = None,
            serializer: Any = None) -> Any:  # fmt: skip
        return super().all(connection=connection, job_class=job_class, queue_class=queue_class, queue=queue,
                           serializer=serializer or SERIALIZER)  # fmt: skip


def use_json(dashboard: Any = web) -> None:
    """Point rq-dashboard's blueprint at JSON jobs: its queue and job pages (its own setting)
    and its workers endpoint (the `Worker` name it calls `all` on)."""
    dashboard.config.serializer = SERIALIZER
    dashboard.Worker = JSONWorkers


use_json()
