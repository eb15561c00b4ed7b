"""`gpufleet worker --gpus`: one supervised, pinned process per GPU, with real processes.

The host has no GPU here, so the GPUs are named by index (taken on trust without NVML) and
the probe is `sim`; what is tested is the process layout, the pinning and the supervision.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, wait_until

NS = "gpus"
KEYS = Keys(NS)
NODES = ["h-gpu0", "h-gpu1"]


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[tuple[LocalFleet, redis.Redis]]:
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    f = LocalFleet(redis_server.url, namespace=NS, env=FAST_ENV)
    try:
        f.start_dispatcher()
        f.start_worker(SimNode("h"), "--gpus", "0,1")
        f.wait_for_nodes(r, NODES)
        yield f, r
    finally:
        f.stop()


def node_pid(r: redis.Redis, node_id: str) -> int:
    return int(r.hget(KEYS.heartbeat(node_id), "pid") or 0)


def submit(f: LocalFleet, r: redis.Redis, specs: list[JobSpec]) -> str:
    return Submitter(r, Settings(redis_url=f.redis_url, namespace=NS)).submit(specs).batch_id


def test_each_gpu_is_a_node_in_its_own_pinned_process(fleet: tuple[LocalFleet, redis.Redis]) -> None:
    f, r = fleet
    pids = {node_pid(r, n) for n in NODES}
    assert len(pids) == 2 and f.procs["h"].pid not in pids
    batch = submit(f, r, [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0.02, "i": i}) for i in range(30)])
    wait_until(lambda: read_progress(r, KEYS, batch).done, 30, "the batch to finish")
    records = list(iter_results(r, KEYS, batch))
    assert {rec["status"] for rec in records} == {"finished"}
    assert {rec["node"]: rec["result"]["gpus"] for rec in records} == {"h-gpu0": ["0"], "h-gpu1": ["1"]}


def test_a_gpu_process_that_dies_is_restarted_and_its_running_job_runs_again(
    fleet: tuple[LocalFleet, redis.Redis],
) -> None:
    f, r = fleet
    batch = submit(f, r, [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 2.0})])
    job_id = r.lindex(KEYS.batch_jobs(batch), 0).decode()
    node = wait_until(lambda: (r.hget(Keys.rq_job(job_id), "status") == b"started"
                               and r.hget(Keys.rq_job(job_id), "gf_node")), 10,
                      "the job to start").decode()  # fmt: skip
    old_pid = node_pid(r, node)
    os.kill(old_pid, signal.SIGKILL)

    wait_until(lambda: node_pid(r, node) not in (0, old_pid), 15, f"{node}'s process to be restarted")
    wait_until(lambda: read_progress(r, KEYS, batch).done, 30, "the job to finish after all")
    [rec] = list(iter_results(r, KEYS, batch))
    assert (rec["status"], rec["attempts"]) == ("finished", 2)
    assert f.procs["h"].poll() is None  # the parent supervises on
