"""A fake pynvml: the same function names, constants and NVMLError classes, over GPUs described
in plain data, so the NVML probe is tested without a GPU.

    nvml = FakeNvml([FakeGpu(), FakeGpu(lost=True), FakeGpu(ecc_uncorrected=2), mig_gpu(2)])

Handles are the FakeGpu objects themselves. Units are NVML's: percent, bytes, degrees C,
milliwatts. A figure set to None raises NVMLError_NotSupported, as NVML does on a GPU that
lacks it; a `lost` GPU raises NVMLError_GpuIsLost on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

GIB = 1024**3

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15
_ERROR_STRINGS = {3: "Not Supported", 6: "Not Found", 9: "Driver Not Loaded", 10: "Timeout", 15: "GPU is lost"}


class NVMLError(Exception):
    """pynvml's base error; its subclasses take no argument, as pynvml's generated ones do."""

    value = 999

    def __str__(self) -> str:
        return _ERROR_STRINGS.get(self.value, f"NVML error {self.value}")


class NVMLError_NotSupported(NVMLError):
    value = NVML_ERROR_NOT_SUPPORTED


class NVMLError_NotFound(NVMLError):
    value = NVML_ERROR_NOT_FOUND


class NVMLError_DriverNotLoaded(NVMLError):
    value = NVML_ERROR_DRIVER_NOT_LOADED


class NVMLError_Timeout(NVMLError):
    value = NVML_ERROR_TIMEOUT


class NVMLError_GpuIsLost(NVMLError):
    value = NVML_ERROR_GPU_IS_LOST


@dataclass
class FakeGpu:
    """One GPU (or MIG instance) as the fake reports it; mutable, so a test can change it mid-run."""

    name: str = "NVIDIA H200"
    uuid: str = ""  # FakeNvml fills in GPU-fake-<i> / MIG-fake-<i>-<j>
    util_percent: int | None = 50
    mem_used_gib: float = 40.0
    mem_total_gib: float = 141.0
    temperature_c: int | None = 45
    power_mw: int | None = 300_000
    power_limit_mw: int | None = 700_000
    ecc_uncorrected: int | None = 0  # None: ECC off
    lost: bool = False
    events: bool = True  # supports Xid event registration
    xids: list[int] = field(default_factory=list)  # pending Xid events, oldest first
    migs: dict[int, FakeGpu] = field(default_factory=dict)  # MIG slot -> instance; any: MIG enabled
    max_migs: int = 7


def mig_gpu(*slots: int) -> FakeGpu:
    """An A100 with MIG enabled and a 1g.10gb instance in each of `slots`."""
    instance = dict(name="NVIDIA A100-SXM4-80GB MIG 1g.10gb", util_percent=None, mem_total_gib=9.75,
                    mem_used_gib=1.0, temperature_c=None, power_mw=None, power_limit_mw=None, ecc_uncorrected=None)
    return FakeGpu(name="NVIDIA A100-SXM4-80GB", mem_total_gib=80.0, migs={s: FakeGpu(**instance) for s in slots})


@dataclass
class FakeEventSet:
    devices: list[FakeGpu] = field(default_factory=list)
    freed: bool = False


class FakeNvml:
    """Stands in for the pynvml module: pass it wherever the code takes `nvml`."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_Timeout = NVMLError_Timeout
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVML_TEMPERATURE_GPU = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_DEVICE_MIG_DISABLE, NVML_DEVICE_MIG_ENABLE = 0, 1
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(self, gpus: list[FakeGpu], *, driver_loaded: bool = True) -> None:
        self.gpus = gpus
        self.driver_loaded = driver_loaded
        self.inits = 0  # nvmlInit calls not yet matched by nvmlShutdown
        self.event_sets: list[FakeEventSet] = []
        for i, gpu in enumerate(gpus):
            gpu.uuid = gpu.uuid or f"GPU-fake-{i}"
            for slot, mig in gpu.migs.items():
                mig.uuid = mig.uuid or f"MIG-fake-{i}-{slot}"

    def nvmlInit(self) -> None:
        if not self.driver_loaded:
            raise NVMLError_DriverNotLoaded()
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.inits -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return _alive(h).name

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return _alive(h).uuid

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return SimpleNamespace(gpu=_supported(_alive(h).util_percent), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        used, total = int(_alive(h).mem_used_gib * GIB), int(h.mem_total_gib * GIB)
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return _supported(_alive(h).temperature_c)

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return _supported(_alive(h).power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return _supported(_alive(h).power_limit_mw)

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter_type: int) -> int:
        assert (error_type, counter_type) == (self.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, self.NVML_VOLATILE_ECC)
        return _supported(_alive(h).ecc_uncorrected)

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        mode = self.NVML_DEVICE_MIG_ENABLE if _alive(h).migs else self.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeGpu) -> int:
        return _alive(h).max_migs if h.migs else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeGpu, index: int) -> FakeGpu:
        if index not in _alive(h).migs:
            raise NVMLError_NotFound()
        return h.migs[index]

    def nvmlEventSetCreate(self) -> FakeEventSet:
        self.event_sets.append(FakeEventSet())
        return self.event_sets[-1]

    def nvmlDeviceRegisterEvents(self, h: FakeGpu, event_types: int, event_set: FakeEventSet) -> None:
        if not _alive(h).events:
            raise NVMLError_NotSupported()
        assert event_types == self.nvmlEventTypeXidCriticalError
        event_set.devices.append(h)

    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> Any:
        assert timeout_ms == 0, "the probe must never block on events"
        for h in event_set.devices:
            if h.xids:
                return SimpleNamespace(device=h, eventType=self.nvmlEventTypeXidCriticalError,
                                       eventData=h.xids.pop(0), gpuInstanceId=0xFFFFFFFF,
                                       computeInstanceId=0xFFFFFFFF)  # fmt: skip
        raise NVMLError_Timeout()

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        event_set.freed = True


def _alive(h: FakeGpu) -> FakeGpu:
    if h.lost:
        raise NVMLError_GpuIsLost()
    return h


def _supported(value: int | None) -> int:
    if value is None:
        raise NVMLError_NotSupported()
    return value
