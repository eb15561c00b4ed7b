"""`worker --gpus`: choosing GPUs, grouping them into nodes, naming and pinning (pure)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gpufleet.cli.main import cli
from gpufleet.dispatcher.errors import SettingsError
from gpufleet.worker.gpu import GpuDevice
from gpufleet.worker.gpu_nodes import cuda_visible_devices, gpu_node_id, gpu_url, group_gpus, select_gpus


def gpu(label: str) -> GpuDevice:
    index, _, mig = label.partition(":")
    return GpuDevice(label, int(index), int(mig) if mig else None, f"MIG-{label}" if mig else f"GPU-{label}", "H100")


HOST = [gpu("0"), gpu("1"), gpu("2:0"), gpu("2:1"), gpu("3")]


def test_all_takes_every_gpu_nvml_sees_mig_instances_included() -> None:
    assert select_gpus("all", HOST) == tuple(HOST)


def test_a_list_takes_those_gpus_in_the_order_given() -> None:
    assert [d.label for d in select_gpus("3, 0,2:1", HOST)] == ["3", "0", "2:1"]


@pytest.mark.parametrize(("spec", "message"), [
    ("0,7", "no GPU '7' on this host (NVML sees: 0, 1, 2:0, 2:1, 3)"),
    ("1,1", "GPU 1 named twice"),
    (" , ", "give 'all' or GPU indices"),
])  # fmt: skip
def test_a_bad_selection_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_gpus(spec, HOST)


def test_without_nvml_indices_are_taken_on_trust_and_all_is_refused() -> None:
    chosen = select_gpus("0,1", ())
    assert [(d.label, d.index, d.cuda_visible) for d in chosen] == [("0", 0, "0"), ("1", 1, "1")]
    with pytest.raises(SettingsError, match="NVML found no GPU"):
        select_gpus("all", ())
    with pytest.raises(SettingsError, match="only indices work"):
        select_gpus("0:1", ())


def test_gpus_group_into_nodes_that_must_divide_evenly() -> None:
    eight = [gpu(str(i)) for i in range(8)]
    assert [[d.label for d in g] for g in group_gpus(eight, 2)] == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    with pytest.raises(SettingsError, match="8 GPUs do not split into nodes of 3"):
        group_gpus(eight, 3)


def test_node_ids_and_pinning_name_the_gpus() -> None:
    assert gpu_node_id("h", [gpu("3")]) == "h-gpu3"
    assert gpu_node_id("h", [gpu("0"), gpu("1")]) == "h-gpu0+1"
    assert gpu_node_id("h", [gpu("2:1")]) == "h-gpu2-mig1"
    assert cuda_visible_devices([gpu("0"), gpu("1")]) == "0,1"
    assert cuda_visible_devices([gpu("2:1")]) == "MIG-2:1"  # a MIG instance is pinned by its UUID


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--gpus", "all"], 1, "NVML found no GPU on this host"),
    (["--gpus", "0,1,2", "--gpus-per-node", "2"], 2, "names 3 GPUs, which do not split into nodes of"),  # as typed
    (["--gpus", "abc"], 2, "'abc' is not a GPU index"),  # typed wrong: usage
    (["--gpus", "0:1"], 1, "NVML is unavailable, so only indices work"),  # well typed, but not this host's
    (["--gpus-per-node", "2"], 2, "--gpus-per-node needs --gpus"),
])  # fmt: skip
def test_the_worker_command_refuses_a_bad_gpu_layout_before_starting_anything(
    args: list[str], code: int, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gpufleet.worker.run.discover_gpus", lambda: ())  # a host without NVML
    result = CliRunner().invoke(cli, ["--redis-url", "redis://127.0.0.1:1/0", "worker", *args])
    assert (result.exit_code, message in result.output) == (code, True), result.output
    assert "Traceback" not in result.output


def test_a_forwarder_url_names_each_gpu_node_s_own_server() -> None:
    """`--openai-url http://127.0.0.1:{8000+gpu}/v1` with --gpus: node gpu3 reaches port 8003."""
    gpus = [GpuDevice(str(i), i, None, f"GPU-{i}", "H200") for i in range(4)]
    assert gpu_url("http://127.0.0.1:{8000+gpu}/v1", gpus[3:]) == "http://127.0.0.1:8003/v1"
    assert gpu_url("http://gpu{gpu}.local/v1", gpus[2:4]) == "http://gpu2.local/v1"  # a group: its first GPU
    assert gpu_url("http://127.0.0.1:8000/v1", gpus[1:]) == "http://127.0.0.1:8000/v1"
