"""The heartbeat writer and the snapshot reader agree on the message format (plain commands,
so fakeredis stands in for Redis here)."""

from __future__ import annotations

import fakeredis
import pytest

from gpufleet.dispatcher.fleet.snapshot import read_nodes
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.gpu import CpuProbe, GpuReading, NvmlProbe, Reading, make_probe
from gpufleet.worker.heartbeat import Heartbeat, NodeInfo, heartbeat_fields, speed_changed
from gpufleet.worker.stats import NodeStats, StatsView
from tests.conftest import write_heartbeat

KEYS = Keys("t")


def test_a_heartbeat_is_read_back_as_the_node_it_describes() -> None:
    r = fakeredis.FakeRedis()
    reading = Reading.aggregate("nvml", (GpuReading(0, "H200", 0.5, 40, 140), GpuReading(1, "H200", 1.0, 100, 140)))
    view = StatsView(running=0, completed=10, failed=2, service_time_s=0.3, busy_fraction=0.9)
    fields = heartbeat_fields(NodeInfo("n1", capacity=2, speed=1.5), view, reading, models=("llama",), now_s=100.0)
    write_heartbeat(r, KEYS, "n1", fields, ttl_s=5)
    r.rpush(Keys.rq_queue(KEYS.node_queue("n1")), "j1", "j2")
    r.zadd(Keys.rq_started(KEYS.node_queue("n1")), {"j0:exec": 9e9})  # started since the heartbeat

    [n] = read_nodes(r, KEYS, now_s=101.0)
    assert (n.node_id, n.alive, n.capacity, n.queued, n.running, n.completed, n.failed) == ("n1", True, 2, 2, 1, 10, 2)
    assert (n.gpu_util, n.mem_util, n.gpu_count, n.gpu_name) == (0.75, 0.5, 2, "H200")
    assert (n.gpu_mem_total_gib, n.gpu_mem_free_gib, n.speed, n.models) == (280, 140, 1.5, ("llama",))
    assert n.heartbeat_age_s == pytest.approx(1.0)
    assert 0 < r.pttl(KEYS.alive("n1")) <= 5000


def test_a_node_whose_liveness_key_is_gone_reads_as_dead() -> None:
    r = fakeredis.FakeRedis()
    fields = heartbeat_fields(NodeInfo("n1"), StatsView(0, 0, 0, 1.0, 0.0), Reading("cpu"))
    write_heartbeat(r, KEYS, "n1", fields, ttl_s=5)
    r.delete(KEYS.alive("n1"))
    assert [n.alive for n in read_nodes(r, KEYS)] == [False]


def test_stats_track_counts_ewma_and_busy_fraction() -> None:
    t = [0.0]
    stats = NodeStats(initial_service_time_s=1.0, clock=lambda: t[0])
    stats.job_started()
    t[0] = 3.0
    stats.job_ended(3.0, ok=True)
    stats.job_started()
    t[0] = 4.0
    stats.job_ended(1.0, ok=False)
    t[0] = 8.0
    view = stats.view()
    assert (view.running, view.completed, view.failed) == (0, 1, 1)
    assert view.service_time_s == pytest.approx(1.0 + 0.2 * (3 - 1.0) + 0.2 * (1.0 - 1.4))
    assert view.busy_fraction == pytest.approx(4 / 8)
    t[0] = 10.0
    assert stats.view().busy_fraction == 0.0  # nothing ran since the last view


class FakeNvml:
    """The few pynvml calls the probe makes, for two GPUs."""

    class _Util:
        def __init__(self, gpu: int) -> None:
            self.gpu = gpu

    class _Mem:
        def __init__(self, used: int, total: int) -> None:
            self.used, self.total = used, total

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: return 2
    def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i
    def nvmlDeviceGetName(self, h: int) -> bytes: return b"Fake A100"
    def nvmlDeviceGetUtilizationRates(self, h: int) -> _Util: return self._Util(20 if h == 0 else 60)
    def nvmlDeviceGetMemoryInfo(self, h: int) -> _Mem: return self._Mem(2 * 1024**3 * (h + 1), 8 * 1024**3)


def test_nvml_probe_aggregates_every_gpu() -> None:
    reading = NvmlProbe(FakeNvml()).read()
    assert [g.name for g in reading.gpus] == ["Fake A100", "Fake A100"]
    assert reading.gpu_util == pytest.approx(0.4) and reading.mem_util == pytest.approx(6 / 16)


def test_without_nvml_the_cpu_probe_takes_over_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    def broken_init(self: NvmlProbe, *args: object, **kwargs: object) -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(NvmlProbe, "__init__", broken_init)
    probe = make_probe("nvml", lambda: 0.0)
    assert isinstance(probe, CpuProbe)
    assert "nvml unavailable" in caplog.text and "libnvidia-ml.so.1" in caplog.text
    assert 0.0 <= probe.read().mem_util <= 1.0


def test_the_sim_probe_reports_busy_fraction_as_gpu_utilization() -> None:
    assert make_probe("sim", lambda: 0.7).read().gpu_util == 0.7


def test_a_node_beats_early_when_its_speed_moves_twofold_and_settles() -> None:
    """A new node's service time starts from a 1 s guess; its first short jobs move it, and the
    dispatcher hears of it at the first check (a tenth of the interval) where it has settled,
    not at the next beat; at most one early beat between two regular ones."""
    assert speed_changed(1.0, 0.4) and speed_changed(0.01, 0.02) and speed_changed(0.0, 0.5)
    assert not speed_changed(1.0, 0.6) and not speed_changed(0.01, 0.015)

    class Scripts:
        def beat(self, *args: object) -> bool:
            return True

    stats = NodeStats()
    hb = Heartbeat(Scripts(), NodeInfo("n"), stats, make_probe("sim", lambda: 0.0),  # type: ignore[arg-type]
                   interval_s=1.0, ttl_s=5.0)
    waits: list[float] = []
    during: list[float] = []  # job durations that end during the next check's wait, one per wait

    def wait(timeout: float | None = None) -> bool:
        waits.append(timeout or 0.0)
        if during:
            duration = during.pop(0)
            for _ in range(10):
                stats.job_ended(duration, True)
        return False

    hb._stop_event.wait = wait  # type: ignore[method-assign]
    hb.beat()
    hb._wait_for_next_beat()
    assert waits == [0.1] * 10  # nothing moved: the whole interval
    waits.clear()
    during[:] = [0.001, 0.001]  # 1.0 -> 0.1 during the first check, -> 0.01 during the second
    hb._wait_for_next_beat()
    assert waits == [0.1] * 3  # still falling at the second check, settled at the third: beat
    hb.beat()
    waits.clear()
    during[:] = [1.0]  # back near 1 s at once
    hb._wait_for_next_beat()
    assert len(waits) == 10  # the last beat came early: a whole interval
    waits.clear()
    hb._sent_service_s = 0.01  # as if the regular beat had not seen the change either
    hb._wait_for_next_beat()
    assert waits == [0.1]  # then early again, at once: it had settled
