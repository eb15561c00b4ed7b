"""Human output: pure functions from plain data to text, testable without Redis."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from gpufleet.dispatcher.client.results import WriteReport
from gpufleet.dispatcher.client.submit import ResumeReport
from gpufleet.dispatcher.observe.status import state_counts
from gpufleet.dispatcher.store.events import Event


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table; numbers are right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(headers))]
    return "\n".join(_aligned(cells, numeric))


def _aligned(cells: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """Rows of cells padded into columns two spaces apart; `right`: which columns align right."""
    widths = [max(len(r[i]) for r in cells) for i in range(len(right))]
    return ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip()
            for row in cells]  # fmt: skip


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def percent(ratio: float) -> str:
    return f"{100 * ratio:.0f}%"


def render_status(status: dict[str, Any]) -> str:
    """`gpufleet status` as text: one row per node, each followed by a line per GPU, then the
    jobs waiting per priority, then each tenant's jobs waiting and in flight."""
    nodes = status["nodes"]
    if nodes:
        rows = [
            [n["node"], n["state"], percent(n["gpu_util"]), percent(n["mem_util"]), n["queued"], n["running"],
             n["completed"], n["failed"], f"{n['heartbeat_age_s']:.1f}s"]
            for n in nodes
        ]  # fmt: skip
        head, *node_lines = table(["NODE", "STATE", "GPU", "MEM", "QUEUED", "RUNNING", "DONE", "FAILED",
                                   "HEARTBEAT"], rows).splitlines()  # fmt: skip
        lines = [head]
        for n, line in zip(nodes, node_lines):
            lines += [line, *("  " + g for g in render_gpus(n.get("gpus", [])))]  # under the node's row
        body = "\n".join(lines)
    else:
        body = "no nodes yet: start one with `gpufleet worker`"
    summary = " · ".join(f"{word} {n}" for word, n in state_summary(counts_of(status)))
    ingress = "  ".join(f"{p}={d}" for p, d in status["ingress"].items())
    text = f"{body}\n\nnodes: {summary}    ingress: {ingress}"
    if tenants := status.get("tenants"):
        text += "\ntenants: " + " · ".join(tenant_summary(t) for t in tenants)
    if hidden := status.get("hidden_dead"):
        text += (f"\n{hidden} dead node{'s' if hidden != 1 else ''} not shown (no heartbeat for longer than "
                 "GPUFLEET_FORGET_DEAD_AFTER_S); `gpufleet forget NODE` removes one from Redis")
    return text


def tenant_summary(t: Mapping[str, Any]) -> str:
    """One tenant of the `status --json` record in a few words."""
    cap = "" if t["max_running"] is None else f"/{t['max_running']}"
    weight = "" if t["weight"] == 1 else f" (weight {t['weight']:g})"
    return f"{t['tenant']} waiting {t['waiting']} in flight {t['in_flight']}{cap}{weight}"


def counts_of(status: Mapping[str, Any]) -> Mapping[str, int]:
    """The record's node counts by state (`counts`), else counted from its nodes."""
    counts: Mapping[str, int] | None = status.get("counts")
    return counts if counts is not None else state_counts(n["state"] for n in status["nodes"])


def state_summary(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """What `status` and `top` say about the fleet, in the same words and order: live, then
    each state (alive and dead always, the others only when a node is in them)."""
    shown = [("live", counts["live"]), ("alive", counts["alive"])]
    shown += [(s, counts[s]) for s in ("draining", "ejected", "unhealthy") if counts[s]]
    return [*shown, ("dead", counts["dead"])]


def render_gpus(gpus: Sequence[dict[str, Any]]) -> list[str]:
    """One line per GPU of a node (a `status --json` node's `gpus`), in aligned columns: label,
    name, utilization, memory used/total, temperature, power/limit, and what is wrong with it."""
    rows = [[f"gpu{g['gpu']}", g["name"] or "-", "-" if g["util"] is None else percent(g["util"]),
             f"{g['mem_used_gib']:.1f}/{g['mem_total_gib']:.1f} GiB" if g["mem_total_gib"] else "-",
             "-" if g["temperature_c"] is None else f"{g['temperature_c']:.0f}C",
             _power(g["power_w"], g["power_limit_w"]),
             "" if g["healthy"] is not False else f"UNHEALTHY: {g['problem']}"]
            for g in gpus]  # fmt: skip
    return _aligned(rows, [False, False, True, True, True, True, False]) if rows else []


def _power(draw_w: float | None, limit_w: float | None) -> str:
    """312/700W; 312W with no known limit; - with no power sensor."""
    if draw_w is None:
        return "-"
    return f"{draw_w:.0f}/{limit_w:.0f}W" if limit_w else f"{draw_w:.0f}W"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def render_latency_table(latencies_by_node: dict[str, list[float]]) -> str:
    """Per node: jobs run, mean and p95 latency (seconds from submit to end)."""
    rows = []
    for node, values in sorted(latencies_by_node.items()):
        values = sorted(values)
        rows.append([node, len(values), sum(values) / len(values), percentile(values, 95)])
    return table(["NODE", "JOBS", "MEAN_S", "P95_S"], rows)


def render_resume(batch_id: str, report: ResumeReport) -> str:
    """`submit --resume`'s summary line (stderr): what it enqueued, and what it left alone."""
    text = (f"resumed {batch_id}: enqueued {report.enqueued} missing, put back {report.requeued_failed} failed and "
            f"{report.requeued_canceled} canceled; left alone {report.finished} finished, {report.in_flight} in "
            f"flight, {report.gone} whose data had left Redis")  # fmt: skip
    if report.skipped:
        text += f", {report.skipped} failed or canceled that moved meanwhile"
    return text


def render_unwritten(report: WriteReport, size: int, *, follow: bool) -> str | None:
    """Why `results` wrote fewer lines than the batch has jobs (the exit code is then 1), or None
    when nothing is missing. Only an OpenAI output, or a --follow, leaves jobs out."""
    if follow:
        if report.written >= size:
            return None
        parts = []
        if report.gone:
            parts.append(f"{report.gone} had lost their data (expired, or dropped by an earlier --drop-after-write)")
        if (missing := size - report.written - report.gone) > 0:
            parts.append(f"{missing} ended without an entry in the batch's ended list (a worker older than "
                         "`results --follow`?); `results` without --follow reads them")  # fmt: skip
        return f"{size - report.written} of {size} jobs have no line: " + "; ".join(parts)
    if not report.not_ended and not report.gone:
        return None
    parts = []
    if report.not_ended:
        parts.append(f"{report.not_ended} not ended yet (run again, or use --wait or --follow)")
    if report.gone:
        parts.append(f"{report.gone} whose data has left Redis (expired, or dropped by --drop-after-write)")
    return f"{report.not_ended + report.gone} of {size} jobs have no line: " + "; ".join(parts)


def render_event(event: Event) -> str:
    """One event as a line: `2026-12-01T03:00:00.123Z job_failed batch=b-1 job=5f0c node=n1
    attempt=3 error="ValueError: bad input"` (a value with spaces or quotes is quoted)."""
    record = event.record()
    pairs = [f"{name}={_quoted(value)}" for name, value in record.items() if name not in ("id", "time", "event")]
    return " ".join([record["time"], event.kind, *pairs])


def _quoted(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in "\"'=" for c in text) else text
