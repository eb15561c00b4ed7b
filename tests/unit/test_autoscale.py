"""The autoscaler's decisions: pure numbers in, a node count out, with an injected clock."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fakeredis
import pytest

from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.fleet.autoscale import (
    ArrivalMeter,
    Autoscaler,
    Decision,
    Demand,
    ScaleCommand,
    ScaleParams,
    clear_desired,
    decide,  # fmt: skip
    demand_of,
    needed_nodes,
    publish_desired,
    read_desired,
    scale_argv,
)
from gpufleet.dispatcher.store.keys import Keys
from tests.conftest import node

PARAMS = ScaleParams(target_drain_s=60, min_nodes=1, max_nodes=10, up_cooldown_s=15, down_cooldown_s=300)


def demand(backlog: int = 0, arrival: float = 0.0, per_node: float | None = 2.0, live: int = 2) -> Demand:
    return Demand(backlog=backlog, arrival_rate=arrival, node_throughput=per_node, live_nodes=live)


def test_nodes_serve_the_arrivals_and_drain_the_backlog_within_the_target() -> None:
    # 4 jobs/s arriving + 600 waiting / 60 s = 14 jobs/s; at 2 jobs/s per node: 7 nodes
    assert needed_nodes(demand(backlog=600, arrival=4.0), PARAMS) == 7
    # 4.2 jobs/s needs a third node at 2 jobs/s each: the count rounds up
    assert needed_nodes(demand(arrival=4.2), PARAMS) == 3


def test_a_backlog_scales_up_at_once_on_the_first_decision() -> None:
    assert decide(demand(backlog=1200), PARAMS, now=0.0, last=None) == Decision(10, 0.0)


def test_a_growing_backlog_scales_up_after_the_short_up_cool_down() -> None:
    last = Decision(2, changed_at=100.0)
    assert decide(demand(backlog=600), PARAMS, now=110.0, last=last) is last  # 10 s < 15 s
    assert decide(demand(backlog=600), PARAMS, now=115.0, last=last) == Decision(5, 115.0)


def test_scale_down_waits_out_the_down_cool_down() -> None:
    """Given 8 nodes chosen at t=0, if the load vanishes, expect 8 until t=300, then the minimum."""
    last = Decision(8, changed_at=0.0)
    for now in (1.0, 60.0, 299.9):
        assert decide(demand(), PARAMS, now=now, last=last) is last
    assert decide(demand(), PARAMS, now=300.0, last=last) == Decision(1, 300.0)


def test_no_flapping_inside_the_cool_down_after_a_scale_up() -> None:
    """Up at t=0 on a burst; the burst drains at t=20; the count holds until t=300."""
    first = decide(demand(backlog=600), PARAMS, now=0.0, last=None)
    counts = [decide(demand(backlog=600 if t < 20 else 0), PARAMS, now=float(t), last=first).nodes
              for t in range(0, 300, 5)]  # fmt: skip
    assert set(counts) == {first.nodes} == {5}


def test_never_past_the_bounds() -> None:
    assert needed_nodes(demand(backlog=10**9, arrival=1e6), PARAMS) == PARAMS.max_nodes
    assert needed_nodes(demand(), PARAMS) == PARAMS.min_nodes
    assert decide(demand(backlog=10**9), PARAMS, now=1e6, last=Decision(10, 0.0)).nodes == 10
    assert decide(demand(), PARAMS, now=1e6, last=Decision(1, 0.0)).nodes == 1


def test_a_count_outside_new_bounds_moves_into_them_at_once() -> None:
    assert decide(demand(backlog=10**6), ScaleParams(max_nodes=4), now=1.0, last=Decision(9, 0.5)) == Decision(4, 1.0)


def test_no_live_nodes_means_no_throughput_figure_and_work_asks_for_one_node() -> None:
    """Scale from zero: with no live node there is no throughput to size by."""
    zero = ScaleParams(min_nodes=0, max_nodes=10)
    assert needed_nodes(demand(backlog=500, per_node=None, live=0), zero) == 1
    assert needed_nodes(demand(arrival=3.0, per_node=0.0, live=0), zero) == 1
    assert needed_nodes(demand(per_node=None, live=0), zero) == 0
    assert needed_nodes(demand(per_node=None, live=0), PARAMS) == 1  # the minimum still holds


def test_a_snapshot_becomes_a_demand() -> None:
    nodes = [node("a", capacity=2, service_time_s=0.5, queued=3), node("b", service_time_s=0.25, queued=1),
             node("c", alive=False, queued=7)]  # fmt: skip
    d = demand_of(nodes, {"high": 1, "normal": 10, "low": 0}, arrival_rate=2.5)
    assert d == Demand(backlog=15, arrival_rate=2.5, node_throughput=4.0, live_nodes=2)
    assert demand_of([node("x", alive=False)], {"normal": 5}, 0.0).node_throughput is None


def test_arrivals_are_what_the_backlog_grew_by_plus_what_ended() -> None:
    meter = ArrivalMeter(window_s=1.0)  # no smoothing at 1 s steps
    assert meter.observe(0.0, unfinished=0, ended=0) == 0.0
    assert meter.observe(1.0, unfinished=5, ended=10) == pytest.approx(15.0)
    assert meter.observe(2.0, unfinished=5, ended=3) == 0.0  # counters reset: nothing counted as ended


def test_scale_command_gets_the_count_without_a_shell() -> None:
    assert scale_argv("kubectl scale deploy/gpu --replicas={n}", 3) == ["kubectl", "scale", "deploy/gpu",
                                                                        "--replicas=3"]  # fmt: skip
    assert scale_argv("echo '{n}; rm -rf /'", 2) == ["echo", "2; rm -rf /"]


def test_bad_params_are_refused() -> None:
    with pytest.raises(SettingsError, match="min_nodes <= max_nodes"):
        ScaleParams(min_nodes=5, max_nodes=2)
    with pytest.raises(SettingsError, match="target_drain_s"):
        ScaleParams(target_drain_s=0)


def test_the_desired_count_round_trips_through_its_key() -> None:
    r, keys = fakeredis.FakeRedis(), Keys("t")
    assert read_desired(r, keys) is None
    publish_desired(r, keys, 6)
    assert read_desired(r, keys) == 6 and r.get("t:autoscale:desired") == b"6"
    clear_desired(r, keys)
    assert read_desired(r, keys) is None


def test_the_autoscaler_publishes_and_calls_the_scale_command_only_on_a_change() -> None:
    """Given 600 jobs in the ingress and two live nodes at 2 jobs/s, expect 5 published at once;
    then nothing new until the backlog is gone and the down cool-down has passed."""
    r, keys, clock, calls = fakeredis.FakeRedis(), Keys(), [0.0], list[int]()
    r.rpush(Keys.rq_queue(keys.ingress_queue("normal")), *range(600))
    scaler = Autoscaler(r, keys, PARAMS, interval_s=1.0, on_change=calls.append, clock=lambda: clock[0])
    nodes = [node("a", service_time_s=0.5), node("b", service_time_s=0.5)]
    assert scaler.step(nodes) == 5 and read_desired(r, keys) == 5
    assert scaler.step(nodes) is None  # not due yet
    r.delete(Keys.rq_queue(keys.ingress_queue("normal")))
    clock[0] = 10.0
    assert scaler.step(nodes) == 5  # the backlog is gone, but the down cool-down holds
    clock[0] = 301.0
    assert scaler.step(nodes) == 1 and calls == [5, 1]


def test_a_dispatcher_taking_over_keeps_the_published_count_through_the_cool_down() -> None:
    r, keys = fakeredis.FakeRedis(), Keys()
    publish_desired(r, keys, 7)
    scaler = Autoscaler(r, keys, PARAMS, clock=lambda: 50.0)
    assert scaler.step([node("a")]) == 7


def test_a_scale_command_that_cannot_start_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ScaleCommand("/nonexistent/scale-to {n}")(3)
    assert "scale command failed to start n=3" in caplog.text


def test_the_scale_command_runs_with_the_count(tmp_path: Path) -> None:
    out = tmp_path / "n"
    ScaleCommand(f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' {out} {{n}}")(4)
    deadline = time.monotonic() + 10
    while not (out.exists() and out.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert out.read_text() == "4"
