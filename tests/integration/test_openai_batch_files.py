"""OpenAI batch files against a real Redis, with no worker: outcomes are written as the forwarder
worker, the health loop and `cancel` write them (rq's Result, its registries, the batch counters)
and each ending is pushed to the batch's ended list, as the worker side of issue 14 does.

Submit (all or nothing, auto-detection, the Python API), results in OpenAI's output format (the
shape of each outcome, the error file), --follow in finish order, --drop-after-write, --resume
after an interrupted submit, and peak RSS for a 100,000-line file."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.results import Result
from rq.utils import now, utcformat

from gpufleet.cli.main import cli
from gpufleet.dispatcher.client.api import Client
from gpufleet.dispatcher.client.openai_batch import FORWARD_FUNC, RequestFailed
from gpufleet.dispatcher.client.results import read_progress, write_results
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.errors import GpufleetError, JobFileError
from gpufleet.dispatcher.fleet.control import cancel
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.job import SERIALIZER, BatchCounter
from gpufleet.dispatcher.store.keys import JobField, Keys
from gpufleet.dispatcher.store.redis_server import RedisServer

KEYS = Keys()
NODE_QUEUE = KEYS.node_queue("a")
INGRESS = Keys.rq_queue(KEYS.lane_queue("normal", "b"))  # where batch b's jobs wait (no dispatcher runs here)


def line(i: int, model: str = "llama-3-8b") -> dict[str, Any]:
    return {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}}  # fmt: skip


def write_lines(path: Path, lines: list[Any]) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def job_ids(r: redis.Redis, batch_id: str) -> list[str]:
    return [j.decode() for j in r.lrange(KEYS.batch_jobs(batch_id), 0, -1)]


def by_custom_id(r: redis.Redis, batch_id: str) -> dict[str, str]:
    return {r.hget(Keys.rq_job(j), JobField.CLIENT_ID).decode(): j for j in job_ids(r, batch_id)}  # type: ignore[union-attr]


def end(r: redis.Redis, job_id: str, *, value: Any = None, exc: str | None = None, pipeline: Any = None) -> None:
    """What a forwarder worker on node a writes when a job ends: the job routed there (origin,
    node), its status and ended_at, its rq Result, its registry and expiry, the batch counter,
    and the job id pushed to the batch's ended list."""
    p = pipeline or r.pipeline(transaction=False)
    batch_id = "b" if pipeline else r.hget(Keys.rq_job(job_id), JobField.BATCH).decode()  # type: ignore[union-attr]
    ttl = Settings().result_ttl_s
    job = SimpleNamespace(id=job_id, connection=r, serializer=SERIALIZER)  # what Result.create reads of a job
    status = "finished" if exc is None else "failed"
    p.lrem(INGRESS, 1, job_id)
    p.hset(Keys.rq_job(job_id), mapping={"status": status, "ended_at": utcformat(now()), "origin": NODE_QUEUE,
                                         JobField.NODE: "a"})  # fmt: skip
    p.hincrby(Keys.rq_job(job_id), JobField.ATTEMPTS, 1)
    if exc is None:
        Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=value, pipeline=p)
        p.zadd(FinishedJobRegistry(NODE_QUEUE, connection=r).key, {job_id: time.time() + ttl})
    else:
        Result.create_failure(job, ttl, exc_string=exc, pipeline=p)
        p.zadd(FailedJobRegistry(NODE_QUEUE, connection=r).key, {job_id: time.time() + ttl})
    p.expire(Keys.rq_job(job_id), ttl)
    p.hincrby(KEYS.batch_info(batch_id), BatchCounter.FINISHED if exc is None else BatchCounter.FAILED, 1)
    p.rpush(KEYS.batch_ended(batch_id), job_id)
    if pipeline is None:
        p.execute()


def answer(i: int) -> dict[str, Any]:
    body = {"id": f"chatcmpl-{i}", "object": "chat.completion", "choices": [{"message": {"content": f"a{i}"}}]}
    return {"status_code": 200, "request_id": f"req-{i}", "body": body}


def refused(status: int | None, code: str, message: str) -> str:
    """A failed job's exc_string, as the worker records a RequestFailed."""
    return f"Traceback (most recent call last):\n  ...\n{RequestFailed.__module__}.RequestFailed: " \
           f"{RequestFailed(status, code, message)}\n"  # fmt: skip


def lose(r: redis.Redis, job_id: str) -> None:
    """What end_jobs.lua writes for a job whose node died past its retry limit."""
    with r.pipeline(transaction=False) as p:
        p.lrem(INGRESS, 1, job_id)
        p.hset(Keys.rq_job(job_id), mapping={"status": "failed", JobField.ERROR: "node a lost",
                                             "ended_at": utcformat(now()), "origin": NODE_QUEUE})  # fmt: skip
        p.zadd(Keys.rq_failed(NODE_QUEUE), {job_id: time.time() + 3600})
        p.hincrby(KEYS.batch_info("b"), BatchCounter.FAILED, 1)
        p.rpush(KEYS.batch_ended("b"), job_id)
        p.execute()


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_an_openai_file_becomes_forwarded_jobs(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    """Given an OpenAI batch file (auto-detected), each line is a job that names the forwarder,
    carries {method, url, body}, the custom_id, the model and backend as routing needs, and 3
    retries; the Python API submits it the same way."""
    path = write_lines(tmp_path / "batch.jsonl", [line(i) for i in range(3)])
    result = run("--redis-url", settings.redis_url, "submit", path, "--batch", "b", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"batch": "b", "jobs": 3}
    assert r.hget(KEYS.batch_info("b"), "func") == FORWARD_FUNC.encode()
    first = r.hgetall(Keys.rq_job(job_ids(r, "b")[0]))
    assert first[JobField.CLIENT_ID.encode()] == b"r-0" and first[JobField.RETRIES.encode()] == b"3"
    assert json.loads(first[JobField.NEEDS.encode()]) == {"model": "llama-3-8b", "backend": "openai"}
    func, _, (request,), _ = json.loads(zlib.decompress(first[b"data"]))
    expected = {"method": "POST", "url": line(0)["url"], "body": line(0)["body"]}
    assert func == "gpufleet.worker.forwarder.forward" and request == expected
    with Client(settings=settings) as client:
        batch = client.submit_file(path, retries=1, priority="high", batch="via-api")
        assert batch.size == 3 and r.llen(Keys.rq_queue(KEYS.lane_queue("high", "via-api"))) == 3
        assert r.hget(Keys.rq_job(job_ids(r, "via-api")[0]), JobField.RETRIES) == b"1"


@pytest.mark.parametrize(
    "bad, words",
    [
        ({**line(2998), "url": "/v1/images"}, "batch.jsonl:2999: field 'url': '/v1/images' is not one of"),
        (line(7), "batch.jsonl:2999: field 'custom_id': 'r-7' already used on line 8"),
        ({"input": 1}, "batch.jsonl:2999: field 'input': unknown field"),
    ],
)
def test_one_bad_line_enqueues_nothing_and_exits_2(r: redis.Redis, settings: Settings, tmp_path: Path,
                                                     bad: Any, words: str) -> None:  # fmt: skip
    path = write_lines(tmp_path / "batch.jsonl", [line(i) for i in range(2998)] + [bad, line(3000)])
    result = run("--redis-url", settings.redis_url, "submit", path)
    assert result.exit_code == 2 and words in result.output and "nothing was enqueued" in result.output
    assert r.dbsize() == 0


def test_jsonl_forced_on_an_openai_file_is_refused(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "batch.jsonl", [line(0)])
    result = run("--redis-url", settings.redis_url, "submit", path, "--format", "jsonl", "--func", "m:f")
    assert result.exit_code == 2 and "batch.jsonl:1: field 'body': unknown field" in result.output
    assert r.dbsize() == 0


def submit_lines(r: redis.Redis, settings: Settings, tmp_path: Path, n: int, batch: str = "b") -> list[str]:
    path = write_lines(tmp_path / f"{batch}-{n}.jsonl", [line(i) for i in range(n)])
    submit_file(r, settings, path, batch_id=batch)
    return job_ids(r, batch)


def test_each_outcome_has_openais_output_shape_and_failures_go_to_the_error_file(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """A success goes to the output file; a refused request (400), a request whose retries ran
    out on timeouts, a lost node and a cancel go to the error file, in submission order."""
    ids = submit_lines(r, settings, tmp_path, 6)
    end(r, ids[0], value=answer(0))
    end(r, ids[1], exc=refused(400, "invalid_request_error", "max_tokens is too large"))
    end(r, ids[2], exc=refused(None, "timeout", "no answer within 180 s"))
    lose(r, ids[3])
    assert cancel(r, settings, ids[4]).canceled == 1
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    result = run("--redis-url", settings.redis_url, "results", "b", "--format", "openai", "-o", str(out),
                 "--errors", str(err))  # fmt: skip
    assert result.exit_code == 1 and "1 of 6 jobs have no line: 1 not ended yet" in result.output  # r-5 is queued
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"id": f"batch_req_{ids[0]}", "custom_id": "r-0", "response": answer(0), "error": None}]
    failed = [json.loads(x) for x in err.read_text().splitlines()]
    assert failed == [
        {"id": f"batch_req_{ids[1]}", "custom_id": "r-1",
         "response": {"status_code": 400, "request_id": None,
                      "body": {"error": {"code": "invalid_request_error", "message": "max_tokens is too large"}}},
         "error": {"code": "invalid_request_error", "message": "max_tokens is too large"}},
        {"id": f"batch_req_{ids[2]}", "custom_id": "r-2", "response": None,
         "error": {"code": "timeout", "message": "no answer within 180 s"}},
        {"id": f"batch_req_{ids[3]}", "custom_id": "r-3", "response": None,
         "error": {"code": "gpufleet_error", "message": "node a lost"}},
        {"id": f"batch_req_{ids[4]}", "custom_id": "r-4", "response": None,
         "error": {"code": "batch_cancelled", "message": "The request was canceled before it ran."}},
    ]  # fmt: skip
    end(r, ids[5], value=answer(5))
    mixed = run("--redis-url", settings.redis_url, "results", "b", "--format", "openai")
    assert mixed.exit_code == 0 and [json.loads(x)["custom_id"] for x in mixed.output.splitlines()] == [
        f"r-{i}" for i in range(6)]  # without --errors, failures are written with the rest


def test_follow_writes_in_finish_order_and_ends_when_the_batch_is_done(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """Given a follower started before anything ended, it writes each line as its job ends (one
    failure to the error stream), in the order they end, and returns once the last one has."""
    ids = submit_lines(r, settings, tmp_path, 6)
    out, err = io.StringIO(), io.StringIO()
    reports: list[Any] = []
    follower = threading.Thread(target=lambda: reports.append(
        write_results(r, KEYS, "b", out, errors=err, openai=True, follow=True)))  # fmt: skip
    follower.start()
    order = [4, 1, 5, 0, 3, 2]
    for n, i in enumerate(order):
        time.sleep(0.05)
        end(r, ids[i], value=answer(i)) if i != 5 else end(r, ids[i], exc=refused(404, "model_not_found", "no"))
        if n < len(order) - 1:
            assert follower.is_alive()
    follower.join(timeout=10)
    assert not follower.is_alive() and reports[0].written == 6 and reports[0].failed == 1
    assert [json.loads(x)["custom_id"] for x in out.getvalue().splitlines()] == ["r-4", "r-1", "r-0", "r-3", "r-2"]
    assert [json.loads(x)["custom_id"] for x in err.getvalue().splitlines()] == ["r-5"]
    again = run("--redis-url", settings.redis_url, "results", "b", "--follow")  # jsonl records, batch already done
    assert again.exit_code == 0 and [json.loads(x)["id"] for x in again.output.splitlines()] == [
        f"r-{i}" for i in order]  # fmt: skip


def test_follow_says_when_endings_were_not_recorded_in_the_ended_list(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """A batch done with no ended list (a worker that does not write it): --follow stops, and
    exits 1 saying how many jobs it could not write."""
    ids = submit_lines(r, settings, tmp_path, 3)
    end(r, ids[0], value=answer(0))
    r.hincrby(KEYS.batch_info("b"), BatchCounter.FINISHED, 2)  # two ended without a push
    result = run("--redis-url", settings.redis_url, "results", "b", "--format", "openai", "--follow")
    assert result.exit_code == 1 and len([x for x in result.output.splitlines() if x.startswith("{")]) == 1
    assert "2 of 3 jobs have no line: 2 ended without an entry in the batch's ended list" in result.output


def rq_keys_of(r: redis.Redis, job_id: str) -> list[bytes]:
    return sorted(k for pattern in (f"rq:job:{job_id}*", f"rq:results:{job_id}", f"rq:execution*:{job_id}*")
                  for k in r.keys(pattern))  # fmt: skip


def test_drop_after_write_leaves_no_rq_data_for_written_jobs(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """Given 8 ended jobs (2 failed) of 10, results --drop-after-write deletes the job HASH,
    Results stream, execution records and registry entries of each one it wrote, and nothing
    of the 2 still queued; the batch's counters and job list stay. A second run appends to
    the files (they hold the only copy) and says the data is gone."""
    ids = submit_lines(r, settings, tmp_path, 10)
    for i in range(8):
        end(r, ids[i], value=answer(i)) if i % 4 else end(r, ids[i], exc=refused(400, "bad", "no"))
    r.hset(Keys.rq_execution(ids[0], "x1"), "status", "finished")  # a stray execution record of a run
    r.zadd(Keys.rq_executions(ids[0]), {"x1": time.time() + 60})
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    args = ["--redis-url", settings.redis_url, "results", "b", "--format", "openai", "-o", str(out), "--errors",
            str(err), "--drop-after-write"]  # fmt: skip
    result = run(*args)
    assert result.exit_code == 1 and "2 of 10 jobs have no line: 2 not ended yet" in result.output
    assert len(out.read_text().splitlines()) == 6 and len(err.read_text().splitlines()) == 2
    assert all(rq_keys_of(r, j) == [] for j in ids[:8])
    assert all(rq_keys_of(r, j) == [Keys.rq_job(j).encode()] for j in ids[8:])
    assert r.zcard(FinishedJobRegistry(NODE_QUEUE, connection=r).key) == 0 and r.zcard(Keys.rq_failed(NODE_QUEUE)) == 0
    progress = read_progress(r, KEYS, "b")
    assert (progress.size, progress.finished, progress.failed) == (10, 6, 2) and len(job_ids(r, "b")) == 10
    before = out.read_text()
    second = run(*args)
    assert second.exit_code == 1 and "8 whose data has left Redis" in second.output and out.read_text() == before


def test_follow_with_drop_streams_a_batch_out_of_redis(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    ids = submit_lines(r, settings, tmp_path, 40)
    for i, job_id in enumerate(ids):
        end(r, job_id, value=answer(i))
    out = tmp_path / "out.jsonl"
    result = run("--redis-url", settings.redis_url, "results", "b", "--format", "openai", "--follow",
                 "--drop-after-write", "-o", str(out))  # fmt: skip
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 40
    assert r.keys("rq:job:*") == [] and r.keys("rq:results:*") == []


def test_resume_enqueues_only_what_did_not_run_to_an_end(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    """An interrupted submit (the first 6 of 12 lines went in) whose jobs then ended in every
    way: resume enqueues the 6 missing lines and puts the failed and the canceled one back, with
    a fresh retry budget; the finished and in-flight ones are left alone; size and counters
    stay right; and a later --follow writes each custom_id once, the stale failure skipped."""
    ids = submit_lines(r, settings, tmp_path, 6)
    end(r, ids[0], value=answer(0))
    end(r, ids[1], value=answer(1))
    end(r, ids[2], exc=refused(503, "server_error", "overloaded"))  # retries spent
    cancel(r, settings, ids[3])
    r.hset(Keys.rq_job(ids[4]), "status", "started")  # running on a node
    r.lrem(INGRESS, 1, ids[4])
    full = write_lines(tmp_path / "batch.jsonl", [line(i) for i in range(12)])
    ended_before = r.llen(KEYS.batch_ended("b"))  # 3 endings (4 where cancel pushes its own)
    result = run("--redis-url", settings.redis_url, "submit", full, "--batch", "b", "--resume", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"batch": "b", "jobs": 8, "resumed": {
        "enqueued": 6, "requeued_failed": 1, "requeued_canceled": 1, "finished": 2, "in_flight": 2, "gone": 0,
        "skipped": 0}}  # fmt: skip
    assert list(by_custom_id(r, "b")) == [f"r-{i}" for i in range(12)] and job_ids(r, "b")[:6] == ids
    progress = read_progress(r, KEYS, "b")
    assert (progress.size, progress.finished, progress.failed, progress.canceled) == (12, 2, 0, 0)
    again = r.hgetall(Keys.rq_job(ids[2]))
    assert again[b"status"] == b"queued" and again[JobField.ATTEMPTS.encode()] == b"0"
    assert int(again[JobField.ENDED_FROM.encode()]) == ended_before and r.ttl(Keys.rq_job(ids[2])) == -1
    assert r.zcard(Keys.rq_failed(NODE_QUEUE)) == 0
    ingress = [j.decode() for j in r.lrange(INGRESS, 0, -1)]
    assert ingress == [ids[5], ids[2], ids[3], *job_ids(r, "b")[6:]]  # put back at the end, then the new lines
    for i, job_id in enumerate(job_ids(r, "b")):
        if i not in (0, 1):
            end(r, job_id, value=answer(i))
    out = io.StringIO()
    assert write_results(r, KEYS, "b", out, openai=True, follow=True).written == 12
    written = [json.loads(x) for x in out.getvalue().splitlines()]
    assert sorted(w["custom_id"] for w in written) == sorted(f"r-{i}" for i in range(12))
    assert all(w["error"] is None for w in written)  # r-2's old failure was skipped
    progress = read_progress(r, KEYS, "b")
    assert (progress.finished, progress.failed, progress.done) == (12, 0, True)


def test_resume_refuses_a_file_that_is_not_the_one_submitted(r: redis.Redis, settings: Settings,
                                                             tmp_path: Path) -> None:  # fmt: skip
    """A changed request, lines in another order, or a file shorter than the batch: refused with
    the line, and nothing in Redis changes."""
    ids = submit_lines(r, settings, tmp_path, 4)
    end(r, ids[0], exc=refused(400, "bad", "no"))
    before = {k: r.type(k) for k in r.keys("*")}, r.llen(INGRESS), r.hgetall(KEYS.batch_info("b"))
    changed = [line(0), line(1), line(2, model="other-model"), line(3), line(4)]
    reordered = [line(1), line(0), line(2), line(3)]
    for lines, words in [(changed, "batch.jsonl:3: request 'r-2' is not the one batch 'b' holds"),
                         (reordered, "batch.jsonl:1: field 'custom_id': 'r-1', but job 1 of batch 'b' is 'r-0'"),
                         ([line(0), line(1)], "batch 'b' has more jobs than the file has lines")]:  # fmt: skip
        path = write_lines(tmp_path / "batch.jsonl", lines)
        with pytest.raises(JobFileError, match=words):
            submit_file(r, settings, path, batch_id="b", resume=True)
    assert ({k: r.type(k) for k in r.keys("*")}, r.llen(INGRESS), r.hgetall(KEYS.batch_info("b"))) == before


def test_resume_of_a_new_name_submits_and_without_resume_a_name_is_refused(
    r: redis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "batch.jsonl", [line(i) for i in range(3)])
    assert submit_file(r, settings, path, batch_id="new", resume=True).resumed is None
    with pytest.raises(GpufleetError, match="already exists"):
        submit_file(r, settings, path, batch_id="new")
    receipt = submit_file(r, settings, path, batch_id="new", resume=True)  # nothing ended yet: nothing to do
    assert receipt.count == 0 and receipt.resumed and receipt.resumed.in_flight == 3 and len(job_ids(r, "new")) == 3


def test_resume_works_for_a_job_file_too(r: redis.Redis, settings: Settings, tmp_path: Path) -> None:
    lines = [{"input": {"i": i}} for i in range(5)]
    submit_file(r, settings, write_lines(tmp_path / "half.jsonl", lines[:2]), default_func="m:f", batch_id="j")
    receipt = submit_file(r, settings, write_lines(tmp_path / "all.jsonl", lines), default_func="m:f", batch_id="j",
                          resume=True)  # fmt: skip
    assert receipt.count == 3 and read_progress(r, KEYS, "j").size == 5
    with pytest.raises(JobFileError, match=r"all\.jsonl:1: request 1 is not the one batch 'j' holds"):
        submit_file(r, settings, write_lines(tmp_path / "all.jsonl", lines), default_func="m:g", batch_id="j",
                    resume=True)  # fmt: skip


# Peak RSS from /proc (VmHWM, KiB), as bench/submit_rate.py measures it: a fresh process per
# step, so each peak is that step's own (Linux carries ru_maxrss over exec).
PEAK_RSS = """
import re, sys
import redis
from gpufleet.dispatcher.client.results import write_results
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
r = redis.Redis.from_url(sys.argv[1])
before = peak()
if sys.argv[2] == "submit":
    count = submit_file(r, Settings(), sys.argv[3], batch_id="b").count
else:
    with open(sys.argv[3], "w") as out:
        count = write_results(r, Keys(), "b", out, openai=True, follow=True, drop_after_write=True).written
print(count, before, peak())
"""


def end_all(r: redis.Redis, ids: list[str]) -> None:
    for start in range(0, len(ids), 1000):
        with r.pipeline(transaction=False) as p:
            for i, job_id in enumerate(ids[start : start + 1000], start):
                end(r, job_id, value=answer(i), pipeline=p)
            p.execute()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc (Linux)")
def test_submit_and_follow_keep_memory_flat(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    """Peak RSS of submitting, then of following to a file (with --drop-after-write), each in a
    fresh process: 40,000 lines (about 8 MiB on disk) cost no more than 4,000."""
    peaks: dict[int, dict[str, tuple[int, int]]] = {}
    for n in (4_000, 40_000):
        r.flushdb()
        path = write_lines(tmp_path / f"{n}.jsonl", [line(i) for i in range(n)])
        peaks[n] = {}
        for step, target in (("submit", path), ("follow", str(tmp_path / f"{n}.out.jsonl"))):
            if step == "follow":
                end_all(r, job_ids(r, "b"))
            out = subprocess.run([sys.executable, "-c", PEAK_RSS, redis_server.url, step, target], check=True,
                                 capture_output=True, text=True).stdout.split()  # fmt: skip
            count, before, after = map(int, out)
            assert count == n
            peaks[n][step] = (before, after)
    print(f"peak RSS KiB (before, after): {peaks}")
    for step in ("submit", "follow"):
        growth_kib = peaks[40_000][step][1] - peaks[4_000][step][1]
        assert growth_kib < 2 * 1024, (step, peaks)
