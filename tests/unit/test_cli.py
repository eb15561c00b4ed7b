"""The command line without a server: usage errors, unreachable Redis, bad job files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.render import percentile, render_latency_table, render_status, table
from dispatcher.redis_server import free_port

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
    assert f"redis://:***@127.0.0.1" in out and "hunter2" not in out
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
    assert "nodes: 1 alive of 2" in text and "normal=5" in text


def test_table_right_aligns_numbers() -> None:
    assert table(["N", "X"], [["a", 1], ["bb", 10]]).splitlines() == ["N    X", "a    1", "bb  10"]


def test_latency_table_has_mean_and_p95_per_node() -> None:
    text = render_latency_table({"n1": [float(i) for i in range(1, 101)]})
    assert "n1" in text and "50.500" in text and "95.000" in text
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
