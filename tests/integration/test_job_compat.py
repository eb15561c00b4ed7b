"""A job submitted by gpufleet is, to rq 3, the job rq's own enqueue would have made: fetched
with Job.fetch, listed by `rq info`, run by a plain rq SimpleWorker into rq's registries."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import redis
from click.testing import CliRunner
from rq import Queue, SimpleWorker
from rq.cli import main as rq_cli
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry
from rq.serializers import JSONSerializer

from gpufleet.dispatcher.client.results import iter_results
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from tests.conftest import into_ingress

KEYS = Keys()
INPUTS = [{"i": 1, "text": "\u00e9t\u00e9 \u2603"}, [1, 2.5, None], "plain", None]


def submit(r: redis.Redis, tmp_path: Path, batch_id: str = "compat") -> list[str]:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({"input": x, "timeout": 60}) + "\n" for x in INPUTS))
    submit_file(r, Settings(), str(path), default_func="gpufleet.worker.tasks:echo", batch_id=batch_id)
    into_ingress(r, KEYS)  # as the dispatcher takes them: from here on they are jobs of the ingress queue
    return [i.decode() for i in r.lrange(KEYS.batch_jobs(batch_id), 0, -1)]


def test_job_fetch_reads_what_rqs_own_enqueue_would_have_written(r: redis.Redis, tmp_path: Path) -> None:
    ids = submit(r, tmp_path)
    queue = Queue(KEYS.ingress_queue("normal"), connection=r, serializer=JSONSerializer)
    for job_id, value in zip(ids, INPUTS):
        ours = Job.fetch(job_id, connection=r, serializer=JSONSerializer)
        theirs = Job.fetch(queue.enqueue("gpufleet.worker.tasks.echo", value, job_timeout=60,
                                         result_ttl=Settings().result_ttl_s, failure_ttl=Settings().result_ttl_s).id,
                           connection=r, serializer=JSONSerializer)  # fmt: skip
        for attr in ("func_name", "args", "kwargs", "instance", "origin", "timeout", "result_ttl", "failure_ttl",
                     "started_at", "ended_at", "worker_name", "dependency_ids", "meta"):  # fmt: skip
            assert getattr(ours, attr) == getattr(theirs, attr), attr
        assert ours.get_status() == theirs.get_status() == JobStatus.QUEUED
        assert ours.data == theirs.data  # the same serialized call, byte for byte
        assert ours.enqueued_at is not None and theirs.enqueued_at is not None
        assert ours.enqueued_at.tzinfo == theirs.enqueued_at.tzinfo
        assert abs(theirs.enqueued_at - ours.enqueued_at) < timedelta(seconds=5)
        assert ours.perform() == value


def test_rq_lists_them_and_a_plain_rq_worker_runs_them_into_rqs_registries(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    ids = submit(r, tmp_path)
    name = KEYS.ingress_queue("normal")
    queue = Queue(name, connection=r, serializer=JSONSerializer)
    assert name in [q.name for q in Queue.all(connection=r)]
    assert queue.get_job_ids() == ids and [j.id for j in queue.jobs] == ids
    info = CliRunner().invoke(rq_cli, ["info", "--url", redis_server.url, "--only-queues", name])
    assert info.exit_code == 0 and f"{name} |" in info.output and "4 jobs total" in info.output, info.output

    SimpleWorker([queue], connection=r, serializer=JSONSerializer).work(burst=True)

    assert sorted(FinishedJobRegistry(name, connection=r).get_job_ids()) == sorted(ids)
    for job_id, value in zip(ids, INPUTS):
        job = Job.fetch(job_id, connection=r, serializer=JSONSerializer)
        assert (job.get_status(), job.return_value()) == (JobStatus.FINISHED, value)
    records = list(iter_results(r, KEYS, "compat"))
    assert [(rec["status"], rec["result"]) for rec in records] == [("finished", x) for x in INPUTS]
    assert all(rec["enqueued_at"] <= rec["started_at"] <= rec["ended_at"] for rec in records)
