"""`gpufleet demo` starts its own Redis even with GPUFLEET_REDIS_URL exported (the real fleet's,
as README tells fleet users to do), and on a Redis named on its command line it leaves no
demo node behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import redis

from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET

from .support import FAST_ENV

pytestmark = pytest.mark.integration


def demo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPUFLEET, "demo", "--jobs", "5", "--json", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **FAST_ENV, **env})  # fmt: skip


def test_demo_leaves_the_exported_fleet_alone_and_forgets_its_nodes_on_a_named_redis(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    out = demo(env={"GPUFLEET_REDIS_URL": redis_server.url})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["finished"] == 5 and "embedded redis-server on" in out.stderr
    assert r.dbsize() == 0  # not one key in the exported fleet's Redis

    out = demo("--redis-url", redis_server.url, env={"GPUFLEET_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["finished"] == 5 and sum(n["jobs"] for n in record["nodes"]) == 5
    assert "embedded" not in out.stderr and r.exists(Keys().batch_info(record["batch"]))
    assert r.scard(Keys().nodes) == 0 and not r.keys("gpufleet:node:*")  # the demo's nodes were forgotten


def test_local_json_names_its_own_embedded_redis_while_the_fleet_is_up(r: redis.Redis,
                                                                      redis_server: RedisServer) -> None:  # fmt: skip
    proc = subprocess.Popen([*GPUFLEET, "local", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **FAST_ENV, "GPUFLEET_REDIS_URL": redis_server.url})  # fmt: skip
    try:
        assert proc.stdout is not None
        record = json.loads(proc.stdout.readline())
        assert record["redis_url"] != redis_server.url and record["namespace"] == "gpufleet"
        embedded = redis.Redis.from_url(record["redis_url"])
        assert {m.decode() for m in embedded.smembers(Keys().nodes)} == set(record["nodes"]) == {
            "sim-1x", "sim-2x", "sim-4x"}  # fmt: skip
        assert r.dbsize() == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
