"""The fault suite's checks (bench/chaos.py), run once a scenario's batch has ended and the
fleet has had --settle seconds to clean up; `examine` fills the scenario's row:

- final state: every job's rq status (`dispatcher.results.iter_results`, what `gpufleet
  results` prints) is finished, failed or canceled, and its id sits in exactly one place,
  the registry of that status. Places are found by scanning every LIST, ZSET and SET in
  Redis (ingress and node queues, rq's intermediate lists, started (`rq:wip:`), finished,
  failed, canceled and scheduled registries, the retry schedules, and any other key that
  holds a job id, such as a worker's held list); only rq's finished/failed/canceled
  registries are final. rq's per-job and per-worker data (`rq:job:`, `rq:results:`,
  `rq:execution(s):`, `rq:worker:`) and the batch's own id lists are not places.
- lost: jobs whose status is not final. stuck: jobs (or garbage) still in a place that is
  not final. in two places: jobs found in more than one place (or twice in one).
- counters: the batch's finished/failed/canceled counters equal the statuses' counts.
- executions: lines per job in the log file (1, 2, 3+); a finished job ran at least once.
- newest attempt: a finished job's result says which attempt ran it; that attempt is the
  job's gf_attempts, the highest attempt in its log lines, and a log line with the result's
  node and pid. Two log lines with one attempt number (an execution Redis did not count)
  fail too. A failed job must say "node <id> lost" (the task itself never raises).
- garbage: ends failed with a reason of its own (not "node <id> lost": that means the
  worker holding it died or gave up), canceled, or dropped (in no place): never stuck,
  never finished, never run (a log line for it means a pickle was executed).
- processes: every process the scenario last started is running (dispatchers, workers,
  a --capacity worker's slot processes), each worker's node is alive (its liveness key),
  Redis answers, a dispatcher holds the lease.
- tracebacks: lines with "Traceback" in the fleet processes' stderr (files in the
  scenario's temp dir), counted and shown by kind; with --strict they fail the scenario.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from contextlib import suppress
from pathlib import Path
from typing import Any

from chaos_faults import KEYS, Trial, retry, slot_pids
from redis import Redis
from rq.results import Result

from gpufleet.dispatcher.client.results import iter_results, last_line, read_progress
from gpufleet.dispatcher.store.connection import REDIS_DOWN
from gpufleet.dispatcher.store.job import SERIALIZER
from gpufleet.dispatcher.store.keys import RQ_QUEUES, JobField, Keys

FINAL = ("finished", "failed", "canceled")
FINAL_PREFIX = {b"rq:finished:": "finished", b"rq:failed:": "failed", b"rq:canceled:": "canceled"}
NOT_PLACES = (b"rq:job:", b"rq:results:", b"rq:execution", b"rq:worker")  # rq's per-job and per-worker data
NODE_LOST = re.compile(r"^node \S+ lost$")


def scan_places(r: Redis, wanted: set[str], batch: str) -> dict[str, list[str]]:
    """Every LIST, ZSET and SET entry naming a wanted job id (as itself, or `id:execution`),
    by job id: the key names, one per entry. The batch's own lists of ids (in submission order,
    and in the order they ended) are no place."""
    wanted_b = {w.encode() for w in wanted}
    skip = {KEYS.batch_jobs(batch).encode(), KEYS.batch_ended(batch).encode(), RQ_QUEUES.encode()}
    keys = [k for k in r.scan_iter(count=5000) if not k.startswith(NOT_PLACES) and k not in skip]
    with r.pipeline(transaction=False) as p:
        for k in keys:
            p.type(k)
        types = p.execute()
    readers = {b"list": lambda p, k: p.lrange(k, 0, -1), b"zset": lambda p, k: p.zrange(k, 0, -1),
               b"set": lambda p, k: p.smembers(k)}  # fmt: skip
    containers = [(k, ty) for k, ty in zip(keys, types) if ty in readers]
    with r.pipeline(transaction=False) as p:
        for k, ty in containers:
            readers[ty](p, k)
        members = p.execute()
    places: dict[str, list[str]] = defaultdict(list)
    for (key, _), found in zip(containers, members):
        for m in found:
            job_id = m if m in wanted_b else m.split(b":", 1)[0]
            if job_id in wanted_b:
                places[job_id.decode()].append(key.decode())
    return places


def final_kind(key: str) -> str | None:
    return next((kind for prefix, kind in FINAL_PREFIX.items() if key.encode().startswith(prefix)), None)


def read_executions(path: Path) -> dict[int, list[tuple[int, str, int]]]:
    """Log lines by job index: (attempt, node, pid) in the order they were written."""
    runs: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    if path.exists():
        for line in path.read_text().splitlines():
            i, token, pid = line.split()
            attempt, node = token.split(":", 1)
            runs[int(i)].append((int(attempt), node, int(pid)))
    return runs


def garbage_outcome(r: Redis, job_id: str) -> tuple[str, str]:
    """(status, reason) of a garbage job: rq's status and gpufleet's or rq's last error line."""
    status, reason = r.hmget(Keys.rq_job(job_id), "status", JobField.ERROR)
    if not reason and (latest := r.xrevrange(Keys.rq_results(job_id), "+", "-", count=1)):
        with suppress(Exception):
            result = Result.restore(job_id, latest[0][0].decode(), latest[0][1], connection=r, serializer=SERIALIZER)
            reason = (result.exc_string or "").encode()
    return (status or b"").decode(), last_line((reason or b"").decode(errors="replace"))


def tracebacks(log_dir: Path) -> tuple[int, Counter[str]]:
    """Lines with "Traceback" in the processes' stderr files under `log_dir`, and the exception
    line ending each (tests/integration/support.tracebacks counts them per file, without kinds)."""
    count, kinds = 0, Counter[str]()
    for path in sorted(log_dir.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for n, line in enumerate(lines):
            if "Traceback" not in line:
                continue
            count += 1
            rest = lines[n + 1 :]
            end = next((x for x in rest if x and not x[0].isspace() and not x.startswith(("Traceback", "During"))), "?")
            kinds[end.strip()[:160]] += 1
    return count, kinds


def settle(t: Trial, wanted: set[str]) -> dict[str, list[str]]:
    """Give the fleet up to --settle seconds to empty every non-final place and restart slots."""
    deadline = time.monotonic() + t.opts.settle_s
    while True:
        places = retry(lambda: scan_places(t.r, wanted, t.batch), 10)
        clean = all(final_kind(k) for keys in places.values() for k in keys)
        if (clean and processes(t)[0]) or time.monotonic() > deadline:
            return places
        time.sleep(0.25)


def processes(t: Trial) -> tuple[bool, list[str], str]:
    """(all well, what is not, "running/checked" processes): every current fleet process
    runs, each --capacity worker has its slot processes, each worker's node is alive (its
    liveness key is there), Redis answers and a dispatcher holds the lease."""
    down, checked, running = [], 0, 0
    for name, proc in t.fleet.procs.items():
        checked += 1
        if proc.poll() is not None:
            down.append(f"{name} exited {proc.returncode}")
            continue
        running += 1
        if t.capacity.get(name, 1) > 1:
            slots = len(slot_pids(proc.pid))
            checked, running = checked + t.capacity[name], running + min(slots, t.capacity[name])
            if slots != t.capacity[name]:
                down.append(f"{name} has {slots}/{t.capacity[name]} slot processes")
    try:
        with t.r.pipeline(transaction=False) as p:
            for name in t.fleet.workers:
                p.exists(KEYS.alive(name))
            p.get(KEYS.dispatcher_lease)
            *alive, lease = p.execute()
        down += [f"node {name} not alive in Redis" for name, ok in zip(t.fleet.workers, alive) if not ok]
        if not lease:
            down.append("no dispatcher holds the lease")
    except REDIS_DOWN as e:
        down.append(f"redis does not answer: {e}")
    return not down, down, f"{running}/{checked}"


def examine(t: Trial, row: dict[str, Any]) -> None:
    """The checks; fills `row` and its list of problems."""
    problems: list[str] = row.setdefault("problems", [])
    wanted = set(t.job_ids) | set(t.garbage)
    places = settle(t, wanted)
    records = retry(lambda: list(iter_results(t.r, KEYS, t.batch)), 10)
    progress = retry(lambda: read_progress(t.r, KEYS, t.batch), 10)
    runs = read_executions(t.chaos_log)
    statuses = Counter(rec["status"] for rec in records)
    row.update(jobs=len(records), finished=statuses["finished"], failed=statuses["failed"],
               canceled=statuses["canceled"])  # fmt: skip

    lost, stuck, two, misfiled, not_newest, uncounted, never_ran, bad_failures = ([] for _ in range(8))
    where_stuck: Counter[str] = Counter()
    for i, (job_id, rec) in enumerate(zip(t.job_ids, records)):
        status, entries = rec["status"], places.get(job_id, [])
        open_entries = [k for k in entries if not final_kind(k)]
        if status not in FINAL:
            lost.append(i)
        if open_entries:
            stuck.append(i)
            where_stuck.update(open_entries)
        if len(entries) > 1:
            two.append(i)
        if status in FINAL and [final_kind(k) for k in entries] != [status]:
            misfiled.append(i)
        lines = runs.get(i, [])
        attempts = [a for a, _, _ in lines]
        if len(set(attempts)) != len(attempts) or (attempts and max(attempts) > rec["attempts"]):
            uncounted.append(i)
        if status == "finished":
            if not lines:
                never_ran.append(i)
            res = rec.get("result")
            newest = max(attempts, default=None)
            if not (isinstance(res, dict) and res.get("i") == i and res.get("attempt") == rec["attempts"] == newest
                    and (res.get("attempt"), res.get("node"), res.get("pid")) in lines):  # fmt: skip
                not_newest.append(i)
        if status == "failed" and not NODE_LOST.match(rec.get("error") or ""):
            bad_failures.append(f"{i}: {rec.get('error')}")
    counts = Counter(len(runs.get(i, [])) for i in range(len(t.job_ids)))
    row.update(lost=len(lost), stuck=len(stuck), two_places=len(two), misfiled=len(misfiled),
               not_newest=len(not_newest), uncounted=len(uncounted), never_ran=len(never_ran),
               bad_failures=len(bad_failures),
               runs={"0": counts[0], "1": counts[1], "2": counts[2], "3+": sum(v for k, v in counts.items() if k >= 3)},
               max_runs=max(counts, default=0))  # fmt: skip

    def problem(items: list[Any], what: str) -> None:
        if items:
            problems.append(f"{what}: {len(items)} (e.g. {', '.join(map(str, items[:5]))})")

    problem(lost, "lost (status not final), job index")
    if lost:
        problems.append("lost by status: " + ", ".join(f"{s} {n}" for s, n in
                        Counter(records[i]["status"] for i in lost).items()))  # fmt: skip
    problem(stuck, "stuck (in a non-final place), job index")
    if where_stuck:
        problems.append("stuck in: " + ", ".join(f"{k} x{n}" for k, n in where_stuck.most_common(6)))
    problem(two, "in two places, job index")
    problem(misfiled, "final status but not in exactly that one registry, job index")
    problem(never_ran, "finished with no execution logged, job index")
    problem(not_newest, "result not from the newest attempt, job index")
    problem(uncounted, "executions Redis did not count (attempt repeated or above gf_attempts), job index")
    problem(bad_failures, "failed with a reason other than node lost")
    counters = {"finished": progress.finished, "failed": progress.failed, "canceled": progress.canceled}
    if counters != {k: statuses[k] for k in counters}:
        problems.append(f"batch counters {counters} != statuses {dict(statuses)}")
    row["counters_ok"] = counters == {k: statuses[k] for k in counters}
    if stray := sorted(i for i in runs if not 0 <= i < len(t.job_ids)):
        problems.append(f"log lines for jobs not in the batch (garbage executed?): {stray[:5]}")

    garbage = []
    for job_id, kind in t.garbage.items():
        status, reason = retry(lambda job_id=job_id: garbage_outcome(t.r, job_id), 10)
        entries = places.get(job_id, [])
        open_entries = [k for k in entries if not final_kind(k)]
        # "node <id> lost" is no reason of the garbage's own: the worker holding it died or gave up
        bad = bool(open_entries or status == "finished"
                   or (status == "failed" and (not reason or NODE_LOST.match(reason))))  # fmt: skip
        outcome = f"{status or 'no status'}" + (f" ({reason})" if reason else "") + \
            (f" in {','.join(entries)}" if entries else " (dropped: in no place)")  # fmt: skip
        garbage.append({"kind": kind, "job_id": job_id, "outcome": outcome, "ok": not bad})
    row["garbage"] = garbage
    row["garbage_stuck"] = sum(not g["ok"] for g in garbage)
    for g in garbage:
        if not g["ok"]:
            problems.append(f"garbage {g['kind']}: {g['outcome']}")

    alive, down, counted = processes(t)
    row.update(alive=counted if alive else f"{counted} ({'; '.join(down)})", alive_ok=alive)
    if not alive:
        problems.append("processes: " + "; ".join(down))
    n_tb, kinds = tracebacks(t.log_dir)
    row.update(tracebacks=n_tb, traceback_kinds=dict(kinds.most_common(8)))
    if n_tb and t.opts.strict:
        problems.append(f"tracebacks: {n_tb}")
    if not t.faults:
        problems.append("no fault was injected: the batch ended first (more --jobs, or a higher --cost-max)")
    if row["end"] != "done":
        problems.append(f"batch did not end: {row['end']}")

