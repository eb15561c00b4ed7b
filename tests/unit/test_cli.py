"""The command line without a server: usage errors, unreachable Redis, bad job files."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
from click.testing import CliRunner

from gpufleet.cli.main import cli
from gpufleet.cli.render import percentile, render_gpus, render_latency_table, render_status, table
from gpufleet.dispatcher.observe.status import read_status
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import free_port
from gpufleet.worker.gpu import NvmlProbe, Reading
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView
from tests.conftest import write_heartbeat

from .fake_nvml import FakeGpu, FakeNvml, mig_gpu

COMMANDS = ["submit", "results", "status", "dispatcher", "worker", "demo", "local"]


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), input=input)
    return result.exit_code, result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    code, out = run(command, "--help")
    assert code == 0 and "Usage: " in out and len(out.splitlines()) > 4


@pytest.mark.parametrize(
    "args, words",
    [
        (["dispatcher", "--policy", "fastest"], "'fastest' is not one of"),
        (["worker", "--probe", "tpu"], "'tpu' is not one of"),
        (["worker", "--capacity", "0"], "0 is not in the range x>=1"),
        (["submit"], "Missing argument 'FILE'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_bad_flags_are_usage_errors_not_tracebacks(args: list[str], words: str) -> None:
    code, out = run(*args)
    assert code == 2 and words in out and "Traceback" not in out


def test_unreachable_redis_names_the_masked_url_and_the_way_out() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    code, out = run("--redis-url", url, "status")
    assert code == 1
    assert "redis://:***@127.0.0.1" in out and "hunter2" not in out
    assert "gpufleet local" in out and "Traceback" not in out


def test_load_aware_with_a_zero_gamma_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = run("--redis-url", f"redis://127.0.0.1:{free_port()}/0", "dispatcher", "--policy", "load-aware",
                    "--gamma", "0")  # fmt: skip
    assert code == 1 and "gamma must be > 0" in out


def test_a_missing_job_file_exits_2_naming_it(tmp_path: Path) -> None:
    code, out = run("--redis-url", "redis://127.0.0.1:1/0", "submit", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl' does not exist" in out and "Traceback" not in out


def test_render_status_shows_nodes_and_ingress() -> None:
    text = render_status({
        "ingress": {"high": 0, "normal": 5, "low": 1},
        "nodes": [{"node": "a", "state": "alive", "gpu_util": 0.5, "mem_util": 0.25, "queued": 2, "running": 1,
                   "completed": 9, "failed": 0, "heartbeat_age_s": 0.4},
                  {"node": "b", "state": "dead", "gpu_util": 0, "mem_util": 0, "queued": 0, "running": 0,
                   "completed": 1, "failed": 1, "heartbeat_age_s": 12.0}],
    })  # fmt: skip
    assert "a     alive  50%" in text and "dead" in text
    assert "nodes: live 1 · alive 1 · dead 1" in text and "normal=5" in text
    assert "not shown" not in text  # no node was left out of the view


def test_status_shows_each_gpu_the_heartbeat_reported() -> None:
    """A node with a healthy H200, a lost one and a MIG instance: `status --json` lists all three
    under the node, and the text puts one line per GPU under the node's row."""
    nvml = FakeNvml([FakeGpu(util_percent=93, mem_used_gib=70.5, power_mw=312_400), FakeGpu(), mig_gpu(0)])
    probe = NvmlProbe(nvml)
    nvml.gpus[1].lost = True
    r, keys = fakeredis.FakeRedis(), Keys("t")
    write_heartbeat(r, keys, "gpu-host-1", heartbeat_fields(NodeInfo("gpu-host-1"), StatsView(0, 0, 0, 1.0, 0.0),
                                                           probe.read()), ttl_s=5)  # fmt: skip
    record = read_status(r, keys)
    [node] = record["nodes"]
    assert node["gpus"][0] == {"gpu": "0", "name": "NVIDIA H200", "util": 0.93, "mem_used_gib": 70.5,
                               "mem_total_gib": 141.0, "temperature_c": 45.0, "power_w": 312.4,
                               "power_limit_w": 700.0, "healthy": True, "problem": ""}  # fmt: skip
    assert [(g["gpu"], g["healthy"], g["util"]) for g in node["gpus"][1:]] == [("1", False, None), ("2:0", True, None)]

    lines = render_status(record).splitlines()
    assert lines[1].startswith("gpu-host-1  unhealthy")
    assert lines[2].split() == ["gpu0", "NVIDIA", "H200", "93%", "70.5/141.0", "GiB", "45C", "312/700W"]
    assert lines[3].split()[:4] == ["gpu1", "NVIDIA", "H200", "-"] and "UNHEALTHY: NVML error: GPU is lost" in lines[3]
    assert lines[4].split() == ["gpu2:0", "NVIDIA", "A100-SXM4-80GB", "MIG", "1g.10gb", "-", "1.0/9.8", "GiB", "-", "-"]


def test_status_names_the_process_running_each_live_node() -> None:
    """`status --json` gives each node's incarnation (its liveness key's value), null once dead."""
    r, keys = fakeredis.FakeRedis(), Keys("t")
    for node_id in ("a", "b"):
        hb = heartbeat_fields(NodeInfo(node_id), StatsView(0, 0, 0, 1.0, 0.0), Reading("sim"))
        write_heartbeat(r, keys, node_id, hb, ttl_s=5, incarnation=f"inc-{node_id}")
    r.delete(keys.alive("b"))
    assert [(n["node"], n["incarnation"]) for n in read_status(r, keys)["nodes"]] == [("a", "inc-a"), ("b", None)]


def test_gpu_lines_line_up_and_say_what_a_gpu_does_not_report() -> None:
    def gpu(label: str, **figures: object) -> dict[str, object]:
        return {"gpu": label, "name": "NVIDIA T4", "util": 0.5, "mem_used_gib": 1.0, "mem_total_gib": 15.0,
                "temperature_c": 61.0, "power_w": 27.0, "power_limit_w": None, "healthy": True, "problem": "",
                **figures}  # fmt: skip

    lines = render_gpus([gpu("0"), gpu("1", temperature_c=None, power_w=None, util=1.0, healthy=False,
                                         problem="Xid 79")])  # fmt: skip
    assert lines[0].split() == ["gpu0", "NVIDIA", "T4", "50%", "1.0/15.0", "GiB", "61C", "27W"]
    assert lines[1].split()[3:] == ["100%", "1.0/15.0", "GiB", "-", "-", "UNHEALTHY:", "Xid", "79"]
    assert lines[0].index("GiB") == lines[1].index("GiB")
    assert render_gpus([]) == []


def test_table_right_aligns_numbers() -> None:
    assert table(["N", "X"], [["a", 1], ["bb", 10]]).splitlines() == ["N    X", "a    1", "bb  10"]


def test_latency_table_has_mean_and_p95_per_node() -> None:
    text = render_latency_table({"n1": [float(i) for i in range(1, 101)]})
    assert "n1" in text and "50.500" in text and "95.000" in text
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
