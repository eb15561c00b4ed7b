"""`worker --gpus`: which of a host's GPUs to serve and how they group into nodes (pure).

One node per GPU by default, named `<host>-gpu<N>` (`<host>-gpu<N>-mig<M>` for a MIG
instance); `--gpus-per-node K` puts K GPUs in one node (`<host>-gpu0+1`) for a model that
spans several. Each node runs in its own process, pinned to its GPUs with CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpufleet.dispatcher.errors import SettingsError

from .gpu import GpuDevice

ALL = "all"


def select_gpus(spec: str, found: Sequence[GpuDevice]) -> tuple[GpuDevice, ...]:
    """The GPUs `spec` names: "all", or labels such as "0,1,3" (MIG instances: "0:1").

    `found` is what NVML sees. Without NVML (none found), whole-GPU indices are taken on
    trust: the process is still pinned by CUDA_VISIBLE_DEVICES, the probe just reads nothing.
    """
    spec = spec.strip()
    if spec == ALL:
        if not found:
            raise SettingsError("--gpus all: NVML found no GPU on this host; name them instead, e.g. --gpus 0,1")
        return tuple(found)
    labels = [s.strip() for s in spec.split(",") if s.strip()]
    if not labels:
        raise SettingsError(f"--gpus {spec!r}: give 'all' or GPU indices such as 0,1,3")
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise SettingsError(f"--gpus {spec!r}: GPU {', '.join(duplicates)} named twice")
    by_label = {d.label: d for d in found}
    chosen = []
    for label in labels:
        if label in by_label:
            chosen.append(by_label[label])
        elif not found and label.isdigit():
            chosen.append(GpuDevice(label=label, index=int(label), mig_index=None, uuid="", name=""))
        elif found:
            raise SettingsError(f"--gpus: no GPU {label!r} on this host (NVML sees: {', '.join(by_label)})")
        else:
            raise SettingsError(f"--gpus: {label!r} is not a GPU index (NVML is unavailable, so only indices work)")
    return tuple(chosen)


def group_gpus(devices: Sequence[GpuDevice], per_node: int) -> list[tuple[GpuDevice, ...]]:
    """Consecutive groups of `per_node` GPUs, one per node; they must divide evenly."""
    if per_node < 1:
        raise SettingsError(f"--gpus-per-node must be at least 1 (got {per_node})")
    if len(devices) % per_node:
        raise SettingsError(f"{len(devices)} GPUs do not split into nodes of {per_node} (--gpus-per-node)")
    return [tuple(devices[i : i + per_node]) for i in range(0, len(devices), per_node)]


def gpu_node_id(host: str, group: Sequence[GpuDevice]) -> str:
    """`<host>-gpu0`, `<host>-gpu0+1` for a group, `<host>-gpu0-mig1` for a MIG instance."""
    return f"{host}-gpu" + "+".join(d.label.replace(":", "-mig") for d in group)


def cuda_visible_devices(group: Sequence[GpuDevice]) -> str:
    return ",".join(d.cuda_visible for d in group)


_PORT_OF_GPU = re.compile(r"\{(\d+)\+gpu\}")


def gpu_url(template: str, group: Sequence[GpuDevice]) -> str:
    """A node's server URL from a --openai-url template: `{gpu}` is its first GPU's index and
    `{8000+gpu}` that index plus 8000, so 8 nodes reach 8 servers on ports 8000-8007."""
    first = group[0].index
    return _PORT_OF_GPU.sub(lambda m: str(int(m.group(1)) + first), template).replace("{gpu}", str(first))
