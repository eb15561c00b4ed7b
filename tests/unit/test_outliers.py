"""Outlier ejection and GPU health: which nodes routing must skip."""

from __future__ import annotations

from gpufleet.dispatcher.fleet.outliers import FailureRateOutliers
from gpufleet.dispatcher.observe.status import node_state_word
from gpufleet.dispatcher.routing.models import JobSpec, NodeState
from gpufleet.dispatcher.routing.policies import eligible
from gpufleet.worker.gpu import NvmlProbe
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView
from tests.conftest import node

from .test_heartbeat import FakeNvml


def feed(detector: FailureRateOutliers, t: float, **counts: tuple[int, int]) -> list[str]:
    nodes = [node(n, completed=c, failed=f) for n, (c, f) in counts.items()]
    return [node_id for node_id, _, _ in detector.observe(nodes, t)]


def test_a_node_failing_most_of_its_recent_jobs_is_ejected_and_a_healthy_one_is_not() -> None:
    d = FailureRateOutliers(max_failure_rate=0.5, min_jobs=10, window_s=60)
    assert feed(d, 0, bad=(0, 0), good=(0, 0)) == []  # first sight: a baseline, no verdict
    assert feed(d, 1, bad=(2, 4), good=(5, 1)) == []  # too few jobs yet
    assert feed(d, 2, bad=(3, 9), good=(12, 2)) == ["bad"]  # 9 of 12 failed; good: 2 of 14
    assert feed(d, 3, bad=(3, 10), good=(13, 2)) == []  # its history restarted at ejection


def test_old_failures_leave_the_window_and_counter_resets_are_ignored() -> None:
    d = FailureRateOutliers(max_failure_rate=0.5, min_jobs=10, window_s=60)
    feed(d, 0, n=(0, 0))
    feed(d, 1, n=(0, 9))  # 9 failures, but fewer than min_jobs
    assert feed(d, 100, n=(10, 11)) == []  # 2 of 12 in the window; the 9 are 99 s old
    assert feed(d, 101, n=(0, 0)) == []  # the worker restarted (counters went down)
    assert feed(d, 102, n=(0, 12)) == ["n"]


def test_ejected_unhealthy_and_draining_nodes_get_nothing() -> None:
    nodes = [node("ok"), node("ej", ejected=True), node("sick", healthy=False), node("dr", draining=True),
             node("dead", alive=False)]  # fmt: skip
    assert [n.node_id for n in eligible(JobSpec("f"), nodes)] == ["ok"]
    assert [node_state_word(n) for n in nodes] == ["alive", "ejected", "unhealthy", "draining", "dead"]


class SickNvml(FakeNvml):
    """GPU 1 lost from the bus; GPU 0 reports uncorrected ECC errors."""

    def nvmlDeviceGetUtilizationRates(self, h: int) -> object:
        if h == 1:
            raise RuntimeError("GPU is lost")
        return super().nvmlDeviceGetUtilizationRates(h)

    def nvmlDeviceGetTotalEccErrors(self, h: int, error_type: int, counter_type: int) -> int:
        return 3


def test_nvml_errors_and_ecc_errors_mark_the_node_unhealthy() -> None:
    reading = NvmlProbe(SickNvml()).read()
    assert not reading.healthy
    assert reading.problems == "gpu0: 3 uncorrected ECC errors; gpu1: NVML error: GPU is lost"
    assert NvmlProbe(FakeNvml()).read().healthy


def test_an_unhealthy_gpu_travels_in_the_heartbeat() -> None:
    fields = heartbeat_fields(NodeInfo("n"), StatsView(0, 0, 0, 1.0, 0.0), NvmlProbe(SickNvml()).read())
    n = NodeState.from_hash("n", fields, alive=True, queued=0, now_s=0.0)
    assert not n.healthy and not n.accepting and "ECC" in n.health_reason
