"""A success recorded by gpufleet's worker (take_job + finish_jobs, one round trip a job)
leaves what rq's own worker leaves for the same job, as rq's readers see it: status, result,
registries, expiries, the worker's counters, and no execution left behind."""

from __future__ import annotations

import time

import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.results import Result

from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import SERIALIZER
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.tasks import echo
from tests.integration.test_take_next import jobs_on_node, node_worker


def what_rq_reads(r: redis.Redis, job_id: str, queue_name: str, ttl_s: int) -> dict[str, object]:
    job = Job.fetch(job_id, connection=r, serializer=SERIALIZER)
    result = job.latest_result()
    assert result is not None and job.started_at and job.ended_at
    return {
        "status": job.get_status(), "return_value": job.return_value(), "result_type": result.type,
        "result_fields": sorted(k.decode() for k in r.xrange(Keys.rq_results(job_id))[-1][1]),
        "result_has_execution": bool(result.execution_id), "ended_after_start": job.ended_at >= job.started_at,
        "job_ttl_set": ttl_s - 5 < r.ttl(job.key) <= ttl_s,
        "results_ttl_set": ttl_s - 5 < r.ttl(Keys.rq_results(job_id)) <= ttl_s,
        "finished_score_set": ttl_s - 5 < r.zscore(f"rq:finished:{queue_name}", job_id) - time.time() <= ttl_s + 1,
        "finished": job_id in FinishedJobRegistry(queue_name, connection=r).get_job_ids(),
        "started": StartedJobRegistry(queue_name, connection=r).get_job_ids(),
        "executions_left": r.keys(f"rq:execution:{job_id}:*") + r.zrange(Keys.rq_executions(job_id), 0, -1),
    }  # fmt: skip


def test_a_success_leaves_what_rqs_own_worker_leaves(r: redis.Redis, settings: Settings) -> None:
    (ours,) = jobs_on_node(r, settings, 1)
    worker = node_worker(r, settings)
    worker.work(burst=True)

    queue = Queue("plain", connection=r, serializer=SERIALIZER)
    theirs = queue.enqueue(echo, 0, result_ttl=settings.result_ttl_s)
    plain = SimpleWorker([queue], connection=r, serializer=SERIALIZER)
    plain.work(burst=True)

    ttl = settings.result_ttl_s
    mine, rqs = what_rq_reads(r, ours, worker.queues[0].name, ttl), what_rq_reads(r, theirs.id, "plain", ttl)
    assert mine == rqs
    assert mine["status"] == JobStatus.FINISHED and mine["return_value"] == 0 and mine["finished"]
    assert mine["job_ttl_set"] and mine["results_ttl_set"] and mine["finished_score_set"]
    assert mine["result_type"] == Result.Type.SUCCESSFUL and mine["started"] == [] and mine["executions_left"] == []
    counters = [r.hmget(w.key, "successful_job_count", "total_working_time") for w in (worker, plain)]
    assert [c[0] for c in counters] == [b"1", b"1"] and all(float(c[1]) >= 0 for c in counters)
    assert r.smembers(Keys.rq_worker_executions(worker.name)) == set()
    assert r.hget(Keys(settings.namespace).dispatch_ended, "n1") == b"1"  # counted for the dispatcher
