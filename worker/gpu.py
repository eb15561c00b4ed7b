"""GPU probes: what a node reports about its accelerators in each heartbeat.

`nvml` reads pynvml; `cpu` stands in on hosts without NVML (CPU load and RAM); `sim` reports
the worker's own busy fraction as GPU utilization, so a fleet of CPU processes with different
--sim-speed values looks and routes like a heterogeneous GPU fleet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

GIB = 1024**3
PROBE_NAMES = ("nvml", "cpu", "sim")


@dataclass(frozen=True)
class GpuReading:
    """One accelerator at one instant."""

    index: int
    name: str
    util: float  # 0..1
    mem_used_gib: float
    mem_total_gib: float
    healthy: bool = True
    problem: str = ""  # why it is unhealthy, as NVML said


UNCORRECTED_ECC, VOLATILE_ECC = 1, 0  # NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC


@dataclass(frozen=True)
class Reading:
    """A node's accelerators at one instant, with node-level aggregates for routing."""

    probe: str
    gpus: tuple[GpuReading, ...] = ()
    gpu_util: float = 0.0  # mean over GPUs
    mem_util: float = 0.0  # used / total over all GPUs

    @property
    def healthy(self) -> bool:
        return all(g.healthy for g in self.gpus)

    @property
    def problems(self) -> str:
        return "; ".join(f"gpu{g.index}: {g.problem}" for g in self.gpus if not g.healthy)

    @classmethod
    def aggregate(cls, probe: str, gpus: tuple[GpuReading, ...]) -> Reading:
        if not gpus:
            return cls(probe)
        total = sum(g.mem_total_gib for g in gpus)
        used = sum(g.mem_used_gib for g in gpus)
        return cls(probe, gpus, sum(g.util for g in gpus) / len(gpus), used / total if total else 0.0)


class Probe(Protocol):
    name: str

    def read(self) -> Reading: ...


class NvmlProbe:
    """Utilization and memory of every GPU NVML sees (pynvml)."""

    name = "nvml"

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml as nvml  # type: ignore[import-untyped,no-redef]
        self._nvml = nvml
        nvml.nvmlInit()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def read(self) -> Reading:
        return Reading.aggregate(self.name, tuple(self._read_gpu(i, h) for i, h in enumerate(self._handles)))

    def _read_gpu(self, index: int, h: Any) -> GpuReading:
        """One GPU; an NVML error (GPU lost, Xid) or uncorrected ECC errors mark it unhealthy."""
        nvml = self._nvml
        try:
            name = nvml.nvmlDeviceGetName(h)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
        except Exception as e:  # pynvml raises NVMLError subclasses, e.g. NVMLError_GpuIsLost
            return GpuReading(index, "", 0.0, 0.0, 0.0, healthy=False, problem=f"NVML error: {e}")
        problem = ""
        try:
            ecc = nvml.nvmlDeviceGetTotalEccErrors(h, UNCORRECTED_ECC, VOLATILE_ECC)
            problem = f"{ecc} uncorrected ECC errors" if ecc else ""
        except Exception:  # ECC off or not supported on this GPU: nothing to report
            pass
        return GpuReading(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name),
            util=util.gpu / 100.0,
            mem_used_gib=mem.used / GIB,
            mem_total_gib=mem.total / GIB,
            healthy=not problem,
            problem=problem,
        )


class CpuProbe:
    """No GPU: CPU load per core as 'gpu' utilization and RAM use as memory utilization."""

    name = "cpu"

    def read(self) -> Reading:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
        return Reading(self.name, (), min(1.0, load), _ram_used_fraction())


class SimProbe:
    """A simulated GPU whose utilization is the worker's busy fraction."""

    name = "sim"

    def __init__(self, busy_fraction: Callable[[], float]) -> None:
        self._busy_fraction = busy_fraction

    def read(self) -> Reading:
        return Reading(self.name, (), self._busy_fraction(), 0.0)


def make_probe(name: str, busy_fraction: Callable[[], float]) -> Probe:
    """The probe called `name`; an `nvml` probe that cannot start falls back to `cpu`, with a warning."""
    if name == "sim":
        return SimProbe(busy_fraction)
    if name == "nvml":
        try:
            return NvmlProbe()
        except Exception as e:  # pynvml raises NVMLError_* or ImportError/OSError without a driver
            log.warning("nvml unavailable, using the cpu probe instead error=%s", e)
            return CpuProbe()
    if name == "cpu":
        return CpuProbe()
    raise ValueError(f"unknown probe {name!r}; choose one of {', '.join(PROBE_NAMES)}")


def _ram_used_fraction() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return 1.0 - info["MemAvailable"] / info["MemTotal"]
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return 0.0
