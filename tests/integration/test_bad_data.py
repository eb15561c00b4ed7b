"""Bad data in Redis never stops a loop: a job whose payload is not JSON, an id with no job
HASH, or an id that is not even UTF-8, pushed on an ingress or straight on a node queue by
someone else's code, ends failed with a true reason or is dropped with one log line, and the
fleet keeps working. Real dispatcher and worker processes."""

from __future__ import annotations

from pathlib import Path

import redis
from rq import Queue
from rq.job import Job
from rq.results import Result

from gpufleet.dispatcher.client.results import last_line
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, tracebacks, wait_until
from .test_failures import cheap, finish, start, submit

NS = "fail"
KEYS = Keys(NS)


def pickled_job(r: redis.Redis, queue_name: str) -> str:
    """A job enqueued by plain rq with its default serializer (pickle) on `queue_name`."""
    return str(Queue(queue_name, connection=r).enqueue("gpufleet.worker.tasks.echo", "pickled").id)


def test_undecodable_and_dataless_jobs_end_or_vanish_and_the_fleet_keeps_working(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    f = LocalFleet(redis_server.url, namespace=NS, env=FAST_ENV, log_dir=str(tmp_path))
    try:
        start(f, r, [SimNode("b1")])
        ingress, node = KEYS.ingress_queue("normal"), KEYS.node_queue("b1")
        pickled = [pickled_job(r, ingress), pickled_job(r, node)]
        dataless = [b"no-such-job", b"\xff\xfe-not-utf8"]
        for raw in dataless:
            r.rpush(Keys.rq_queue(ingress), raw)
            r.rpush(Keys.rq_queue(node), raw)
        records = finish(r, submit(f, r, cheap(50)))
        assert [rec["status"] for rec in records] == ["finished"] * 50

        for job_id in pickled:
            wait_until(lambda job_id=job_id: r.hget(Keys.rq_job(job_id), "status") == b"failed", 30,
                       f"{job_id} to fail")  # fmt: skip
            job = Job.fetch(job_id, connection=r)
            result = Result.fetch_latest(job)
            assert result is not None and last_line(result.exc_string or "").startswith("cannot decode job payload")
            assert r.zscore(Keys.rq_failed(node), job_id) is not None
        for raw in dataless:  # gone from every list, and no stray HASH made for them
            assert not r.exists(b"rq:job:" + raw)
            assert raw not in r.lrange(Keys.rq_queue(ingress), 0, -1) + r.lrange(Keys.rq_queue(node), 0, -1)
        assert r.zcard(Keys.rq_started(node)) == 0
        assert f.procs["b1"].poll() is None and f.procs["d0"].poll() is None
        assert tracebacks(str(tmp_path)) == {}
    finally:
        f.stop()
