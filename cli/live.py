"""The frame of `gpufleet top`: a pure function from plain data to a rich renderable.

Input is what the CLI read from Redis: the `status --json` record, the batches in flight, the
published desired node count, and the previous `Sample` (for jobs/s). No Redis here, so a
frame renders the same in a terminal and in a test. The frame never grows past the height it
is given: nodes beyond what fits collapse into one "... N more nodes" line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gpufleet.dispatcher.client.results import BatchRow, batch_eta_s

from .render import counts_of, state_summary, tenant_summary

MAX_BATCH_ROWS = 3  # batches shown; the rest is one "... N more batches" line
STATE_ORDER = {"unhealthy": 0, "ejected": 1, "draining": 2, "alive": 3, "dead": 4}  # trouble first, dead last
STATE_STYLE = {"alive": "green", "draining": "yellow", "ejected": "magenta", "unhealthy": "bold red", "dead": "red"}
EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass(frozen=True)
class Sample:
    """Each node's `completed` count at one instant: two samples give jobs/s."""

    at: float  # unix time
    completed: Mapping[str, int]

    @classmethod
    def of(cls, status: Mapping[str, Any], at: float) -> Sample:
        return cls(at, {n["node"]: n["completed"] for n in status["nodes"]})


def jobs_per_s(prev: Sample | None, now: Sample, node_id: str) -> float | None:
    """Completions per second since `prev`; None with no earlier figure or a counter that
    went back (the worker restarted)."""
    if prev is None or now.at <= prev.at or node_id not in prev.completed or node_id not in now.completed:
        return None
    delta = now.completed[node_id] - prev.completed[node_id]
    return delta / (now.at - prev.at) if delta >= 0 else None


def bar(ratio: float, width: int = 8) -> Text:
    """A horizontal bar in eighths of a cell, then the percentage; green, yellow past 70%, red past 90%."""
    ratio = min(1.0, max(0.0, ratio))
    eighths = round(ratio * width * 8)
    body = "█" * (eighths // 8) + (EIGHTHS[eighths % 8] if eighths % 8 else "")
    style = "red" if ratio > 0.9 else "yellow" if ratio > 0.7 else "green"
    text = Text(body, style=style)
    text.append("░" * (width - len(body)), style="grey37")
    text.append(f"{100 * ratio:4.0f}%")
    return text


def seconds(s: float | None) -> str:
    """0.084 -> 84ms, 2.5 -> 2.50s, 200 -> 3m20s; None -> '-'."""
    if s is None:
        return "-"
    if s < 1:
        return f"{1000 * s:.0f}ms"
    if s < 60:
        return f"{s:.2f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def eta(s: float | None) -> str:
    """Whole seconds under a minute (an ETA is no more precise than that), else as `seconds`."""
    return f"{s:.0f}s" if s is not None and s < 60 else seconds(s)


def rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _line(*parts: tuple[str, str]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for chunk, style in parts:
        text.append(chunk, style=style)
    return text


def _header(status: Mapping[str, Any], desired: int | None, total_rate: float | None) -> list[Text]:
    """Live nodes against desired, then by state, in `status`'s words (no "nodes" label: with
    every state shown the line still fits 80 columns); then the ingress and the backlog."""
    nodes = status["nodes"]
    (_, live), *states = state_summary(counts_of(status))  # the words and order `status` uses
    hidden = status.get("hidden_dead") or 0
    clock = status.get("time", "")[11:20]
    first = _line(("live ", "bold"), (str(live), "bold green"), (" · desired ", ""),
                  ("-" if desired is None else str(desired), "bold cyan"),
                  ("".join(f" · {s} {n}" for s, n in states) + (f" (+{hidden} hidden)" if hidden else ""), ""),
                  (f"   {status.get('namespace', '')} {clock}", "dim"))  # fmt: skip
    ingress = status["ingress"]
    waiting = sum(ingress.values()) + sum(n["queued"] for n in nodes if n["state"] != "dead")
    second = _line(("ingress ", "bold"), ("  ".join(f"{p} {d}" for p, d in ingress.items()), ""),
                   (f"   backlog {waiting} · running {sum(n['running'] for n in nodes)}"
                    f" · {rate(total_rate)} jobs/s", ""))  # fmt: skip
    if len(second) <= 80 - 10:
        second.append("   q quits", style="dim")
    busy = [t for t in status.get("tenants", ()) if t["waiting"] or t["in_flight"]]
    if not busy:
        return [first, second]
    third = _line(("tenants ", "bold"), (" · ".join(tenant_summary(t) for t in busy), ""))
    third.truncate(80, overflow="ellipsis")
    return [first, second, third]


def _node_table(rows: Sequence[Mapping[str, Any]], prev: Sample | None, now: Sample) -> Table:
    t = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold reverse")
    t.add_column("NODE", no_wrap=True, overflow="ellipsis", max_width=16)
    t.add_column("STATE", no_wrap=True, width=9)
    t.add_column("GPU", no_wrap=True, width=13)
    t.add_column("MEM", no_wrap=True, width=13)
    t.add_column("QUEUE", justify="right", no_wrap=True, width=5)
    t.add_column("RUN", justify="right", no_wrap=True, width=3)
    t.add_column("JOBS/S", justify="right", no_wrap=True, width=6)
    t.add_column("LATENCY", justify="right", no_wrap=True, width=7)
    for n in rows:
        dead = n["state"] == "dead"
        t.add_row(n["node"], Text(n["state"], style=STATE_STYLE.get(n["state"], "")),
                  Text("-") if dead else bar(n["gpu_util"]), Text("-") if dead else bar(n["mem_util"]),
                  str(n["queued"]), str(n["running"]), "-" if dead else rate(jobs_per_s(prev, now, n["node"])),
                  seconds(n["service_time_s"]), style="dim" if dead else None)  # fmt: skip
    return t


def _batch_table(batches: Sequence[BatchRow], now: float, shown: int) -> Table:
    t = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold reverse")
    t.add_column("BATCH IN FLIGHT", no_wrap=True, overflow="ellipsis", max_width=26)
    t.add_column("PROGRESS", no_wrap=True, width=21)
    t.add_column("DONE/SIZE", justify="right", no_wrap=True, width=13)
    t.add_column("FAILED", justify="right", no_wrap=True, width=6)
    t.add_column("ETA", justify="right", no_wrap=True, width=7)
    for b in batches[:shown]:
        p = b.progress
        ended = p.finished + p.failed + p.canceled
        t.add_row(b.batch_id, bar(ended / p.size if p.size else 1.0, width=16), f"{ended}/{p.size}",
                  Text(str(p.failed), style="red" if p.failed else ""),
                  eta(batch_eta_s(p, b.created_at, now)))  # fmt: skip
    return t


def render_frame(
    status: Mapping[str, Any],
    batches: Sequence[BatchRow],
    desired: int | None,
    prev: Sample | None,
    now: float | None = None,
    height: int = 24,
) -> RenderableType:
    """One frame, at most `height` lines: a two-line header (nodes live vs desired, ingress,
    backlog, jobs/s), one row per node (trouble first, dead last), the batches in flight."""
    now = time.time() if now is None else now
    sample = Sample.of(status, now)
    rates = [jobs_per_s(prev, sample, n["node"]) for n in status["nodes"] if n["state"] != "dead"]
    known = [x for x in rates if x is not None]
    header = _header(status, desired, sum(known) if known else None)

    batch_shown = min(len(batches), MAX_BATCH_ROWS, max(0, height - 6))
    batch_lines = (1 + batch_shown + (len(batches) > batch_shown)) if batches else 1
    room = max(1, height - len(header) - 1 - batch_lines)  # node rows below the node table's header
    nodes = sorted(status["nodes"], key=lambda n: (STATE_ORDER.get(n["state"], 0), n["node"]))
    if not nodes:
        node_part: RenderableType = Text("no nodes yet: start one with `gpufleet worker`", style="dim")
    else:
        fits = nodes if len(nodes) <= room else nodes[: room - 1]
        node_part = Group(_node_table(fits, prev, sample), *_more(len(nodes) - len(fits), "nodes"))
    if batches:
        batch_part: RenderableType = Group(_batch_table(batches, now, batch_shown),
                                           *_more(len(batches) - batch_shown, "batches"))  # fmt: skip
    else:
        batch_part = Text("no batches in flight", style="dim")
    return Group(*header, node_part, batch_part)


def _more(n: int, what: str) -> list[Text]:
    return [Text(f"... {n} more {what}", style="dim")] if n > 0 else []


def frame_record(status: Mapping[str, Any], batches: Sequence[BatchRow], prev: Sample | None,
                 now: float | None = None) -> dict[str, Any]:  # fmt: skip
    """`top --json`: what one frame shows, as data. The `status --json` record (its
    `desired_nodes` is the frame's desired count), each node with its `jobs_per_s` (null with no
    earlier frame), the fleet's `jobs_per_s`, and the batches in flight with their ETA."""
    now = time.time() if now is None else now
    sample = Sample.of(status, now)
    nodes = [{**n, "jobs_per_s": None if n["state"] == "dead" else _rounded(jobs_per_s(prev, sample, n["node"]))}
             for n in status["nodes"]]  # fmt: skip
    known = [n["jobs_per_s"] for n in nodes if n["jobs_per_s"] is not None]
    in_flight = [{"batch": b.batch_id, "size": b.progress.size, "finished": b.progress.finished,
                  "failed": b.progress.failed, "canceled": b.progress.canceled,
                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(b.created_at)),
                  "eta_s": _rounded(batch_eta_s(b.progress, b.created_at, now))}
                 for b in batches]  # fmt: skip
    return {**status, "nodes": nodes, "jobs_per_s": _rounded(sum(known)) if known else None, "batches": in_flight}


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def render_error(message: str, interval_s: float) -> RenderableType:
    return Group(_line(("gpufleet top", "bold"), ("   q quits", "dim")),
                 Text(f"{message}\nretrying every {interval_s:g}s", style="red"))  # fmt: skip
