"""The command line's contract without a server: usage errors exit 2, `--json` on every command
that prints data, demo/local's own Redis, and the pure pieces behind `top --json` and `status`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import click
import pytest
from click.testing import CliRunner

from gpufleet.cli import local as local_module
from gpufleet.cli.fleet import parse_gpus
from gpufleet.cli.live import Sample, frame_record
from gpufleet.cli.main import cli  # first: it registers the commands (cli/main.py)
from gpufleet.cli.options import redis_url_problem
from gpufleet.cli.render import render_status, state_summary
from gpufleet.dispatcher.client.results import BatchProgress, BatchRow
from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.redis_server import free_port

DATA_COMMANDS = ("submit", "results", "status", "top", "drain", "undrain", "forget", "cancel", "requeue", "simulate",
                 "demo", "local")  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def down_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize("name", DATA_COMMANDS)
def test_every_command_that_prints_data_takes_json(name: str) -> None:
    command = cli.commands[name]
    assert any("--json" in p.opts for p in command.params if isinstance(p, click.Option)), name


@pytest.mark.parametrize(
    "args, words",
    [
        (["--gpus", "abc"], "'abc' is not a GPU index"),
        (["--gpus", "0,x"], "'x' is not a GPU index"),
        (["--gpus", "1.5"], "'1.5' is not a GPU index"),
        (["--gpus", ","], "give 'all' or GPU indices"),
        (["--gpus", "0,1,0"], "GPU 0 named twice"),
        (["--gpus", "0,1,2", "--gpus-per-node", "2"],
         "names 3 GPUs, which do not split into nodes of --gpus-per-node 2"),
        (["--gpus-per-node", "2"], "--gpus-per-node needs --gpus"),
    ],
)
def test_a_mistyped_gpus_layout_is_a_usage_error(args: list[str], words: str) -> None:
    """What the user typed is wrong, whatever the host: exit 2, before any process starts."""
    code, out = run("--redis-url", down_url(), "worker", *args)
    assert code == 2 and words in out and "Traceback" not in out, out


def test_gpus_accepts_all_indices_and_mig_instances_as_typed() -> None:
    ctx = click.Context(click.Command("worker"))
    param = click.Option(["--gpus"])
    assert [parse_gpus(ctx, param, v) for v in ("all", " ALL ", "0,1,3", "0, 2:1", None)] == [
        "all", "all", "0,1,3", "0,2:1", None]  # fmt: skip


@pytest.mark.parametrize(
    "url, words",
    [
        ("garbage", "is not a Redis URL"),
        ("http://127.0.0.1:6379/0", "is not a Redis URL"),
        ("redis://127.0.0.1:notaport/0", "Port could not be cast to integer"),
        ("redis://127.0.0.1:6379/zero", "the database must be a number"),
        ("redis+sentinel://127.0.0.1:26379", "no service name"),
        ("redis://:hunter2@127.0.0.1:6379/x", "redis://:***@127.0.0.1"),
    ],
)
def test_a_redis_url_that_is_not_one_is_a_usage_error(url: str, words: str) -> None:
    code, out = run("--redis-url", url, "status")
    assert code == 2 and words in out and "Traceback" not in out and "hunter2" not in out, out


def test_a_garbage_url_from_the_environment_is_a_usage_error_naming_the_variable() -> None:
    code, out = run("status", env={"GPUFLEET_REDIS_URL": "localhost:6379"})
    assert code == 2 and "GPUFLEET_REDIS_URL" in out and "is not a Redis URL" in out, out


@pytest.mark.parametrize("url", [down_url(), "rediss://127.0.0.1:1/0", "unix:///nonexistent/redis.sock",
                                 "redis+sentinel://127.0.0.1:1/mymaster/0"])  # fmt: skip
def test_a_redis_that_is_down_is_still_exit_1(url: str) -> None:
    """A URL of the right form where nothing answers: something to fix (start Redis), not a usage error."""
    assert redis_url_problem(url) is None
    code, out = run("--redis-url", url, "status")
    assert code == 1 and "cannot reach Redis" in out, out


class Embedded(AbstractContextManager["Embedded"]):
    """Stands in for the embedded redis-server: says it was asked for, and stops the command there."""

    url = "redis://embedded"

    def __enter__(self) -> Embedded:
        raise click.ClickException("embedded redis-server wanted")

    def __exit__(self, *exc: Any) -> None:
        return None


@pytest.mark.parametrize("command", ["demo", "local"])
def test_demo_and_local_ignore_the_exported_fleet_url_and_start_their_own(monkeypatch: pytest.MonkeyPatch,
                                                                          command: str) -> None:  # fmt: skip
    """GPUFLEET_REDIS_URL (exported for a real fleet, as README says) is not theirs to use."""
    monkeypatch.setattr(local_module, "RedisServer", Embedded)
    fleet_url = down_url()
    code, out = run(command, env={"GPUFLEET_REDIS_URL": fleet_url})
    assert code == 1 and "embedded redis-server wanted" in out and fleet_url not in out, out
    code, out = run(command, env={"GPUFLEET_REDIS_URL": "not a url either"})  # not even read
    assert code == 1 and "embedded redis-server wanted" in out, out


@pytest.mark.parametrize("command", ["demo", "local"])
def test_a_redis_url_on_the_command_line_is_used_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch,
                                                                             command: str) -> None:  # fmt: skip
    monkeypatch.setattr(local_module, "RedisServer", Embedded)
    url = down_url()
    for args in ([command, "--redis-url", url], ["--redis-url", url, command]):
        code, out = run(*args, env={"GPUFLEET_REDIS_URL": down_url()})
        assert code == 1 and f"cannot reach Redis at {url}" in out, (args, out)
    code, out = run("--redis-url", url, command, "--redis-url", down_url())
    assert code == 2 and "two different --redis-url values" in out, out
    code, out = run(command, "--redis-url", "garbage")
    assert code == 2 and "is not a Redis URL" in out, out


def test_forget_dead_after_is_a_setting_and_zero_keeps_every_node_in_view() -> None:
    assert Settings().forget_dead_after_s == 3600.0
    assert Settings.from_env({"GPUFLEET_FORGET_DEAD_AFTER_S": "0"}).forget_dead_after_s == 0.0
    with pytest.raises(SettingsError, match="forget_dead_after_s must be >= 0"):
        Settings.from_env({"GPUFLEET_FORGET_DEAD_AFTER_S": "-1"})


def test_status_says_how_many_dead_nodes_it_left_out() -> None:
    record = {"ingress": {"high": 0, "normal": 0, "low": 0}, "hidden_dead": 2, "nodes": [],
              "counts": {"live": 0, "alive": 0, "draining": 0, "ejected": 0, "unhealthy": 0, "dead": 0}}  # fmt: skip
    text = render_status(record)
    assert "nodes: live 0 · alive 0 · dead 0" in text
    assert "2 dead nodes not shown" in text and "gpufleet forget NODE" in text


def test_the_summary_names_alive_and_dead_always_and_other_states_when_a_node_is_in_them() -> None:
    counts = {"live": 3, "alive": 2, "draining": 0, "ejected": 1, "unhealthy": 0, "dead": 4}
    assert state_summary(counts) == [("live", 3), ("alive", 2), ("ejected", 1), ("dead", 4)]


def test_top_json_frame_is_the_status_record_plus_rates_and_batches() -> None:
    """Given two frames 2 s apart, each live node's jobs/s and the fleet's; a dead node has
    none; each batch in flight with its ETA (588 left at 412 ended in 60 s)."""
    now = 1_800_000_000.0
    nodes = [{"node": "a", "state": "alive", "completed": 110}, {"node": "b", "state": "draining", "completed": 51},
             {"node": "c", "state": "dead", "completed": 7}]  # fmt: skip
    status = {"time": "2027-01-15T08:00:00Z", "namespace": "gpufleet", "ingress": {"high": 0, "normal": 3, "low": 0},
              "desired_nodes": 2, "counts": {}, "hidden_dead": 0, "nodes": nodes}  # fmt: skip
    batches = [BatchRow("b1", now - 60, BatchProgress(1000, 400, 12, 0))]
    first = frame_record(status, batches, None, now)
    assert [n["jobs_per_s"] for n in first["nodes"]] == [None, None, None] and first["jobs_per_s"] is None
    record = frame_record(status, batches, Sample(now - 2, {"a": 100, "b": 50, "c": 7}), now)
    assert [n["jobs_per_s"] for n in record["nodes"]] == [5.0, 0.5, None] and record["jobs_per_s"] == 5.5
    assert record["batches"] == [{"batch": "b1", "size": 1000, "finished": 400, "failed": 12, "canceled": 0,
                                  "created_at": "2027-01-15T07:59:00Z", "eta_s": 85.631}]  # fmt: skip
    assert {k: record[k] for k in ("time", "namespace", "ingress", "desired_nodes")} == {
        k: status[k] for k in ("time", "namespace", "ingress", "desired_nodes")}  # fmt: skip
