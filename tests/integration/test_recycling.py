"""Recycling slot processes with real processes: `worker --max-jobs`, `--max-memory-mib`, and a job
that runs out of CUDA memory (retried on another node while its slot process is replaced). The
node stays alive under the same incarnation throughout, no job is lost, and each recycle is
counted in the worker's metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rq.utils import as_text

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.node_claim import worker_pid
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer, free_port
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import gpufleet, local_fleet, tracebacks, wait_until

NS = "recycle"
KEYS = Keys(NS)
TASKS = "tests.integration.tasks"


@pytest.fixture
def fleet(redis_server: RedisServer, tmp_path: Path) -> Iterator[LocalFleet]:
    with local_fleet(redis_server.url, NS, log_dir=str(tmp_path)) as f:
        f.start_dispatcher()
        yield f


def start_node(f: LocalFleet, r: redis.Redis, node_id: str, *extra: str) -> int:
    """A node allowed the test tasks, serving metrics; its metrics port."""
    port = free_port()
    f.start_worker(SimNode(node_id), "--allow", TASKS, "--metrics-port", str(port), *extra)
    f.wait_for_nodes(r, [node_id])
    return port


def submit(f: LocalFleet, r: redis.Redis, specs: list[JobSpec]) -> str:
    return Submitter(r, Settings(redis_url=f.redis_url, namespace=NS)).submit(specs).batch_id


def incarnation(r: redis.Redis, node_id: str) -> str | None:
    """The process running the node now; None while it is not alive."""
    return next((n.incarnation for n in read_nodes(r, KEYS) if n.node_id == node_id and n.alive), None)


def finish_alive(r: redis.Redis, batch: str, node_id: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    """The batch's records once it ended, checking all along that `node_id` stayed alive under
    the one incarnation it had at the start."""
    held = incarnation(r, node_id)

    def done() -> bool:
        assert incarnation(r, node_id) == held, f"{node_id} was not alive under one incarnation throughout"
        return read_progress(r, KEYS, batch).done

    wait_until(done, timeout_s, f"batch {batch} to end")
    return list(iter_results(r, KEYS, batch))


def recycles(port: int, node_id: str) -> dict[str, float]:
    """gpufleet_worker_recycles_total of the node, per reason, from its metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    found = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return {s.labels["reason"]: s.value for s in found
            if s.name == "gpufleet_worker_recycles_total" and s.labels["node"] == node_id}  # fmt: skip


def test_a_slot_process_is_replaced_after_max_jobs_and_its_model_loaded_again(fleet: LocalFleet) -> None:
    """Given `--max-jobs 2`, six jobs run two per slot process: three processes in turn, each
    loading the model with its first job, every job once; the node stays alive throughout."""
    r = redis.Redis.from_url(fleet.redis_url)
    port = start_node(fleet, r, "j1", "--max-jobs", "2")
    records = finish_alive(r, submit(fleet, r, [JobSpec(f"{TASKS}:warm_model", i) for i in range(6)]), "j1")
    assert [(rec["status"], rec["attempts"]) for rec in records] == [("finished", 1)] * 6
    pids = [rec["result"]["pid"] for rec in records]
    assert pids[0::2] == pids[1::2] and len(set(pids)) == 3
    assert [rec["result"]["was_loaded"] for rec in records] == [False, True] * 3
    wait_until(lambda: recycles(port, "j1") == {"max_jobs": 3, "max_memory": 0, "cuda_oom": 0}, 10,
               "three recycles counted")  # fmt: skip
    assert tracebacks(fleet.log_dir or "") == {}


def test_a_slot_process_is_replaced_after_a_job_leaves_it_above_max_memory(fleet: LocalFleet) -> None:
    """Given `--max-memory-mib 250` and jobs that each leave 300 MiB behind, every job runs in a
    fresh process, and each one after it is recycled; nothing is lost."""
    r = redis.Redis.from_url(fleet.redis_url)
    port = start_node(fleet, r, "m1", "--max-memory-mib", "250")
    records = finish_alive(r, submit(fleet, r, [JobSpec(f"{TASKS}:hold_memory", 300) for _ in range(3)]), "m1")
    assert [(rec["status"], rec["attempts"]) for rec in records] == [("finished", 1)] * 3
    assert len({rec["result"]["pid"] for rec in records}) == 3
    wait_until(lambda: recycles(port, "m1")["max_memory"] == 3, 10, "three recycles counted")
    [small] = finish_alive(r, submit(fleet, r, [JobSpec(f"{TASKS}:warm_model", 0)]), "m1")
    assert small["status"] == "finished"
    wait_until(lambda: recycles(port, "m1")["max_memory"] == 3, 1, "no recycle for a process under the line")


def test_a_cuda_oom_is_retried_on_another_node_while_the_slot_restarts(fleet: LocalFleet) -> None:
    """Given a job that runs out of CUDA memory on node oa (retries 0), its retry runs on ob
    while oa is ejected for the cool-down; oa's slot process is replaced (counted as cuda_oom),
    oa stays alive, and after the cool-down it takes jobs again in its new process."""
    r = redis.Redis.from_url(fleet.redis_url)
    fleet.env["GPUFLEET_OOM_COOLDOWN_S"] = "5"
    port = start_node(fleet, r, "oa")  # alone at first: the first attempt lands there
    held = incarnation(r, "oa")
    batch = submit(fleet, r, [JobSpec(f"{TASKS}:oom_on", {"nodes": ["oa"], "s": 3})])
    [job_id] = [as_text(j) for j in r.lrange(KEYS.batch_jobs(batch), 0, -1)]
    wait_until(lambda: r.hget(Keys.rq_job(job_id), "status") == b"started", 30, "the job to start on oa")
    oom_pid = worker_pid(as_text(r.hget(Keys.rq_job(job_id), "worker_name")), "oa", held or "")
    assert oom_pid is not None
    start_node(fleet, r, "ob")  # while the job runs on oa, 3 s before it runs out of memory
    [rec] = finish_alive(r, batch, "oa", timeout_s=30)
    assert (rec["status"], rec["node"], rec["attempts"]) == ("finished", "ob", 2)
    assert r.get(KEYS.ejected("oa")) == b"cuda-oom"
    wait_until(lambda: recycles(port, "oa")["cuda_oom"] == 1, 10, "the recycle counted")
    assert gpufleet(fleet.redis_url, NS, "drain", "ob").returncode == 0
    wait_until(lambda: not r.exists(KEYS.ejected("oa")), 10, "oa's cool-down to end")  # ob's drain long seen by then
    [later] = finish_alive(r, submit(fleet, r, [JobSpec(f"{TASKS}:oom_on", {"nodes": []})]), "oa", timeout_s=30)
    assert later["status"] == "finished" and later["result"]["node"] == "oa"
    assert later["result"]["pid"] not in (oom_pid, None)


def test_a_job_that_runs_out_of_cuda_memory_everywhere_fails_after_the_node_loss_retries(fleet: LocalFleet) -> None:
    """On a one-node fleet a CUDA OOM's retry waits out the cool-down and comes back to the same
    node; a job that runs out of memory on every attempt fails for good after
    max(retries, node_loss_retries) retries (here 2), with its error."""
    r = redis.Redis.from_url(fleet.redis_url)
    fleet.env["GPUFLEET_OOM_COOLDOWN_S"] = "0.5"
    port = start_node(fleet, r, "solo")
    [rec] = finish_alive(r, submit(fleet, r, [JobSpec(f"{TASKS}:oom_on", {"nodes": ["solo"]})]), "solo")
    assert (rec["status"], rec["attempts"]) == ("failed", 3)
    assert rec["error"].startswith("RuntimeError: CUDA out of memory.")
    wait_until(lambda: recycles(port, "solo")["cuda_oom"] == 3, 10, "three recycles counted")
