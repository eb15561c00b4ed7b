"""The Python Client against a real redis-server, a real dispatcher and real sim workers: each
method of Client and Batch does what README "Python API" says."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gpufleet import Batch, BatchTimeout, Client, GpufleetError, JobFailed, JobSpec
from gpufleet.dispatcher.errors import JobFileError
from gpufleet.dispatcher.fleet.tenants import read_waiting_counts
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import local_fleet

NS = "client"
KEYS = Keys(NS)
ECHO = "gpufleet.worker.tasks:echo"
SYNTHETIC = "gpufleet.worker.tasks:synthetic"
STABLE_FIELDS = {"id", "job_id", "status", "node", "attempts", "enqueued_at", "started_at", "ended_at"}


@pytest.fixture
def fleet(redis_server: RedisServer) -> Iterator[LocalFleet]:
    """An emptied Redis and no process yet: a test starts what it needs with `start`."""
    with local_fleet(redis_server.url, NS) as f:
        yield f


@pytest.fixture
def client(fleet: LocalFleet) -> Iterator[Client]:
    with Client(fleet.redis_url, namespace=NS) as c:
        yield c


def start(fleet: LocalFleet, client: Client, *nodes: SimNode, allow: tuple[str, ...] = ()) -> None:
    """A dispatcher and one sim worker per node, every node alive before this returns."""
    fleet.start_dispatcher()
    for node in nodes:
        fleet.start_worker(node, *(arg for module in allow for arg in ("--allow", module)))
    fleet.wait_for_nodes(client.redis, [n.node_id for n in nodes])


def ended_at(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["ended_at"].replace("Z", "+00:00"))


def test_submit_returns_a_batch_whose_results_arrive(fleet: LocalFleet, client: Client) -> None:
    start(fleet, client, SimNode("n1"))
    batch = client.submit(ECHO, [{"x": i} for i in range(20)])
    assert isinstance(batch, Batch) and batch.size == 20 and batch.id.startswith("b-")
    final = batch.wait(timeout_s=30)
    assert (final.finished, final.failed, final.canceled, final.done) == (20, 0, 0, True)
    assert [rec["result"] for rec in batch.results()] == [{"x": i} for i in range(20)]


def test_wait_past_its_timeout_names_the_batch_and_without_one_waits_to_the_end(
    fleet: LocalFleet, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given no worker yet, wait(timeout_s=0.3) raises BatchTimeout (a TimeoutError) naming the
    batch, and cancels nothing; once a worker runs, wait() with no timeout returns the counts,
    with a progress line on stderr when asked."""
    batch = client.submit(ECHO, [1, 2, 3], batch="slowpoke")
    began = time.monotonic()
    with pytest.raises(BatchTimeout) as info:
        batch.wait(timeout_s=0.3)
    assert 0.3 <= time.monotonic() - began < 2.0
    assert str(info.value).startswith("batch 'slowpoke' not done after 0.3 s: 0 of 3 jobs ended")
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, GpufleetError)
    assert info.value.batch_id == "slowpoke" and batch.status()["queued"] == 3

    start(fleet, client, SimNode("n1"))
    final = batch.wait(progress=True)
    assert (final.finished, final.done) == (3, True)
    err = capsys.readouterr().err
    assert "slowpoke [" in err and "3/3 finished=3 failed=0 canceled=0" in err


def test_status_counts_queued_jobs_then_the_outcomes(fleet: LocalFleet, client: Client) -> None:
    batch = client.submit_jobs([JobSpec(ECHO, i) for i in range(3)] + [JobSpec(SYNTHETIC, {"cost": 0, "fail": True})])
    before = batch.status()
    assert before["batch"] == batch.id
    assert [before[k] for k in ("size", "queued", "running", "finished", "failed", "done")] == [4, 4, 0, 0, 0, False]
    assert before["eta_s"] is None  # nothing ended yet: no rate to go by

    start(fleet, client, SimNode("n1"))
    batch.wait(timeout_s=30)
    after = batch.status()
    assert [after[k] for k in ("size", "queued", "running", "finished", "failed", "done")] == [4, 0, 0, 3, 1, True]
    assert after["eta_s"] == 0


def test_results_come_in_submission_order_with_the_stable_fields(fleet: LocalFleet, client: Client) -> None:
    """Given 30 jobs of uneven cost over two nodes (so they end out of order), results() lists
    them in submission order, each a `gpufleet results` record."""
    start(fleet, client, SimNode("a"), SimNode("b"))
    inputs = [{"cost": 0.03 * (i % 3), "i": i} for i in range(30)]
    batch = client.submit(SYNTHETIC, inputs, ids=[f"q{i}" for i in range(30)])
    batch.wait(timeout_s=60)
    records = list(batch.results())
    assert [rec["id"] for rec in records] == [f"q{i}" for i in range(30)]
    assert all(set(rec) == STABLE_FIELDS | {"result"} for rec in records)
    assert [rec["result"]["input"] for rec in records] == inputs
    assert {rec["status"] for rec in records} == {"finished"} and {rec["attempts"] for rec in records} == {1}
    assert {rec["node"] for rec in records} <= {"a", "b"} and len({rec["job_id"] for rec in records}) == 30
    assert all(rec[k].endswith("Z") for rec in records for k in ("enqueued_at", "started_at", "ended_at"))


def test_cancel_ends_the_queued_jobs_of_the_batch(fleet: LocalFleet, client: Client) -> None:
    """With no worker running, every job is still queued: cancel ends them all, and the batch
    is done."""
    batch = client.submit(ECHO, range(5))
    report = batch.cancel()
    assert (report.canceled, report.left) == (5, 0)
    final = batch.wait(timeout_s=5)
    assert (final.canceled, final.done) == (5, True)
    assert [rec["status"] for rec in batch.results()] == ["canceled"] * 5
    assert client.redis.llen(Keys.rq_queue(KEYS.ingress_queue("normal"))) == 0


def test_map_yields_in_input_order_even_when_later_jobs_finish_first(fleet: LocalFleet, client: Client) -> None:
    """Given four jobs costing 1.2, 0.8, 0.4 and 0 s on one node with four slots, the last ends
    first; map still yields job 0's value first, and every value in input order."""
    start(fleet, client, SimNode("m1", capacity=4))
    costs = [1.2, 0.8, 0.4, 0.0]
    values = list(client.map(SYNTHETIC, [{"cost": c, "i": i} for i, c in enumerate(costs)], batch="reversed"))
    assert [v["input"]["i"] for v in values] == [0, 1, 2, 3]
    records = list(client.batch("reversed").results())
    assert ended_at(records[3]) < ended_at(records[0])  # the fleet did finish them out of order


def test_map_raises_job_failed_and_cancels_what_has_not_started(fleet: LocalFleet, client: Client) -> None:
    """Given one single-slot node, when job 1 fails map raises JobFailed naming it at job 1,
    and the jobs not started by then are canceled (nobody will read them)."""
    start(fleet, client, SimNode("f1"))
    inputs = [{"cost": 0}, {"cost": 0, "fail": True}] + [{"cost": 1.0}] * 4  # long next to a poll (<= 0.2 s)
    values = client.map(SYNTHETIC, inputs, batch="failing")
    assert next(values)["input"] == {"cost": 0}
    with pytest.raises(JobFailed, match=r"job 1 of batch 'failing' failed on node f1: RuntimeError: synthetic"):
        next(values)
    final = client.batch("failing").wait(timeout_s=30)
    assert final.failed == 1 and final.canceled >= 3 and final.finished + final.canceled == 5


def test_the_client_never_imports_the_jobs_module(fleet: LocalFleet, client: Client, tmp_path: Path) -> None:
    """Given a module that exists only on the worker's path, jobs naming it are enqueued from a
    process that cannot import it, and it stays unimported here; on the worker, the function
    runs, and a function the module lacks fails with the worker's error."""
    (tmp_path / "gf_worker_only_tasks.py").write_text("def double(x):\n    return 2 * x\n")
    assert importlib.util.find_spec("gf_worker_only_tasks") is None
    batch = client.submit_jobs([JobSpec("gf_worker_only_tasks:double", 21), JobSpec("gf_worker_only_tasks:nope", 1)])
    assert batch.status()["queued"] == 2 and "gf_worker_only_tasks" not in sys.modules

    fleet.env = {**fleet.env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{fleet.env['PYTHONPATH']}"}  # a new dict
    start(fleet, client, SimNode("w1"), allow=("gf_worker_only_tasks",))
    batch.wait(timeout_s=30)
    doubled, missing = batch.results()
    assert (doubled["status"], doubled["result"]) == ("finished", 42)
    assert missing["status"] == "failed"
    assert missing["error"] == "AttributeError: module 'gf_worker_only_tasks' has no attribute 'nope'"
    assert "gf_worker_only_tasks" not in sys.modules


NAN = float("nan")


@pytest.mark.parametrize(
    "submit, message",
    [
        (lambda c: c.submit(ECHO, [{"s": 1.0}] * 1500 + [{"s": NAN}]), "jobs:1501: field 'input'"),  # past a chunk
        (lambda c: c.submit(ECHO, (x for x in [1.0, math.inf])), "jobs:2: field 'input'"),  # a generator
        (lambda c: c.submit(ECHO, [1, 2], priority="urgent"), "jobs:1: field 'priority'"),
        (lambda c: c.submit(ECHO, [1, 2], timeout_s=0), "jobs:1: field 'timeout_s'"),
        (lambda c: c.submit("nonsense", [1]), "jobs:1: field 'func'"),
        (lambda c: c.submit(ECHO, [1, 2], ids=["a", "a"]), "jobs:2: field 'client_id'"),
        (lambda c: c.submit(ECHO, [1, 2], ids=["a"]), "ids: 1 ids for 2 inputs"),
        (lambda c: c.submit_jobs([JobSpec(ECHO, 1), JobSpec(ECHO, 2, retries=-1)]), "jobs:2: field 'retries'"),
    ],
)
def test_bad_inputs_are_refused_with_nothing_enqueued(client: Client, submit: Callable[[Client], Batch],
                                                      message: str) -> None:  # fmt: skip
    with pytest.raises(JobFileError, match=message) as info:
        submit(client)
    assert str(info.value).endswith("nothing was enqueued")
    assert client.redis.dbsize() == 0


def test_a_client_from_the_environment(fleet: LocalFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client() reads GPUFLEET_REDIS_URL and GPUFLEET_NAMESPACE, as the CLI does; arguments
    override them."""
    monkeypatch.setenv("GPUFLEET_REDIS_URL", fleet.redis_url)
    monkeypatch.setenv("GPUFLEET_NAMESPACE", "fromenv")
    with Client() as c:
        assert (c.settings.redis_url, c.settings.namespace) == (fleet.redis_url, "fromenv")
        batch = c.submit(ECHO, [1])
        assert read_waiting_counts(c.redis, Keys("fromenv"))["normal"].total == 1
        assert c.batch(batch.id).size == 1
    with Client(namespace=NS) as c:
        assert (c.settings.redis_url, c.settings.namespace) == (fleet.redis_url, NS)
        assert read_waiting_counts(c.redis, KEYS)["normal"].total == 0
