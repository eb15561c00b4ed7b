"""One fleet, one set of words: `status`, `top`, the metrics and the autoscaler count the same
nodes as live and in each state; a node dead too long leaves the view; drain, undrain and
requeue print JSON; forget refuses what it must. Nodes are heartbeats written by hand."""

from __future__ import annotations

import json
import time

import pytest
import redis
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.cli.main import cli
from gpufleet.dispatcher.fleet.autoscale import demand_of
from gpufleet.dispatcher.fleet.node_claim import OPERATOR_DRAIN
from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.observe.metrics import DispatcherMetrics
from gpufleet.dispatcher.observe.status import STATES, read_status
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from tests.conftest import write_heartbeat

pytestmark = pytest.mark.integration

NS = "states"
KEYS = Keys(NS)
EXPECTED = {"live": 4, "alive": 1, "draining": 1, "ejected": 1, "unhealthy": 1, "dead": 1}


def beat(r: redis.Redis, node_id: str, age_s: float = 0.2, **fields: str) -> None:
    write_heartbeat(r, KEYS, node_id, {"ts": repr(time.time() - age_s), "capacity": "1", "service_time_s": "0.5",
                                       **fields}, ttl_s=30)  # fmt: skip


@pytest.fixture
def fleet(r: redis.Redis) -> redis.Redis:
    """a alive, b draining, c ejected, d unhealthy, e dead a minute, f dead two hours (out of view)."""
    for node_id in "abcdef":
        beat(r, node_id, healthy="0" if node_id == "d" else "1",
             age_s={"e": 60.0, "f": 7200.0}.get(node_id, 0.2))  # fmt: skip
    r.set(KEYS.drain_flag("b"), OPERATOR_DRAIN)
    r.set(KEYS.ejected("c"), "0.90", px=30_000)
    r.delete(KEYS.alive("e"), KEYS.alive("f"))
    return r


def invoke(server: RedisServer, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--redis-url", server.url, "--namespace", NS, *args], env=env)
    return result.exit_code, result.output


def test_status_top_metrics_and_autoscaler_agree_on_one_fleet(fleet: redis.Redis, redis_server: RedisServer) -> None:
    """Given one node in each state and one dead for two hours, expect live 4 (every state but
    dead) everywhere, each state counted once, and the old dead node left out of every view."""
    code, out = invoke(redis_server, "status", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["counts"] == EXPECTED and status["hidden_dead"] == 1
    assert {n["node"]: n["state"] for n in status["nodes"]} == {
        "a": "alive", "b": "draining", "c": "ejected", "d": "unhealthy", "e": "dead"}  # fmt: skip

    code, text = invoke(redis_server, "status")
    assert "nodes: live 4 · alive 1 · draining 1 · ejected 1 · unhealthy 1 · dead 1" in text, text
    assert "1 dead node not shown" in text

    code, out = invoke(redis_server, "top", "--once", "--json")
    assert code == 0, out
    frame = json.loads(out)
    assert frame["counts"] == EXPECTED and [n["node"] for n in frame["nodes"]] == list("abcde")
    code, out = invoke(redis_server, "top", "--once")
    assert out.splitlines()[0].startswith("live 4 · desired - · alive 1 · draining 1 · ejected 1 · unhealthy 1 "
                                          "· dead 1")  # fmt: skip

    nodes = read_nodes(fleet, KEYS)
    metrics = DispatcherMetrics("round-robin", CollectorRegistry())
    metrics.observe_fleet(fleet, KEYS, nodes)
    by_state = {s.labels["state"]: s.value for family in text_string_to_metric_families(metrics.exposition().decode())
                for s in family.samples if s.name == "gpufleet_nodes"}  # fmt: skip
    assert by_state == {s: EXPECTED[s] for s in STATES}
    assert sum(by_state.values()) - by_state["dead"] == EXPECTED["live"]

    assert demand_of(nodes, {"high": 0, "normal": 0, "low": 0}, 0.0).live_nodes == EXPECTED["live"]


def test_forget_dead_after_zero_keeps_every_dead_node_in_view(fleet: redis.Redis, redis_server: RedisServer) -> None:
    _, out = invoke(redis_server, "status", "--json", env={"GPUFLEET_FORGET_DEAD_AFTER_S": "0"})
    assert json.loads(out)["counts"]["dead"] == 2 and json.loads(out)["hidden_dead"] == 0
    status = read_status(fleet, KEYS, forget_dead_after_s=30.0)  # e (dead a minute) leaves the view too
    assert [n["node"] for n in status["nodes"]] == list("abcd") and status["hidden_dead"] == 2


def test_drain_undrain_and_requeue_print_json(fleet: redis.Redis, redis_server: RedisServer) -> None:
    code, out = invoke(redis_server, "drain", "a", "--json")
    assert code == 0 and json.loads(out) == {"node": "a", "draining": True}
    assert json.loads(invoke(redis_server, "status", "--json")[1])["counts"]["draining"] == 2
    code, out = invoke(redis_server, "undrain", "a", "--json")
    assert code == 0 and json.loads(out) == {"node": "a", "draining": False} and not fleet.exists(KEYS.drain_flag("a"))
    code, out = invoke(redis_server, "requeue", "--failed", "--json")
    assert code == 0 and json.loads(out) == {"requeued": 0}
    code, out = invoke(redis_server, "drain", "nosuch", "--json")
    assert code == 1 and "no node 'nosuch'" in out


def test_forget_refuses_a_live_node_and_an_unknown_one(fleet: redis.Redis, redis_server: RedisServer) -> None:
    code, out = invoke(redis_server, "forget", "b")
    assert code == 1 and "node 'b' is live" in out and "stop that worker first" in out and "Traceback" not in out
    assert fleet.sismember(KEYS.nodes, "b") and fleet.exists(KEYS.heartbeat("b"), KEYS.drain_flag("b")) == 2
    code, out = invoke(redis_server, "forget", "nosuch")
    assert code == 1 and "no node 'nosuch'" in out


def test_forget_removes_every_key_of_an_idle_dead_node(fleet: redis.Redis, redis_server: RedisServer) -> None:
    """f (dead two hours, out of view, an old eject flag and an empty held-list set) leaves no key behind."""
    fleet.set(KEYS.ejected("f"), "0.75")
    fleet.sadd(KEYS.held_lists("f"), KEYS.held("f", "p1"))
    fleet.rpush(KEYS.node_wakeup("f"), 1)
    code, out = invoke(redis_server, "forget", "f", "--json")
    assert code == 0 and json.loads(out) == {"node": "f", "forgotten": True, "requeued": 0, "retried": 0,
                                             "failed": 0, "failed_kept": 0}  # fmt: skip
    assert not fleet.sismember(KEYS.nodes, "f") and not fleet.keys(f"{NS}:node:f:*")
    assert json.loads(invoke(redis_server, "status", "--json")[1])["hidden_dead"] == 0
