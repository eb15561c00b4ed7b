"""Submitting against a real Redis: all or nothing, batches, results before and after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.errors import GpufleetError, JobFileError
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer

KEYS = Keys()


def write_jobs(path: Path, lines: list[object]) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def test_a_file_is_enqueued_in_order_across_priorities(r: redis.Redis, tmp_path: Path) -> None:
    path = write_jobs(tmp_path / "j.jsonl", [{"input": i, "id": f"c{i}", **({"priority": "high"} if i % 3 == 0 else {})}
                                             for i in range(2500)])  # fmt: skip
    receipt = submit_file(r, Settings(submit_chunk=700), path, default_func="gpufleet.worker.tasks:echo", batch_id="b1")
    assert (receipt.batch_id, receipt.count) == ("b1", 2500)
    assert r.llen(Keys.rq_queue(KEYS.lane_queue("high", "b1"))) == 834  # the batch's lanes, one per priority
    assert r.llen(Keys.rq_queue(KEYS.lane_queue("normal", "b1"))) == 1666
    assert {p: r.hgetall(KEYS.lanes(p)) for p in ("high", "normal")} == {"high": {b"b1": b"default"},
                                                                          "normal": {b"b1": b"default"}}  # fmt: skip
    records = list(iter_results(r, KEYS, "b1"))
    assert [rec["id"] for rec in records] == [f"c{i}" for i in range(2500)]
    assert {rec["status"] for rec in records} == {"queued"} and records[0]["enqueued_at"].endswith("Z")
    assert read_progress(r, KEYS, "b1").size == 2500 and not read_progress(r, KEYS, "b1").done


def test_one_bad_line_at_the_end_leaves_nothing_enqueued(r: redis.Redis, tmp_path: Path) -> None:
    path = write_jobs(tmp_path / "j.jsonl", [{"input": i} for i in range(3000)] + ['{"input": 1, "priority": "asap"}'])
    with pytest.raises(JobFileError, match=r"j.jsonl:3001: field 'priority'"):
        submit_file(r, Settings(), path, default_func="gpufleet.worker.tasks:echo")
    assert r.dbsize() == 0


def test_a_batch_name_cannot_be_reused(r: redis.Redis, tmp_path: Path) -> None:
    path = write_jobs(tmp_path / "j.jsonl", [{"input": 1}])
    submit_file(r, Settings(), path, default_func="gpufleet.worker.tasks:echo", batch_id="same")
    with pytest.raises(GpufleetError, match="already exists"):
        submit_file(r, Settings(), path, default_func="gpufleet.worker.tasks:echo", batch_id="same")


def test_an_empty_file_is_refused(r: redis.Redis, tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="no jobs"):
        submit_file(r, Settings(), write_jobs(tmp_path / "j.jsonl", ["", ""]),
                    default_func="gpufleet.worker.tasks:echo")  # fmt: skip


def test_results_of_an_unknown_batch_is_a_clear_error(r: redis.Redis) -> None:
    with pytest.raises(GpufleetError, match="no batch 'nope'"):
        list(iter_results(r, KEYS, "nope"))


# Peak RSS from /proc (VmHWM, KiB), not getrusage's ru_maxrss: Linux carries ru_maxrss over
# exec, so a child started by this (large) pytest process would report the parent's peak.
PEAK_RSS_OF_ONE_SUBMIT = """
import re, sys
import redis
from gpufleet.dispatcher.client.submit import submit_file
from gpufleet.dispatcher.settings import Settings
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
r = redis.Redis.from_url(sys.argv[1])
r.flushdb()
before = peak()
count = submit_file(r, Settings(), sys.argv[2], default_func="gpufleet.worker.tasks:echo").count
print(count, before, peak())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc (Linux)")
def test_memory_stays_flat_as_the_file_grows(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    """Peak RSS of a whole submit in a fresh process: 40,000 lines of ~300 bytes (12 MiB on disk,
    several times that as Python objects) cost no more than 4,000 lines."""
    peaks = {}
    for n in (4_000, 40_000):
        path = write_jobs(tmp_path / f"{n}.jsonl", [{"input": {"i": i, "pad": "x" * 280}} for i in range(n)])
        out = subprocess.run([sys.executable, "-c", PEAK_RSS_OF_ONE_SUBMIT, redis_server.url, path],
                             check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
        count, before, after = map(int, out)
        assert count == n
        peaks[n] = (before, after)
    growth_kib = peaks[40_000][1] - peaks[4_000][1]
    assert growth_kib < 4 * 1024, peaks
