"""A batch gathers like jobs past unlike ones in its node queue, fetching only what may join."""

from __future__ import annotations

import redis
from rq.job import Job

from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import SERIALIZER
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.scripts import Scripts
from tests.conftest import into_ingress

from .test_take_next import NODE, node_worker

BATCHED, PLAIN = "tests.integration.tasks:three_at_once", "gpufleet.worker.tasks:synthetic"


def test_like_jobs_join_the_first_past_the_unlike_ones_which_keep_their_order(
    r: redis.Redis, settings: Settings
) -> None:
    """Given three jobs of a batch-of-three task among twelve (more unlike jobs in between than
    one look fetches: two, what may still join), the first gathers the other two, however
    slow the machine: the batch is full the moment both are claimed, so its minute-long wait
    never runs."""
    funcs = [BATCHED, PLAIN, BATCHED, *[PLAIN] * 8, BATCHED]  # all within the look of 4 x max_size
    keys = Keys(settings.namespace)
    Submitter(r, settings).submit([JobSpec(f, {"cost": 0}) for f in funcs])
    into_ingress(r, keys)
    ingress = keys.ingress_queue("normal")
    ids = [i.decode() for i in r.lrange(Keys.rq_queue(ingress), 0, -1)]
    Scripts(r, keys).move_to_nodes(ingress, [(job_id, NODE) for job_id in ids])
    node_worker(r, settings, allow=("gpufleet.worker.tasks", "tests.integration.tasks")).work(burst=True)
    jobs = [Job.fetch(job_id, connection=r, serializer=SERIALIZER) for job_id in ids]
    assert [j.get_status() for j in jobs] == ["finished"] * len(funcs)
    batched = {j.ended_at for j, f in zip(jobs, funcs) if f == BATCHED}
    plain = [j.ended_at for j, f in zip(jobs, funcs) if f == PLAIN]
    assert len(batched) == 1  # one call: a batch's jobs are recorded with one end time
    assert plain == sorted(plain) and min(batched) < plain[0]  # then the plain ones, in their order
