"""QueuedJobHash writes what rq's Job.create + to_dict would, less the empty fields, and
rq reads it back as the same job (no server: rq builds and restores jobs without I/O)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from gpufleet.dispatcher.client.submit import new_job_ids
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.store.job import QueuedJobHash, job_class, needs_spec
from gpufleet.dispatcher.store.keys import JobField, Keys

KEYS = Keys("ns")
CONN = Redis()  # never connected: Job.create, to_dict and restore do no I/O
INPUTS = [None, 0, -1.5, 10**30, "x", 'quote " and \\ backslash', "\u00e9t\u00e9 \u2603 \U0001f600",
          [1, [2, {"a": None}]], {"z": 1, "a": {"b": [True, False]}}, {"nested": "\u0000"}]  # fmt: skip


def as_hash(built: tuple[str, tuple[Any, ...]]) -> tuple[str, dict[bytes, bytes]]:
    """The key and the HASH that HSET key f1 v1 ... leaves in Redis (values as bytes)."""
    key, flat = built
    enc = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
    return key, dict(zip(enc[0::2], enc[1::2]))


def rq_to_dict(spec: JobSpec, job_id: str, origin: str, stamp: Any) -> dict[str, Any]:
    """What client.py wrote before the template: rq's own Job.create(...).to_dict()."""
    job = Job.create(spec.func.replace(":", "."), args=[spec.input], connection=CONN, id=job_id, origin=origin,
                     timeout=spec.timeout_s or 180, result_ttl=3600, failure_ttl=3600, description=spec.func,
                     status=JobStatus.QUEUED, serializer=JSONSerializer)  # fmt: skip
    job.created_at = job.enqueued_at = stamp
    return job.to_dict()


@pytest.mark.parametrize("value", INPUTS)
def test_data_is_byte_for_byte_what_rq_stores(value: Any) -> None:
    spec = JobSpec("gpufleet.worker.tasks:echo", value)
    [job_id] = new_job_ids(1)
    _, fields = as_hash(QueuedJobHash(KEYS, "b", 3600).build(job_id, spec, utcformat(now())))
    expected = rq_to_dict(spec, job_id, KEYS.ingress_queue("normal"), now())["data"]
    assert fields[b"data"] == expected
    assert JSONSerializer.loads(zlib.decompress(fields[b"data"])) == ["gpufleet.worker.tasks.echo", None, [value], {}]


def test_every_nonempty_rq_field_matches_to_dict_and_the_empty_ones_are_left_out() -> None:
    spec = JobSpec("gpufleet.worker.tasks:echo", {"i": 1}, priority="high", timeout_s=30)
    stamp = now()
    [job_id] = new_job_ids(1)
    key, fields = as_hash(QueuedJobHash(KEYS, "b1", 3600).build(job_id, spec, utcformat(stamp)))
    rq_fields = {k.encode(): v if isinstance(v, bytes) else str(v).encode()
                 for k, v in rq_to_dict(spec, job_id, KEYS.lane_queue("high", "b1"), stamp).items()}  # fmt: skip
    rq_nonempty = {k: v for k, v in rq_fields.items() if v}
    assert key == Keys.rq_job(job_id) == Job.key_for(job_id)
    assert {k: v for k, v in fields.items() if not k.startswith(b"gf_")} == {**rq_nonempty, b"status": b"queued"}
    assert set(rq_fields) - set(fields) == {
        b"success_callback_name", b"failure_callback_name", b"stopped_callback_name",
        b"started_at", b"ended_at", b"last_heartbeat", b"worker_name", b"group_id",
    }  # fmt: skip
    assert {k: v for k, v in fields.items() if k.startswith(b"gf_")} == {b"gf_batch": b"b1", b"gf_priority": b"high",
                                                                         b"gf_tenant": b"default"}  # fmt: skip


def test_rq_and_fleetjob_restore_it_as_the_job_that_was_asked_for() -> None:
    spec = JobSpec("gpufleet.worker.tasks:echo", {"x": [1, 2]}, client_id="c7", model="m", affinity="s1",
                   priority="low", timeout_s=45, retries=2, gpu_mem_gib=1.5)  # fmt: skip
    stamp = now()
    [job_id] = new_job_ids(1)
    _, fields = as_hash(QueuedJobHash(KEYS, "b2", 600).build(job_id, spec, utcformat(stamp)))
    for cls in (Job, job_class(KEYS)):
        job = cls(job_id, connection=CONN, serializer=JSONSerializer)
        job.restore(fields)
        assert ((job.func_name, job.args, job.kwargs, job.instance)
                == ("gpufleet.worker.tasks.echo", [{"x": [1, 2]}], {}, None))  # fmt: skip
        assert ((job.origin, job.get_status(refresh=False), job.description)
                == ("ns.lane.low.b2", JobStatus.QUEUED, "gpufleet.worker.tasks:echo"))  # fmt: skip
        assert (job.timeout, job.result_ttl, job.failure_ttl) == (45, 600, 600)
        assert job.enqueued_at == job.created_at == stamp.replace(tzinfo=job.enqueued_at.tzinfo)
        assert job.started_at is None and job.ended_at is None and job.worker_name is None and job.meta == {}
    fleet = job.fleet  # type: ignore[attr-defined]
    assert fleet == {JobField.BATCH: "b2", JobField.PRIORITY: "low", JobField.CLIENT_ID: "c7",
                     JobField.NEEDS: '{"model":"m","affinity":"s1","gpu_mem_gib":1.5}',
                     JobField.RETRIES: "2", JobField.TENANT: "default"}  # fmt: skip
    assert (job.model, needs_spec(fleet[JobField.NEEDS]).gpu_mem_gib) == ("m", 1.5)  # type: ignore[attr-defined]


def test_job_ids_look_like_rqs_and_do_not_repeat() -> None:
    ids = new_job_ids(5000)
    assert len(set(ids)) == 5000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_garbled_needs_field_reads_as_no_needs() -> None:
    for garbled in (b"{not json", b"[1, 2]", b'{"gpu_mem_gib": "lots"}', b"7"):
        assert needs_spec(garbled) == JobSpec(func="")
