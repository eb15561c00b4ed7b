"""GPU probes: what a node reports about its accelerators in each heartbeat.

`nvml` reads pynvml; `cpu` stands in on hosts without NVML (CPU load and RAM); `sim` reports
the worker's own busy fraction as GPU utilization, so a fleet of CPU processes with different
--sim-speed values looks and routes like a heterogeneous GPU fleet.

`discover_gpus` lists what a worker can be pinned to: whole GPUs, and MIG instances in place
of a GPU with MIG enabled. Every pynvml call goes through an `nvml` object (the pynvml module,
or a fake with the same names in tests), so no code here needs a GPU to be tested.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

log = logging.getLogger(__name__)

GIB = 1024**3
PROBE_NAMES = ("nvml", "cpu", "sim")
UNCORRECTED_ECC, VOLATILE_ECC = 1, 0  # NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC
TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU: the die sensor
MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE
# Xids a user's own kernel causes; the GPU is still fine. The list NVIDIA's k8s-device-plugin
# skips: 13 graphics engine exception, 31 memory page fault, 43 GPU stopped processing,
# 45 preemptive cleanup, 68 video processor exception.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68})
MAX_EVENTS_PER_READ = 64  # bounds the drain of a GPU's event queue in one read


@dataclass(frozen=True)
class GpuDevice:
    """One schedulable accelerator NVML sees: a whole GPU, or a MIG instance of one."""

    label: str  # "0", "1", ... for whole GPUs; "0:1" for MIG instance 1 of GPU 0
    index: int  # NVML index of the physical GPU
    mig_index: int | None  # MIG device index within that GPU, None for a whole GPU
    uuid: str  # "GPU-..." or "MIG-..."
    name: str

    @property
    def cuda_visible(self) -> str:
        """The CUDA_VISIBLE_DEVICES value that pins a process to this device."""
        return str(self.index) if self.mig_index is None else self.uuid


@dataclass(frozen=True)
class GpuReading:
    """One accelerator at one instant; a figure its GPU does not report is None.

    Flat and JSON-ready: the heartbeat sends `__dict__` of each reading as is.
    """

    index: int  # NVML index of the physical GPU
    name: str
    util: float | None  # 0..1; None on a MIG instance (NVML has no per-instance utilization)
    mem_used_gib: float
    mem_total_gib: float
    healthy: bool = True
    problem: str = ""  # why it is unhealthy, as NVML said
    label: str = ""  # as GpuDevice.label; defaults to str(index)
    uuid: str = ""
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", str(self.index))


@dataclass(frozen=True)
class Reading:
    """A node's accelerators at one instant, with node-level aggregates for routing."""

    probe: str
    gpus: tuple[GpuReading, ...] = ()
    gpu_util: float = 0.0  # mean over the GPUs that report utilization
    mem_util: float = 0.0  # used / total over all GPUs

    @property
    def healthy(self) -> bool:
        return all(g.healthy for g in self.gpus)

    @property
    def problems(self) -> str:
        return "; ".join(f"gpu{g.label}: {g.problem}" for g in self.gpus if not g.healthy)

    @classmethod
    def aggregate(cls, probe: str, gpus: tuple[GpuReading, ...]) -> Reading:
        if not gpus:
            return cls(probe)
        utils = [g.util for g in gpus if g.util is not None]
        total = sum(g.mem_total_gib for g in gpus)
        used = sum(g.mem_used_gib for g in gpus)
        return cls(probe, gpus, sum(utils) / len(utils) if utils else 0.0, used / total if total else 0.0)


class Probe(Protocol):
    name: str

    def read(self) -> Reading: ...


def discover_gpus(nvml: Any = None) -> tuple[GpuDevice, ...]:
    """Every GPU NVML sees, MIG instances in place of a MIG-enabled GPU; () when NVML is
    unavailable (no pynvml, no driver). A GPU NVML cannot even name (lost) is left out."""
    try:
        nvml = _nvml_module(nvml)
        nvml.nvmlInit()
    except Exception as e:  # ImportError, or pynvml's NVMLError_LibraryNotFound / DriverNotLoaded
        log.info("nvml unavailable, no GPUs error=%s", e)
        return ()
    try:
        return _discover(nvml)
    except Exception as e:  # NVMLError from nvmlDeviceGetCount: NVML is there but not working
        log.warning("nvml cannot count GPUs error=%s", e)
        return ()
    finally:
        _call_or_none(nvml, "nvmlShutdown")  # nvmlInit/nvmlShutdown are reference-counted


def _nvml_module(nvml: Any) -> Any:
    if nvml is None:
        import pynvml as nvml  # type: ignore[no-redef]
    return nvml


def _discover(nvml: Any) -> tuple[GpuDevice, ...]:
    devices: list[GpuDevice] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        try:
            devices.extend(_devices_of(nvml, index))
        except Exception as e:  # NVMLError, e.g. NVMLError_GpuIsLost: nothing can run there
            log.warning("gpu left out index=%d error=%s", index, e)
    return tuple(devices)


def _devices_of(nvml: Any, index: int) -> list[GpuDevice]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    mode = _call_or_none(nvml, "nvmlDeviceGetMigMode", handle)  # [current, pending]
    if not mode or mode[0] != MIG_ENABLED:
        return [GpuDevice(str(index), index, None, _uuid(nvml, handle), _text(nvml.nvmlDeviceGetName(handle)))]
    migs = []
    for mig_index in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        mig = _call_or_none(nvml, "nvmlDeviceGetMigDeviceHandleByIndex", handle, mig_index)
        if mig is not None:  # None: NVMLError_NotFound, a slot with no instance in it
            migs.append(GpuDevice(f"{index}:{mig_index}", index, mig_index, _uuid(nvml, mig),
                                  _text(nvml.nvmlDeviceGetName(mig))))  # fmt: skip
    if not migs:
        log.warning("gpu has MIG enabled but no MIG instance, left out index=%d", index)
    return migs


class NvmlProbe:
    """Utilization, memory, temperature, power and health of this node's GPUs (pynvml).

    `devices`: the GPUs to read (NVML indices ignore CUDA_VISIBLE_DEVICES, so a worker pinned
    to some GPUs says which); None: every GPU NVML sees. Raises when NVML cannot start.
    """

    name = "nvml"

    def __init__(self, nvml: Any = None, devices: Sequence[GpuDevice] | None = None) -> None:
        nvml = _nvml_module(nvml)
        nvml.nvmlInit()
        self._nvml = nvml
        self._not_supported = getattr(nvml, "NVMLError_NotSupported", ())
        self._devices = tuple(_discover(nvml) if devices is None else devices)
        self._handles = [self._handles_of(d) for d in self._devices]
        self._event_sets = {i: s for i in sorted({d.index for d in self._devices})
                            if (s := self._watch_xids(i)) is not None}  # fmt: skip
        self._xids: dict[int, int] = {}  # physical index -> first critical Xid seen; a GPU that had one stays unhealthy

    def read(self) -> Reading:
        self._poll_xids()
        return Reading.aggregate(self.name, tuple(self._read_gpu(d, h) for d, h in zip(self._devices, self._handles)))

    def _handles_of(self, d: GpuDevice) -> tuple[Any, Any] | Exception:
        """(the device's handle, its physical GPU's handle), or why NVML gave none."""
        try:
            gpu = self._nvml.nvmlDeviceGetHandleByIndex(d.index)
            if d.mig_index is None:
                return gpu, gpu
            return self._nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, d.mig_index), gpu
        except Exception as e:  # NVMLError: reported as unhealthy at every read
            return e

    def _read_gpu(self, d: GpuDevice, handles: tuple[Any, Any] | Exception) -> GpuReading:
        """One device; an NVML error on the basic reads (GPU lost), uncorrected ECC errors or a
        critical Xid mark it unhealthy. ECC and Xid belong to the physical GPU."""
        nvml = self._nvml
        lost = GpuReading(d.index, d.name, None, 0.0, 0.0, healthy=False, label=d.label, uuid=d.uuid)
        if isinstance(handles, Exception):
            return replace(lost, problem=f"NVML error: {handles}")
        h, gpu = handles
        try:
            name = _text(nvml.nvmlDeviceGetName(h))
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util: float | None = nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            except self._not_supported:  # a MIG instance (NVML has no per-instance counter)
                util = None
        except Exception as e:  # pynvml raises NVMLError subclasses, e.g. NVMLError_GpuIsLost
            return replace(lost, problem=f"NVML error: {e}")
        problems = [f"Xid {self._xids[d.index]}"] if d.index in self._xids else []
        ecc = _call_or_none(nvml, "nvmlDeviceGetTotalEccErrors", gpu, UNCORRECTED_ECC, VOLATILE_ECC)
        if ecc:  # None: ECC off or not supported on this GPU
            problems.append(f"{ecc} uncorrected ECC errors")
        return GpuReading(
            index=d.index,
            name=name,
            util=util,
            mem_used_gib=mem.used / GIB,
            mem_total_gib=mem.total / GIB,
            healthy=not problems,
            problem="; ".join(problems),
            label=d.label,
            uuid=d.uuid,
            temperature_c=_call_or_none(nvml, "nvmlDeviceGetTemperature", h, TEMPERATURE_GPU),
            power_w=_scaled(_call_or_none(nvml, "nvmlDeviceGetPowerUsage", h), 1000),  # NVML: milliwatts
            power_limit_w=_scaled(_call_or_none(nvml, "nvmlDeviceGetEnforcedPowerLimit", h), 1000),
        )

    def _watch_xids(self, index: int) -> Any:
        """An event set with GPU `index`'s critical Xid events registered, or None where the GPU
        or the binding has no events. One set per GPU, so an event needs no handle matching."""
        nvml = self._nvml
        event_set = _call_or_none(nvml, "nvmlEventSetCreate")
        if event_set is None:
            return None
        try:
            gpu = nvml.nvmlDeviceGetHandleByIndex(index)
            nvml.nvmlDeviceRegisterEvents(gpu, nvml.nvmlEventTypeXidCriticalError, event_set)
        except Exception as e:  # NVMLError_NotSupported: no Xid events on this GPU
            log.info("no Xid events for gpu index=%d error=%s", index, e)
            _call_or_none(nvml, "nvmlEventSetFree", event_set)
            return None
        return event_set

    def _poll_xids(self) -> None:
        """Drain each GPU's pending events without waiting (timeout 0)."""
        nvml = self._nvml
        for index, event_set in self._event_sets.items():
            for _ in range(MAX_EVENTS_PER_READ):
                event = _call_or_none(nvml, "nvmlEventSetWait_v2", event_set, 0)
                if event is None:  # NVMLError_Timeout: nothing pending
                    break
                xid = int(event.eventData)
                if event.eventType == nvml.nvmlEventTypeXidCriticalError and xid not in APPLICATION_XIDS:
                    if index not in self._xids:
                        log.warning("gpu critical Xid index=%d xid=%d", index, xid)
                    self._xids.setdefault(index, xid)


def _call_or_none(nvml: Any, function: str, *args: Any) -> Any:
    """nvml.<function>(*args), or None where NVML cannot tell (NVMLError_NotSupported, a call
    this pynvml lacks, or any other NVML error on a figure that is not part of the basic reads)."""
    try:
        return getattr(nvml, function)(*args)
    except Exception:
        return None


def _uuid(nvml: Any, handle: Any) -> str:
    uuid = _call_or_none(nvml, "nvmlDeviceGetUUID", handle)
    return "" if uuid is None else _text(uuid)


def _text(value: str | bytes) -> str:
    """Older pynvml returns bytes, newer str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _scaled(value: float | None, divisor: float) -> float | None:
    return None if value is None else value / divisor


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


def make_probe(name: str, busy_fraction: Callable[[], float], devices: Sequence[GpuDevice] | None = None,
               nvml: Any = None) -> Probe:  # fmt: skip
    """The probe called `name`; an `nvml` probe that cannot start falls back to `cpu`, with a warning.

    devices: the GPUs the `nvml` probe reads (a worker pinned to GPUs 1 and 3 reports just those); None: all.
    """
    if name == "sim":
        return SimProbe(busy_fraction)
    if name == "nvml":
        try:
            return NvmlProbe(nvml, devices)
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
