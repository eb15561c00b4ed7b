"""The web dashboard's JSON API and pages, on a real fleet (dispatcher and sim workers) over a
real Redis, through Flask's test client: what each page shows, filters and pages, the token,
the login cookie and its CSRF token, and one Redis read per refresh whoever watches."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, wait_until

pytest.importorskip("flask")
from gpufleet.dispatcher.observe.web.app import create_app
from gpufleet.dispatcher.observe.web.data import INPUT_PREVIEW, PAGE_SIZE

NS = "web"
KEYS = Keys(NS)
TOKEN = "s3cret-web-token"
SYNTHETIC = "gpufleet.worker.tasks:synthetic"


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, Settings, str]]:
    """Two sim nodes and a finished batch of 60 jobs: 3 failed, one with a long input."""
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    f = LocalFleet(redis_server.url, namespace=NS, env={**FAST_ENV, "GPUFLEET_HISTORY_BUCKET_S": "0.5"})
    try:
        f.start_dispatcher()
        for node_id in ("g0", "g1"):
            f.start_worker(SimNode(node_id))
        f.wait_for_nodes(r, ["g0", "g1"])
        settings = Settings(redis_url=redis_server.url, namespace=NS)
        specs = [JobSpec(SYNTHETIC, {"cost": 0.0, "i": i, **({"fail": True} if i in (5, 6, 7) else {}),
                                     **({"text": "x" * (INPUT_PREVIEW + 500)} if i == 9 else {})},
                         client_id=f"c{i}") for i in range(60)]  # fmt: skip
        batch = Submitter(r, settings).submit(specs, batch_id="web-batch", tenant="team-w").batch_id
        wait_until(lambda: read_progress(r, KEYS, batch).done, 60, "the batch to end")
        yield r, settings, batch
    finally:
        f.stop()


def job_id_of(r: redis.Redis, batch: str, index: int) -> str:
    return r.lindex(KEYS.batch_jobs(batch), index).decode()  # type: ignore[union-attr]


def test_the_fleet_api_has_every_node_with_its_gpu_figures_and_the_tenants(
    fleet: tuple[redis.Redis, Settings, str],
) -> None:
    r, settings, _ = fleet
    client = create_app(r, settings).test_client()
    data = client.get("/api/fleet").get_json()
    assert {n["node"] for n in data["nodes"]} == {"g0", "g1"}
    assert all(n["state"] == "alive" and "gpus" in n and 0 <= n["gpu_util"] <= 1 for n in data["nodes"])
    assert data["counts"]["live"] == 2 and set(data["ingress"]) == {"high", "normal", "low"}
    assert any(t["tenant"] == "team-w" for t in data["tenants"]) or data["tenants"] == []
    page = client.get("/")
    assert page.status_code == 200 and b'data-page="fleet"' in page.data and b"/api/fleet" in page.data


def test_the_history_counts_the_batch_and_outlives_the_web_process(fleet: tuple[redis.Redis, Settings, str]) -> None:
    """The dispatcher writes a bucket every 0.5 s here; the batch's 60 jobs (3 failed) are in
    them, and a new app (a web restart) reads the same history: it is kept in Redis."""
    r, settings, _ = fleet

    def buckets() -> list[dict[str, float]]:
        return list(create_app(r, settings).test_client().get("/api/history").get_json()["buckets"])

    got = wait_until(lambda: (b := buckets()) and sum(x["ended"] for x in b) >= 60 and b, 20, "the history")
    assert sum(x["failed"] for x in got) >= 3 and all(x["jobs_per_s"] == x["ended"] / 0.5 for x in got)
    assert [x["t"] for x in got] == sorted(x["t"] for x in got)
    again = buckets()
    assert again[: len(got)] == got


def test_one_fleet_read_per_refresh_whoever_watches(fleet: tuple[redis.Redis, Settings, str]) -> None:
    r, settings, _ = fleet
    app = create_app(r, settings, refresh_s=60)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/fleet").status_code == 200
    assert app.extensions["gpufleet_fleet"].reads == 1


def test_batches_and_a_batch_filtered_searched_and_paginated(fleet: tuple[redis.Redis, Settings, str]) -> None:
    r, settings, batch = fleet
    client = create_app(r, settings).test_client()
    listed = client.get("/api/batches").get_json()
    row = next(b for b in listed["batches"] if b["batch"] == batch)
    assert (row["size"], row["finished"], row["failed"], row["done"], row["tenant"]) == (60, 57, 3, True, "team-w")
    first = client.get(f"/api/batches/{batch}").get_json()
    assert [j["id"] for j in first["jobs"]] == [f"c{i}" for i in range(PAGE_SIZE)]
    second = client.get(f"/api/batches/{batch}?page=1").get_json()
    assert [j["id"] for j in second["jobs"]] == [f"c{i}" for i in range(PAGE_SIZE, 60)]
    failed = client.get(f"/api/batches/{batch}?status=failed").get_json()
    assert [j["id"] for j in failed["jobs"]] == ["c5", "c6", "c7"] and failed["done_scanning"]
    assert all("synthetic failure" in j["error"] for j in failed["jobs"])
    found = client.get(f"/api/batches/{batch}?q=c42").get_json()
    assert [j["id"] for j in found["jobs"]] == ["c42"]
    assert client.get(f"/api/batches/{batch}?status=bogus").status_code == 400
    assert client.get("/api/batches/no-such-batch").status_code == 404
    assert client.get("/batches/no-such-batch").status_code == 404
    assert client.get(f"/batches/{batch}").status_code == 200


def test_a_job_shows_its_input_result_or_traceback(fleet: tuple[redis.Redis, Settings, str]) -> None:
    r, settings, batch = fleet
    client = create_app(r, settings).test_client()
    ok = client.get(f"/api/jobs/{job_id_of(r, batch, 0)}").get_json()
    assert ok["status"] == "finished" and ok["result"]["input"]["i"] == 0 and ok["node"] in ("g0", "g1")
    assert (ok["batch"], ok["tenant"], ok["attempts"], ok["traceback"]) == (batch, "team-w", 1, "")
    events = [(e["event"], e["node"]) for e in ok["events"]]
    assert events == [("job_started", ok["node"]), ("job_finished", ok["node"])]
    assert ok["events_complete"]
    failed = client.get(f"/api/jobs/{job_id_of(r, batch, 5)}").get_json()
    assert [e["event"] for e in failed["events"]][:2] == ["job_started", "job_failed"]
    assert failed["status"] == "failed" and "Traceback" in failed["traceback"]
    assert "RuntimeError: synthetic failure" in failed["traceback"]
    long_one = job_id_of(r, batch, 9)
    short = client.get(f"/api/jobs/{long_one}").get_json()
    whole = client.get(f"/api/jobs/{long_one}?full=1").get_json()
    assert short["input_truncated"] and len(short["input"]) == INPUT_PREVIEW
    assert not whole["input_truncated"] and len(whole["input"]) == whole["input_chars"] > INPUT_PREVIEW
    assert client.get("/api/jobs/nope").status_code == 404


def test_actions_need_the_token_and_a_login_needs_the_csrf_token(fleet: tuple[redis.Redis, Settings, str]) -> None:
    r, settings, _ = fleet
    read_only = create_app(r, settings).test_client()
    refused = read_only.post("/api/nodes/g1/drain")
    assert refused.status_code == 403 and "read-only" in refused.get_json()["error"]
    assert not r.exists(KEYS.drain_flag("g1"))

    client = create_app(r, settings, token=TOKEN).test_client()
    assert client.post("/api/nodes/g1/drain").status_code == 401
    assert client.post("/api/nodes/g1/drain", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    assert client.post("/login", data={"token": TOKEN}).status_code == 302
    assert client.post("/api/nodes/g1/drain").status_code == 403  # the cookie alone: no CSRF token
    page = client.get("/").data.decode()
    assert TOKEN not in page and settings.redis_url not in page
    csrf = page.split('name="csrf" content="', 1)[1].split('"', 1)[0]
    done = client.post("/api/nodes/g1/drain", headers={"X-CSRF-Token": csrf})
    assert done.status_code == 200 and done.get_json() == {"node": "g1", "draining": True}
    assert r.exists(KEYS.drain_flag("g1"))
    bearer = create_app(r, settings, token=TOKEN).test_client()
    undone = bearer.post("/api/nodes/g1/undrain", headers={"Authorization": f"Bearer {TOKEN}"})
    assert undone.status_code == 200 and not r.exists(KEYS.drain_flag("g1"))
    assert bearer.post("/api/nodes/ghost/drain", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_cancel_and_requeue_a_batch_through_the_api(fleet: tuple[redis.Redis, Settings, str]) -> None:
    r, settings, batch = fleet
    client = create_app(r, settings, token=TOKEN).test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    requeued = client.post(f"/api/batches/{batch}/requeue", headers=auth).get_json()
    assert requeued == {"batch": batch, "requeued": 3}
    wait_until(lambda: read_progress(r, KEYS, batch).failed == 3, 30, "the requeued jobs to fail again")
    queued = Submitter(r, settings).submit([JobSpec(SYNTHETIC, {"cost": 5.0}) for _ in range(40)]).batch_id
    canceled = client.post(f"/api/batches/{queued}/cancel", headers=auth).get_json()
    assert canceled["batch"] == queued and canceled["canceled"] >= 30
    listed = json.loads(client.get("/api/batches").data)
    assert any(b["batch"] == queued and b["canceled"] == canceled["canceled"] for b in listed["batches"])
