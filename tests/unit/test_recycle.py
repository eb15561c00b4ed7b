"""Recycling a slot process (worker --max-jobs, --max-memory-mib, a CUDA OOM): the pure checks,
the counters the metrics read, and the flags' usage errors. No server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from gpufleet.cli.main import cli
from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.settings import Settings
from gpufleet.worker.metrics import DURATION_BUCKETS_S, worker_registry
from gpufleet.worker.recycle import CUDA_OOM, MAX_JOBS, MAX_MEMORY, RecycleLimits, is_cuda_oom, rss_mib
from gpufleet.worker.stats import NodeStats

from .test_metrics import samples, value


def test_no_limit_never_recycles_and_never_reads_memory() -> None:
    def unread() -> float:
        raise AssertionError("memory read without a memory limit")

    assert RecycleLimits().crossed(10**9, unread) is None


def test_the_job_that_reaches_max_jobs_crosses_the_line() -> None:
    limits = RecycleLimits(max_jobs=3)
    assert [limits.crossed(n, lambda: 0.0) for n in (1, 2, 3, 40)] == [None, None, MAX_JOBS, MAX_JOBS]


def test_memory_past_the_limit_crosses_the_line_and_at_it_does_not() -> None:
    limits = RecycleLimits(max_memory_mib=512)
    assert limits.crossed(1, lambda: 512.0) is None
    assert limits.crossed(1, lambda: 512.5) == MAX_MEMORY


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_jobs and max_memory_mib must be >= 0"):
        RecycleLimits(max_jobs=-1)


def test_rss_is_this_process_s_resident_memory_and_grows_with_what_it_holds() -> None:
    before = rss_mib()
    held = b"\x01" * (64 << 20)
    after = rss_mib()
    assert before > 1 and after - before > 50
    del held


class OutOfMemoryError(RuntimeError):
    """Named as torch's is: torch.cuda.OutOfMemoryError (torch.OutOfMemoryError in torch 2.5+)."""


OutOfMemoryError.__module__ = "torch.cuda"


class OtherOutOfMemoryError(Exception):
    """The same name in another library: not a GPU's."""


OtherOutOfMemoryError.__name__ = "OutOfMemoryError"


@pytest.mark.parametrize(
    "error, oom",
    [
        (OutOfMemoryError("no message to go by"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),  # torch before 1.13
        (OtherOutOfMemoryError("host memory"), False),
        (MemoryError(), False),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    ],
)
def test_a_cuda_oom_is_known_by_torch_s_class_name_or_by_its_message(error: BaseException, oom: bool) -> None:
    assert is_cuda_oom(error) is oom


def test_a_cuda_oom_is_found_anywhere_in_the_chain_of_causes() -> None:
    try:
        try:
            raise OutOfMemoryError("inner")
        except OutOfMemoryError as inner:
            raise ValueError("the task wrapped it") from inner
    except ValueError as outer:
        assert is_cuda_oom(outer)
    cycle = RuntimeError("a")
    cycle.__context__ = RuntimeError("b")
    cycle.__context__.__context__ = cycle
    assert not is_cuda_oom(cycle)


def test_recycles_and_stopped_jobs_are_counted_where_the_metrics_read_them() -> None:
    """A stopped job is neither finished nor failed (a stop says nothing about the node), and
    frees its slot; recycles are counted per reason, every reason exported from the start."""
    stats = NodeStats(slots=1, buckets=DURATION_BUCKETS_S)
    stats.job_started(0, count=3)
    stats.jobs_stopped(0, count=3)
    stats.recycled(CUDA_OOM)
    stats.recycled(MAX_JOBS)
    stats.recycled(MAX_JOBS)
    view = stats.view()
    assert (view.running, view.completed, view.failed) == (0, 0, 0)
    found = samples(generate_latest(worker_registry("n1", stats)))
    counts = {reason: value(found, "gpufleet_worker_recycles_total", node="n1", reason=reason)
              for reason in (MAX_JOBS, MAX_MEMORY, CUDA_OOM)}  # fmt: skip
    assert counts == {MAX_JOBS: 2, MAX_MEMORY: 0, CUDA_OOM: 1}


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-jobs", "0"], "0 is not in the range x>=1"),
        (["--max-memory-mib", "-5"], "-5 is not in the range x>=1"),
        (["--max-jobs", "ten"], "'ten' is not a valid integer"),
        (["--max-jobs", "5", "--openai-url", "http://127.0.0.1:1/v1"], "--max-jobs is for a worker of Python"),
        (["--max-memory-mib", "900", "--openai-url", "http://127.0.0.1:1/v1"], "--max-memory-mib is for a worker"),
    ],
)
def test_bad_recycling_flags_are_usage_errors(args: list[str], words: str) -> None:
    result = CliRunner().invoke(cli, ["--redis-url", "redis://127.0.0.1:1/0", "worker", *args])
    assert result.exit_code == 2 and words in result.output, result.output


def test_worker_help_explains_each_recycling_flag() -> None:
    out = CliRunner().invoke(cli, ["worker", "--help"], terminal_width=200).output
    assert "--max-jobs N" in out and "after it has run N jobs" in out
    assert "--max-memory-mib M" in out and "resident memory" in out
    assert "CUDA out-of-memory error is retried on another node" in out


def test_the_oom_cool_down_is_a_setting_and_a_negative_one_is_refused() -> None:
    assert Settings.from_env({"GPUFLEET_OOM_COOLDOWN_S": "2.5"}).oom_cooldown_s == 2.5
    assert Settings().oom_cooldown_s == 10.0
    with pytest.raises(SettingsError, match="oom_cooldown_s must be >= 0"):
        Settings(oom_cooldown_s=-1)
