"""`gpufleet top`'s frame, rendered from plain data into an 80x24 recording console, and
`status --batch` as text."""

from __future__ import annotations

import io
from typing import Any

from click.testing import CliRunner
from rich.console import Console

from gpufleet.cli.live import Sample, bar, jobs_per_s, render_frame, seconds
from gpufleet.cli.main import cli
from gpufleet.cli.status import render_batch
from gpufleet.dispatcher.client.results import BatchProgress, BatchRow
from gpufleet.dispatcher.store.redis_server import free_port

NOW = 1_800_000_000.0
STATES = ("alive", "alive", "dead", "draining", "ejected", "unhealthy")


def node(i: int, state: str = "alive", completed: int = 100) -> dict[str, Any]:
    return {"node": f"gpu-host-{i:03d}", "state": state, "gpu_util": 0.93, "mem_util": 0.41, "queued": 3,
            "running": 1, "completed": completed, "failed": 0, "capacity": 1, "service_time_s": 0.084,
            "heartbeat_age_s": 0.4}  # fmt: skip


def status(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"time": "2026-11-29T03:00:00Z", "namespace": "gpufleet",
            "ingress": {"high": 7, "normal": 120, "low": 0}, "nodes": nodes}  # fmt: skip


BATCHES = [BatchRow("b-20261129-025900-a1b2c3", NOW - 60, BatchProgress(1000, 400, 12, 0)),
           BatchRow("nightly", NOW - 5, BatchProgress(50, 0, 0, 0))]  # fmt: skip


def frame_text(record: dict[str, Any], prev: Sample | None = None, desired: int | None = 5,
               batches: list[BatchRow] = BATCHES) -> list[str]:
    console = Console(width=80, height=24, record=True, file=io.StringIO())
    console.print(render_frame(record, batches, desired, prev, now=NOW, height=24))
    return console.export_text().splitlines()


def test_one_frame_shows_nodes_bars_ingress_and_batch_progress() -> None:
    record = status([node(i, s, completed=100 + 10 * i) for i, s in enumerate(STATES)])
    prev = Sample(NOW - 2, {f"gpu-host-{i:03d}": 100 for i in range(len(STATES))})
    lines = frame_text(record, prev)
    text = "\n".join(lines)
    assert lines[0].startswith("live 5 · desired 5 · alive 2 · draining 1 · ejected 1 · unhealthy 1 · dead 1")
    assert "ingress high 7  normal 120  low 0" in text
    row = next(line for line in lines if line.startswith("gpu-host-001"))
    assert row.split()[1:] == ["alive", "███████▌", "93%", "███▎░░░░", "41%", "3", "1", "5.0", "84ms"]
    assert "unhealthy" in lines[3] and lines[-4].startswith("gpu-host-002 dead")  # trouble first, dead last
    batch = next(line for line in lines if line.startswith("b-20261129-025900-a1b2c3"))
    assert "41%" in batch and "412/1000" in batch and "12" in batch and "1m25s" in batch  # 588 left at 6.87/s
    assert "0/50" in lines[-1] and lines[-1].rstrip().endswith("-")  # nothing ended yet: no ETA
    assert max(len(line) for line in lines) <= 80


def test_two_hundred_nodes_still_fit_in_24_lines() -> None:
    lines = frame_text(status([node(i) for i in range(200)]), batches=BATCHES * 3)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    more_nodes = next(line for line in lines if "more nodes" in line)
    shown = sum(line.startswith("gpu-host-") for line in lines)
    assert more_nodes.strip() == f"... {200 - shown} more nodes" and shown >= 10
    assert "... 3 more batches" in lines[-1] and "LATENCY" in lines[2]


def test_per_gpu_figures_in_the_status_record_do_not_change_the_frame() -> None:
    """`status --json` nodes carry a `gpus` list; top keeps one row per node, so 200 nodes of 8 GPUs still fit."""
    gpus = [{"gpu": str(i), "name": "NVIDIA H200", "util": 0.9, "mem_used_gib": 70.0, "mem_total_gib": 141.0,
             "temperature_c": 70.0, "power_w": 600.0, "power_limit_w": 700.0, "healthy": True, "problem": ""}
            for i in range(8)]  # fmt: skip
    plain = frame_text(status([node(i) for i in range(200)]))
    assert frame_text(status([{**node(i), "gpus": gpus} for i in range(200)])) == plain
    assert len(plain) <= 24


def test_no_autoscaler_shows_a_dash_and_no_nodes_says_how_to_start_one() -> None:
    text = "\n".join(frame_text(status([]), desired=None, batches=[]))
    assert "desired -" in text and "gpufleet worker" in text and "no batches in flight" in text


def test_jobs_per_second_needs_two_samples_and_a_counter_that_did_not_go_back() -> None:
    now = Sample(10.0, {"a": 150, "b": 3})
    assert jobs_per_s(Sample(8.0, {"a": 100, "b": 40}), now, "a") == 25.0
    assert jobs_per_s(Sample(8.0, {"a": 100, "b": 40}), now, "b") is None  # the worker restarted
    assert jobs_per_s(None, now, "a") is None


def test_bars_and_durations_read_plainly() -> None:
    assert bar(0.5).plain == "████░░░░  50%" and bar(1.7).plain == "████████ 100%" and bar(0).plain == "░" * 8 + "   0%"
    assert [seconds(x) for x in (None, 0.084, 2.5, 200, 7300)] == ["-", "84ms", "2.50s", "3m20s", "2h01m"]


def test_batch_status_text_names_every_count_and_the_eta() -> None:
    record = {"batch": "b1", "size": 10, "queued": 6, "running": 1, "retrying": 0, "finished": 3, "failed": 0,
              "canceled": 0, "done": False, "created_at": "2026-11-29T03:00:00Z", "elapsed_s": 30.0, "eta_s": 70.0}
    assert render_batch(record).splitlines() == [
        "batch b1: 3 of 10 ended, created 2026-11-29T03:00:00Z (30s ago)",
        "queued 6  running 1  retrying 0  finished 3  failed 0  canceled 0",
        "ETA 1m10s at the rate since it was created",
    ]
    assert render_batch({**record, "finished": 0, "eta_s": None}).endswith("ETA unknown: no job has ended yet")


def test_watch_takes_no_json_and_top_explains_itself() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["--redis-url", f"redis://127.0.0.1:{free_port()}/0", "status", "--watch", "--json"])
    assert out.exit_code == 2 and "--watch shows the live view" in out.output
    out = runner.invoke(cli, ["top", "--help"])
    assert out.exit_code == 0 and "q or Ctrl-C quits" in out.output
