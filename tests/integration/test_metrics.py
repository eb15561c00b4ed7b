"""Prometheus metrics of a real fleet, scraped over HTTP: `gpufleet dispatcher --metrics-port` and
`gpufleet worker --metrics-port` (a node of capacity 2, so its jobs run in two slot processes)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import redis
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.routing.policies import DEFAULT_POLICY
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer, free_port
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, wait_until

Samples = list[tuple[str, dict[str, str], float]]
BATCH = 40


def scrape(port: int) -> Samples:
    """Every sample at http://127.0.0.1:port/metrics; [] while the server is not up yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return []
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def total(found: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for n, ls, v in found if n == name and labels.items() <= ls.items())


def scraped_until(port: int, ok: Callable[[Samples], bool], what: str) -> Samples:
    found: Samples = []

    def check() -> bool:
        nonlocal found
        found = scrape(port)
        return bool(found) and ok(found)

    wait_until(check, 30, what, poll_s=0.1)
    return found


def test_a_batch_shows_up_in_the_dispatcher_and_worker_metrics(redis_server: RedisServer) -> None:
    """Given one node and a batch of 40 jobs, once the batch is done the dispatcher counts 40
    dispatched to that node and the worker 40 finished, each with a duration."""
    r = redis.Redis.from_url(redis_server.url)
    d_port, w_port = free_port(), free_port()
    f = LocalFleet(redis_server.url, namespace="metrics", env=FAST_ENV)
    try:
        f.start_dispatcher("--metrics-port", str(d_port))
        f.start_worker(SimNode("m1", 1.0, capacity=2), "--metrics-port", str(w_port))
        f.wait_for_nodes(r, ["m1"])
        scraped_until(d_port, lambda s: total(s, "gpufleet_nodes", state="alive") == 1, "one alive node in metrics")

        specs = [JobSpec("gpufleet.worker.tasks:synthetic", {"cost": 0.01, "i": i}) for i in range(BATCH)]
        receipt = Submitter(r, Settings(redis_url=redis_server.url, namespace="metrics")).submit(specs)
        wait_until(lambda: read_progress(r, Keys("metrics"), receipt.batch_id).done, 60, "the batch to finish")

        dispatched = scraped_until(d_port, lambda s: total(s, "gpufleet_jobs_dispatched_total") == BATCH,
                                   "jobs_dispatched_total to reach the batch size")  # fmt: skip
        assert total(dispatched, "gpufleet_jobs_dispatched_total", node="m1", policy=DEFAULT_POLICY) == BATCH
        assert total(dispatched, "gpufleet_dispatch_seconds_count") >= 1
        fleet = scraped_until(d_port, lambda s: total(s, "gpufleet_node_queue_jobs", node="m1") == 0
                              and total(s, "gpufleet_ingress_jobs") == 0, "the queues to empty")  # fmt: skip
        assert total(fleet, "gpufleet_nodes", state="alive") == 1 and total(fleet, "gpufleet_nodes", state="dead") == 0
        utilization = [ls for n, ls, _ in fleet if n == "gpufleet_node_gpu_utilization_ratio"]
        assert utilization == [{"node": "m1", "gpu": "all"}]  # the sim probe reports no per-GPU list
        assert not any(n == "gpufleet_desired_nodes" for n, _, _ in fleet)  # no autoscaler has published one

        done = scraped_until(w_port, lambda s: total(s, "gpufleet_jobs_finished_total", status="finished") == BATCH,
                             "jobs_finished_total to reach the batch size")  # fmt: skip
        assert total(done, "gpufleet_jobs_finished_total", node="m1", status="failed") == 0
        assert total(done, "gpufleet_job_duration_seconds_count", node="m1") == BATCH
        assert total(done, "gpufleet_job_duration_seconds_bucket", node="m1", le="+Inf") == BATCH
        assert total(done, "gpufleet_job_duration_seconds_sum", node="m1") >= BATCH * 0.01
    finally:
        f.stop()
