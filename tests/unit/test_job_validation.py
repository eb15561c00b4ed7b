"""One validation for both ways in: a JobSpec from the Python API is held to a job file line's
rules, and neither lets through a job that would be stranded or whose result is not JSON."""

from __future__ import annotations

import io

import pytest

from gpufleet.dispatcher.client.jobfile import check_specs, read_jobs
from gpufleet.dispatcher.errors import JobFileError
from gpufleet.dispatcher.routing.models import JobSpec

ECHO = "gpufleet.worker.tasks:echo"
NAN, INF = float("nan"), float("inf")


def refusal(specs: list[JobSpec]) -> JobFileError:
    with pytest.raises(JobFileError) as info:
        check_specs(specs)
    return info.value


def file_refusal(text: str) -> JobFileError:
    with pytest.raises(JobFileError) as info:
        list(read_jobs(io.BytesIO(text.encode()), source="jobs.jsonl", default_func=ECHO))
    return info.value


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({"priority": "urgent"}, "priority", "'urgent' is not one of high, normal, low"),  # no dispatcher reads it
        ({"timeout_s": 0}, "timeout_s", ">= 1"),
        ({"timeout_s": 1.5}, "timeout_s", "an integer"),
        ({"timeout_s": True}, "timeout_s", "an integer"),
        ({"retries": -1}, "retries", ">= 0"),
        ({"retries": None}, "retries", "an integer"),
        ({"retries": "2"}, "retries", "an integer"),
        ({"gpu_mem_gib": NAN}, "gpu_mem_gib", "finite"),
        ({"gpu_mem_gib": INF}, "gpu_mem_gib", "finite"),
        ({"gpu_mem_gib": -1}, "gpu_mem_gib", ">= 0"),
        ({"gpu_mem_gib": "1"}, "gpu_mem_gib", "a number"),
        ({"client_id": ""}, "client_id", "must not be empty"),
        ({"client_id": 1.5}, "client_id", "a string or an integer"),
        ({"model": ""}, "model", "non-empty string"),
        ({"affinity": 3}, "affinity", "non-empty string"),
        ({"input": NAN}, "input", "no NaN or Infinity"),
        ({"input": {"x": [1, {"y": -INF}]}}, "input", "no NaN or Infinity"),  # anywhere, however deep
        ({"input": {1, 2}}, "input", "not JSON serializable"),
        ({"func": "nonsense"}, "func", "module:function"),
    ],
)
def test_a_bad_jobspec_is_refused_naming_its_number_and_field(fields: dict[str, object], field: str,
                                                              words: str) -> None:  # fmt: skip
    err = refusal([JobSpec(ECHO, 1), JobSpec(**{"func": ECHO, **fields})])  # type: ignore[arg-type]
    assert (err.line_no, err.field) == (2, field)
    assert str(err).startswith(f"jobs:2: field '{field}'") and words in str(err)
    assert str(err).endswith("nothing was enqueued")


def test_a_jobspec_func_is_checked_for_its_form_only() -> None:
    """As for a job file line: a module the submitting process cannot import, or a function it
    does not define, is the worker's to refuse, not the submitter's."""
    check_specs([JobSpec("gf_absent_pkg_xyz.infer:run", 1), JobSpec("gpufleet.worker.tasks:nope", 2)])


def test_client_ids_are_unique_within_a_submit_as_text() -> None:
    """7 and "7" are stored as the same gf_id, so they are the same id."""
    seven = JobSpec(ECHO, 3, client_id=7)  # type: ignore[arg-type]  # an int id, as a job file allows
    err = refusal([JobSpec(ECHO, 1, client_id="7"), JobSpec(ECHO, 2, client_id="8"), seven])
    assert (err.line_no, err.field) == (3, "client_id") and "'7' already used by job 1" in str(err)


def test_every_field_a_job_file_allows_is_allowed_in_a_jobspec() -> None:
    check_specs([
        JobSpec(ECHO),
        JobSpec(ECHO, {"x": [1.5, None, "s"]}, client_id=7, model="m",  # type: ignore[arg-type]
                affinity="a", priority="high", timeout_s=30, retries=2, gpu_mem_gib=2),
        JobSpec(ECHO, (1, 2), client_id="q", priority="low", gpu_mem_gib=0.5),
    ])  # fmt: skip


@pytest.mark.parametrize(
    "line",
    [
        '{"input": NaN}',  # a line with only "input" skips the field checks, not this one
        '{"input": {"x": [Infinity]}}',
        '{"input": -Infinity, "id": "a"}',
        '{"input": 1e999}',  # Python's json reads it as inf
        '{"input": [1, -2e400]}',
    ],
)
def test_a_job_file_input_with_nan_or_infinity_is_refused(line: str) -> None:
    err = file_refusal('{"input": 1}\n' + line + "\n")
    assert (err.line_no, err.field) == (2, None) and "not valid JSON" in str(err)


def test_a_job_file_gpu_mem_too_large_for_a_float_is_refused_not_a_traceback() -> None:
    """An integer of 400 digits is valid JSON; float() of it raised OverflowError."""
    err = file_refusal('{"input": 1, "gpu_mem": 1%s}\n' % ("0" * 400))
    assert (err.line_no, err.field) == (1, "gpu_mem") and "finite number" in str(err)


def test_a_job_file_keeps_ordinary_floats_exactly() -> None:
    [spec] = list(read_jobs(io.BytesIO(b'{"input": [0.1, -2.5e-300, 1.7e308], "gpu_mem": 1.25}\n'),
                            source="j", default_func=ECHO))  # fmt: skip
    assert spec.input == [0.1, -2.5e-300, 1.7e308] and spec.gpu_mem_gib == 1.25


def test_a_job_file_that_starts_with_a_bom_says_so() -> None:
    err = file_refusal('\ufeff{"input": 1}\n')
    assert err.line_no == 1 and "BOM" in str(err)
