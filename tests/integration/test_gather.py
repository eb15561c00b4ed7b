"""A batch gathers like jobs past unlike ones in its node queue, fetching only what may join."""

from __future__ import annotations

import redis
from rq.job import Job

from dispatcher.client import Submitter
from dispatcher.job import SERIALIZER
from dispatcher.keys import Keys
from dispatcher.models import JobSpec
from dispatcher.scripts import Scripts
from dispatcher.settings import Settings

from .test_take_next import NODE, node_worker

BATCHED, PLAIN = "worker.tasks:synthetic_batched", "worker.tasks:synthetic"


def test_like_jobs_join_the_first_past_the_unlike_ones_which_keep_their_order(
    r: redis.Redis, settings: Settings
) -> None:
    funcs = [BATCHED, PLAIN, BATCHED, *[PLAIN] * 40, BATCHED]  # more unlike jobs than one look fetches (31)
    keys = Keys(settings.namespace)
    Submitter(r, settings).submit([JobSpec(f, {"cost": 0}) for f in funcs])
    ingress = keys.ingress_queue("normal")
    ids = [i.decode() for i in r.lrange(Keys.rq_queue(ingress), 0, -1)]
    Scripts(r, keys).move_to_nodes(ingress, [(job_id, NODE) for job_id in ids])
    node_worker(r, settings).work(burst=True)
    jobs = [Job.fetch(job_id, connection=r, serializer=SERIALIZER) for job_id in ids]
    assert [j.get_status() for j in jobs] == ["finished"] * len(funcs)
    batched = {j.ended_at for j, f in zip(jobs, funcs) if f == BATCHED}
    plain = [j.ended_at for j, f in zip(jobs, funcs) if f == PLAIN]
    assert len(batched) == 1  # one call: a batch's jobs are recorded with one end time
    assert plain == sorted(plain) and min(batched) < plain[0]  # then the plain ones, in their order
