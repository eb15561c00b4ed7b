"""rq-dashboard's own data endpoints against a busy gpufleet fleet answer 200 with gpufleet's
rq-dashboard config (dispatcher/observe/rq_dashboard.py); rq-dashboard's `--json` flag alone
still answers 500 on the Workers endpoint (rq-dashboard 0.9.0: its `Worker.all` takes no
serializer).

rq-dashboard is not a test dependency (0.9.0 imports six without declaring it, and brings
Flask): the module is skipped where it does not import. To run it, install rq-dashboard and
six next to gpufleet, or put them on PYTHONPATH (`pip install --target DIR rq-dashboard six`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import PRIORITIES, Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import local_fleet, wait_until

rq_dashboard = pytest.importorskip("rq_dashboard", reason="rq-dashboard (and six) not installed")
from rq_dashboard import cli as dashboard_cli  # noqa: E402
from rq_dashboard import web  # noqa: E402 (after the importorskip above, which skips the module without it)

pytestmark = pytest.mark.integration

NS = "dash"
KEYS = Keys(NS)
CONFIG = "gpufleet.dispatcher.observe.rq_dashboard"
REGISTRIES = ("queued", "started", "finished", "failed", "canceled", "deferred", "scheduled")


@pytest.fixture(scope="module")
def busy_fleet(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, str]]:
    """Node n1 running a long job with one more queued, after a job that finished and one
    that failed: every registry a dashboard page reads has something in it. Yields the
    running job's id."""
    with local_fleet(redis_server.url, NS) as fleet:
        r = redis.Redis.from_url(redis_server.url)
        start(fleet, r)
        submitter = Submitter(r, Settings(redis_url=redis_server.url, namespace=NS))
        done = submitter.submit([JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0}),
                                 JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0, "fail": True})])  # fmt: skip
        wait_until(lambda: read_progress(r, KEYS, done.batch_id).done, 20, "the quick jobs to end")
        submitter.submit([JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 60}) for _ in range(2)])
        started = Keys.rq_started(KEYS.node_queue("n1"))
        member = wait_until(lambda: r.zrange(started, 0, 0), 20, "n1 to run a job")[0].decode()
        yield r, member.split(":")[0]


def start(fleet: LocalFleet, r: redis.Redis) -> None:
    fleet.start_dispatcher()
    fleet.start_worker(SimNode("n1"))
    fleet.wait_for_nodes(r, ["n1"])


def dashboard(url: str, config: str | None) -> Any:
    """rq-dashboard's Flask app as its CLI builds it (`rq-dashboard [--config MODULE] -u URL`)."""
    app = dashboard_cli.make_flask_app(config, None, None, "")
    app.config["RQ_DASHBOARD_REDIS_URL"] = url
    web.setup_rq_connection(app)
    return app.test_client()


@pytest.fixture
def gpufleet_config() -> None:
    """The config module's effect, set again for each test (the module runs it once, at import)."""
    from gpufleet.dispatcher.observe import rq_dashboard as config

    config.use_json()


def test_every_data_endpoint_answers_200_on_a_busy_fleet(busy_fleet: tuple[redis.Redis, str], redis_server: RedisServer,
                                                         gpufleet_config: None) -> None:  # fmt: skip
    _, running = busy_fleet
    client = dashboard(redis_server.url, CONFIG)

    workers = client.get("/0/data/workers.json")
    assert workers.status_code == 200, workers.data[:500]
    [worker] = [w for w in workers.get_json()["workers"] if w["queues"] == [KEYS.node_queue("n1")]]
    assert worker["state"] == "busy" and worker["current_job"]["job_id"] == running
    assert worker["current_job"]["call_string"].startswith("gpufleet.worker.tasks.synthetic(")

    queues = client.get("/0/data/queues.json")
    assert queues.status_code == 200
    names = {q["name"] for q in queues.get_json()["queues"]}
    assert {KEYS.node_queue("n1"), KEYS.ingress_queue("normal")} <= names

    for queue in [KEYS.node_queue("n1"), *(KEYS.ingress_queue(p) for p in PRIORITIES)]:
        for registry in REGISTRIES:
            page = client.get(f"/0/data/jobs/{queue}/{registry}/8/asc/1.json")
            assert page.status_code == 200, (queue, registry, page.data[:300])
    failed = client.get(f"/0/data/jobs/{KEYS.node_queue('n1')}/failed/8/asc/1.json").get_json()["jobs"]
    assert len(failed) == 1 and "synthetic failure" in failed[0]["exc_info"]

    for job_id in (running, failed[0]["id"]):
        job = client.get(f"/0/data/job/{job_id}.json")
        assert job.status_code == 200 and job.get_json()["id"] == job_id, job.data[:300]
    for view in ("/0/view/workers", "/0/view/queues", f"/0/view/job/{running}"):
        assert client.get(view, follow_redirects=True).status_code == 200, view


def test_rq_dashboards_own_json_flag_still_fails_on_busy_workers(busy_fleet: tuple[redis.Redis, str],
                                                                 redis_server: RedisServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """What the config module is for: with only `--json` (its serializer setting), the job pages
    read gpufleet's jobs, but the Workers endpoint reads a busy worker's job with pickle."""
    from rq_dashboard.version import VERSION

    if VERSION != "0.9.0":
        pytest.skip(f"checked against rq-dashboard 0.9.0 only (installed: {VERSION})")
    from rq import Worker
    from rq.serializers import JSONSerializer

    monkeypatch.setattr(web, "Worker", Worker)  # as rq-dashboard ships it
    monkeypatch.setattr(web.config, "serializer", JSONSerializer)  # what its --json flag sets
    client = dashboard(redis_server.url, None)
    _, running = busy_fleet
    assert client.get(f"/0/data/job/{running}.json").status_code == 200
    assert client.get("/0/data/workers.json").status_code == 500
