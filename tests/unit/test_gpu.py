"""The NVML probe and GPU discovery against a fake pynvml: several GPUs, one lost, one with
ECC errors, one split into MIG instances. No GPU needed."""

from __future__ import annotations

import json

import pytest

from gpufleet.worker.gpu import CpuProbe, GpuDevice, NvmlProbe, discover_gpus, make_probe

from .fake_nvml import FakeGpu, FakeNvml, mig_gpu


def fleet() -> FakeNvml:
    """GPU 0 healthy, GPU 1 with uncorrected ECC errors, GPU 2 split into MIG instances 0 and 2,
    GPU 3 on a card without power or temperature sensors."""
    return FakeNvml([FakeGpu(util_percent=93, mem_used_gib=70.5), FakeGpu(ecc_uncorrected=2), mig_gpu(0, 2),
                     FakeGpu(name="NVIDIA T4", temperature_c=None, power_mw=None, power_limit_mw=None)])  # fmt: skip


def test_discovery_lists_whole_gpus_and_mig_instances_in_place_of_their_gpu() -> None:
    nvml = fleet()
    devices = discover_gpus(nvml)
    assert [d.label for d in devices] == ["0", "1", "2:0", "2:2", "3"]
    assert [d.cuda_visible for d in devices] == ["0", "1", "MIG-fake-2-0", "MIG-fake-2-2", "3"]
    assert devices[2] == GpuDevice("2:0", 2, 0, "MIG-fake-2-0", "NVIDIA A100-SXM4-80GB MIG 1g.10gb")
    assert nvml.inits == 0  # every nvmlInit was matched by nvmlShutdown


def test_discovery_without_a_driver_or_pynvml_finds_nothing_and_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert discover_gpus(FakeNvml([FakeGpu()], driver_loaded=False)) == ()
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert discover_gpus() == ()


def test_a_gpu_lost_before_discovery_is_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(lost=True), FakeGpu()])
    assert [d.label for d in discover_gpus(nvml)] == ["0", "2"]
    assert "gpu left out index=1" in caplog.text


def test_each_gpu_reports_util_memory_temperature_and_power() -> None:
    reading = NvmlProbe(fleet()).read()
    g = {r.label: r for r in reading.gpus}
    assert (g["0"].name, g["0"].uuid, g["0"].util, g["0"].mem_used_gib, g["0"].mem_total_gib) == (
        "NVIDIA H200", "GPU-fake-0", 0.93, pytest.approx(70.5), pytest.approx(141.0))
    assert (g["0"].temperature_c, g["0"].power_w, g["0"].power_limit_w) == (45, 300.0, 700.0)
    assert (g["3"].temperature_c, g["3"].power_w, g["3"].power_limit_w) == (None, None, None)  # NotSupported
    assert g["3"].healthy


def test_mig_instances_are_gpus_of_their_own_without_utilization() -> None:
    reading = NvmlProbe(fleet()).read()
    mig = next(r for r in reading.gpus if r.label == "2:2")
    assert (mig.index, mig.uuid, mig.util, mig.mem_total_gib, mig.healthy) == (2, "MIG-fake-2-2", None, 9.75, True)
    whole = [r.util for r in reading.gpus if r.util is not None]
    assert reading.gpu_util == pytest.approx(sum(whole) / len(whole))  # the mean skips what NVML cannot measure


def test_uncorrected_ecc_errors_mark_that_gpu_and_the_node_unhealthy() -> None:
    reading = NvmlProbe(fleet()).read()
    assert [r.label for r in reading.gpus if not r.healthy] == ["1"]
    assert reading.problems == "gpu1: 2 uncorrected ECC errors"


def test_a_gpu_lost_while_running_is_unhealthy_and_the_others_still_report() -> None:
    nvml = fleet()
    probe = NvmlProbe(nvml)
    nvml.gpus[0].lost = True
    reading = probe.read()
    lost = reading.gpus[0]
    assert (lost.healthy, lost.problem, lost.name, lost.util) == (False, "NVML error: GPU is lost", "NVIDIA H200", None)
    assert [r.label for r in reading.gpus if r.healthy] == ["2:0", "2:2", "3"]
    assert reading.mem_util == pytest.approx(sum(r.mem_used_gib for r in reading.gpus)
                                             / sum(r.mem_total_gib for r in reading.gpus))  # fmt: skip


def test_a_critical_xid_marks_its_gpu_unhealthy_for_good_and_application_xids_do_not() -> None:
    nvml = fleet()
    probe = NvmlProbe(nvml)
    nvml.gpus[0].xids.append(13)  # a user's kernel faulted: the GPU is fine
    assert probe.read().gpus[0].healthy
    nvml.gpus[0].xids.extend([79, 48])  # fallen off the bus, then a double-bit error
    assert probe.read().gpus[0].problem == "Xid 79"
    assert probe.read().gpus[0].problem == "Xid 79"  # still: an Xid needs a GPU reset, not a retry
    nvml.gpus[2].xids.append(94)  # contained ECC error on the MIG GPU: both its instances
    assert [r.label for r in probe.read().gpus if not r.healthy] == ["0", "1", "2:0", "2:2"]


def test_gpus_without_xid_events_are_read_all_the_same() -> None:
    nvml = FakeNvml([FakeGpu(events=False), FakeGpu()])
    probe = NvmlProbe(nvml)
    nvml.gpus[0].xids.append(79)  # never delivered: the GPU has no events
    assert probe.read().healthy
    assert [s.freed for s in nvml.event_sets] == [True, False]


def test_a_probe_reads_only_the_devices_it_is_given() -> None:
    """NVML indices ignore CUDA_VISIBLE_DEVICES: a worker pinned to GPU 1 and one MIG instance says so."""
    nvml = fleet()
    devices = discover_gpus(nvml)
    reading = make_probe("nvml", lambda: 0.0, devices=[devices[1], devices[3]], nvml=nvml).read()
    assert [(r.label, r.uuid) for r in reading.gpus] == [("1", "GPU-fake-1"), ("2:2", "MIG-fake-2-2")]


def test_a_reading_travels_as_json() -> None:
    reading = NvmlProbe(fleet()).read()
    [gpu0] = json.loads(json.dumps([reading.gpus[0].__dict__]))
    assert {k: gpu0[k] for k in ("index", "label", "uuid", "temperature_c", "power_w", "power_limit_w")} == {
        "index": 0, "label": "0", "uuid": "GPU-fake-0", "temperature_c": 45, "power_w": 300.0, "power_limit_w": 700.0}


def test_without_a_driver_make_probe_falls_back_to_the_cpu_probe(caplog: pytest.LogCaptureFixture) -> None:
    probe = make_probe("nvml", lambda: 0.0, nvml=FakeNvml([], driver_loaded=False))
    assert isinstance(probe, CpuProbe) and "Driver Not Loaded" in caplog.text
