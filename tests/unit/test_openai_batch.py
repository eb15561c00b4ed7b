"""OpenAI batch files without a server: the line parser, format detection, RequestFailed's text
and its parsing back, the output line of each outcome, and the CLI's usage errors."""

from __future__ import annotations

import io
import json
import traceback
from typing import Any

import pytest
from click.testing import CliRunner

from gpufleet.cli.main import cli
from gpufleet.cli.render import render_resume, render_unwritten
from gpufleet.dispatcher.client.openai_batch import (
    FORWARD_FUNC,
    OPENAI_URLS,
    RequestFailed,
    SeenHashes,
    _name_duplicate,
    count_requests,
    is_openai_line,
    output_line,
    parse_failure,
    read_requests,
)
from gpufleet.dispatcher.client.results import WriteReport, last_line
from gpufleet.dispatcher.client.submit import ResumeReport, file_format
from gpufleet.dispatcher.errors import JobFileError
from gpufleet.dispatcher.routing.models import OPENAI, JobSpec

BODY = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}


def request(custom_id: str = "r-1", **fields: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": BODY, **fields}


def stream(*lines: object) -> io.BytesIO:
    return io.BytesIO("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode())


def test_a_line_becomes_a_forwarded_job_with_the_default_retry_budget() -> None:
    lines = stream(request("a"), "", request("b", url="/v1/embeddings", body={"model": "e5", "input": "x"}))
    assert count_requests(lines, source="b.jsonl") == 2
    lines.seek(0)
    jobs = list(read_requests(lines, source="b.jsonl", priority="high"))
    assert [n for n, _ in jobs] == [1, 3]  # blank lines count, and are skipped
    assert jobs[0][1] == JobSpec(FORWARD_FUNC, {"method": "POST", "url": "/v1/chat/completions", "body": BODY},
                                 "a", "llama-3-8b", None, "high", None, 3, 0.0, OPENAI)  # fmt: skip
    assert jobs[1][1].input["url"] == "/v1/embeddings" and jobs[1][1].model == "e5"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "batch.jsonl:2: not valid JSON"),
        ("[1, 2]", "batch.jsonl:2: expected a JSON object, got list"),
        (request(extra=1), "batch.jsonl:2: field 'extra': unknown field (an OpenAI batch line has custom_id"),
        ({k: v for k, v in request().items() if k != "method"}, "batch.jsonl:2: field 'method': missing"),
        ({k: v for k, v in request().items() if k != "body"}, "batch.jsonl:2: field 'body': missing"),
        (request(custom_id=7), "batch.jsonl:2: field 'custom_id': must be a non-empty string"),
        (request(custom_id=""), "batch.jsonl:2: field 'custom_id': must be a non-empty string"),
        (request(method="GET"), "batch.jsonl:2: field 'method': 'GET' is not 'POST'"),
        (request(url="/v1/images"), "batch.jsonl:2: field 'url': '/v1/images' is not one of /v1/chat/completions, "
                                    "/v1/completions, /v1/embeddings; nothing was enqueued"),
        (request(body=[1]), "batch.jsonl:2: field 'body': must be a JSON object"),
        (request(body={"messages": []}), "batch.jsonl:2: field 'body.model': must be a non-empty string"),
        (request(body={"model": ""}), "batch.jsonl:2: field 'body.model': must be a non-empty string"),
        (request(body={"model": 3}), "batch.jsonl:2: field 'body.model': must be a non-empty string"),
        ('{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "t": NaN}}',
         "batch.jsonl:2: not valid JSON (NaN is not a JSON number"),
    ],
)
def test_each_bad_line_names_its_line_and_field(line: object, message: str) -> None:
    with pytest.raises(JobFileError) as e:
        count_requests(stream(request("ok"), line, request("after")), source="batch.jsonl")
    assert str(e.value).startswith(message) and str(e.value).endswith("; nothing was enqueued")
    assert e.value.line_no == 2


def test_every_url_of_openais_batch_api_is_accepted() -> None:
    assert count_requests(stream(*(request(f"r{i}", url=u) for i, u in enumerate(OPENAI_URLS))), source="b") == 3


def test_a_custom_id_used_twice_names_both_lines() -> None:
    lines = stream(*(request(f"r-{i}") for i in range(3000)), "", request("r-1234"))
    with pytest.raises(JobFileError, match=r"^b.jsonl:3002: field 'custom_id': 'r-1234' already used on line 1235;"):
        count_requests(lines, source="b.jsonl")


def test_a_hash_collision_without_a_duplicate_passes() -> None:
    """Two ids that share a hash are told apart on the second reading of the file."""
    _name_duplicate(stream(request("a"), request("b")), "b.jsonl", {hash("a"), hash("b")})


def test_seen_hashes_grow_and_flag_only_repeats() -> None:
    seen = SeenHashes()
    for i in range(50_000):
        seen.add(hash(f"id-{i}"))
    assert seen.repeated == set()
    seen.add(hash("id-49999"))
    seen.add(0)
    seen.add(0)  # 0 is stored as 1, and still found again
    assert seen.repeated == {hash("id-49999"), 1}


def test_auto_detection_reads_the_first_line_and_leaves_the_stream_where_it_was() -> None:
    openai = stream("", "  ", request())
    assert is_openai_line(openai) and openai.tell() == 0
    assert not is_openai_line(stream({"input": 1, "id": "custom_id"}))
    assert not is_openai_line(stream("{broken"))  # the job file reader names what is wrong
    assert not is_openai_line(stream())
    assert file_format(stream(request()), "b").name == "openai"
    assert file_format(stream({"input": 1}), "b").name == "jsonl"
    assert file_format(stream(request()), "b", "jsonl").name == "jsonl"


def test_an_auto_detected_openai_file_holds_every_line_to_that_format() -> None:
    lines = stream(request("a"), {"input": 1})
    kind = file_format(lines, "b.jsonl")
    with pytest.raises(JobFileError, match=r"b.jsonl:2: field 'input': unknown field \(an OpenAI batch line"):
        kind.count(lines)


def test_a_forced_jsonl_format_refuses_openai_lines() -> None:
    lines = stream(request("a"))
    with pytest.raises(JobFileError, match=r"b.jsonl:1: field 'body': unknown field"):
        file_format(lines, "b.jsonl", "jsonl", default_func="m:f").count(lines)


@pytest.mark.parametrize(
    "fmt, options, words",
    [
        ("openai", {"default_func": "m:f"}, "--func is for job file lines"),
        ("jsonl", {"retries": 2}, "--retries and --timeout are for OpenAI batch lines"),
        ("openai", {"retries": -1}, "field 'retries': must be an integer >= 0"),
        ("openai", {"timeout_s": 0}, "field 'timeout': must be an integer >= 1"),
        ("openai", {"default_priority": "asap"}, "field 'priority': 'asap' is not one of"),
        ("xml", {}, "format 'xml' is not one of auto, jsonl, openai"),
    ],
)
def test_options_that_do_not_fit_the_format_are_refused(fmt: str, options: dict[str, Any], words: str) -> None:
    with pytest.raises(JobFileError, match=words):
        file_format(stream(request()), "b", fmt, **options)


def test_request_failed_is_one_json_line_that_parses_back() -> None:
    """What the worker raises reaches `results` as a traceback's last line; parse_failure reads
    status_code, code and message back from it."""
    try:
        raise RequestFailed(400, "invalid_request_error", 'bad "messages":\nline two')
    except RequestFailed as e:
        error_line = last_line("".join(traceback.format_exception(e)))
    assert error_line.startswith("gpufleet.dispatcher.client.openai_batch.RequestFailed: {")
    assert parse_failure(error_line) == {"status_code": 400, "code": "invalid_request_error",
                                         "message": 'bad "messages":\nline two'}  # fmt: skip
    assert parse_failure(f"RequestFailed: {RequestFailed(None, 'timeout', 'no answer')}") == {
        "status_code": None, "code": "timeout", "message": "no answer"}  # fmt: skip


@pytest.mark.parametrize("line", ["node a lost", "ValueError: bad", "cannot decode job payload", "",
                                  "RequestFailed: {not json}", 'RequestFailed: {"status_code": "400"}',
                                  'RequestFailed: {"status_code": true, "code": "c", "message": "m"}',
                                  'xRequestFailed: {"status_code": 1, "code": "c", "message": "m"}'])  # fmt: skip
def test_any_other_error_line_is_not_a_request_failure(line: str) -> None:
    assert parse_failure(line) is None


TIMED_OUT = "JobTimeoutException: Task exceeded maximum timeout value (180 seconds)"


def record(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "r-1", "job_id": "5f0c", "status": status, "node": "a", **fields}


def test_a_success_is_an_output_line() -> None:
    result = {"status_code": 200, "request_id": "req-9", "body": {"id": "chatcmpl-1", "choices": []}}
    assert output_line(record("finished", result=result)) == (
        {"id": "batch_req_5f0c", "custom_id": "r-1", "response": result, "error": None}, True)  # fmt: skip


def test_a_refused_request_keeps_the_servers_status_in_its_error_line() -> None:
    error = f"gpufleet.dispatcher.client.openai_batch.RequestFailed: {RequestFailed(400, 'invalid_value', 'no')}"
    assert output_line(record("failed", error=error)) == ({
        "id": "batch_req_5f0c", "custom_id": "r-1",
        "response": {"status_code": 400, "request_id": None,
                     "body": {"error": {"code": "invalid_value", "message": "no"}}},
        "error": {"code": "invalid_value", "message": "no"}}, False)  # fmt: skip


@pytest.mark.parametrize(
    "rec, error",
    [
        (record("failed", error=f"x.RequestFailed: {RequestFailed(None, 'timeout', 'no answer within 180 s')}"),
         {"code": "timeout", "message": "no answer within 180 s"}),
        (record("failed", error="node a lost"), {"code": "gpufleet_error", "message": "node a lost"}),
        (record("failed", error=TIMED_OUT), {"code": "gpufleet_error", "message": TIMED_OUT}),
        (record("canceled", error="canceled"), {"code": "batch_cancelled",
                                                "message": "The request was canceled before it ran."}),
    ],
)  # fmt: skip
def test_a_failure_without_a_server_answer_has_no_response(rec: dict[str, Any], error: dict[str, str]) -> None:
    line, ok = output_line(rec)  # type: ignore[misc]
    assert not ok and line["response"] is None and line["error"] == error and line["custom_id"] == "r-1"


@pytest.mark.parametrize("status", ["queued", "started", "scheduled", "expired"])
def test_a_job_not_ended_or_gone_has_no_line(status: str) -> None:
    assert output_line(record(status)) is None


def test_the_summaries_say_what_was_left_out() -> None:
    assert render_unwritten(WriteReport(written=5), 5, follow=False) is None
    assert render_unwritten(WriteReport(written=3, not_ended=2), 5, follow=False) == (
        "2 of 5 jobs have no line: 2 not ended yet (run again, or use --wait or --follow)")
    assert render_unwritten(WriteReport(written=5), 5, follow=True) is None
    text = render_unwritten(WriteReport(written=2, gone=1), 5, follow=True) or ""
    assert text.startswith("3 of 5 jobs have no line: 1 had lost their data") and "2 ended without an entry" in text
    resumed = render_resume("b", ResumeReport(enqueued=5, requeued_failed=1, requeued_canceled=2, finished=3,
                                               in_flight=4, gone=0))  # fmt: skip
    assert resumed == ("resumed b: enqueued 5 missing, put back 1 failed and 2 canceled; left alone 3 finished, "
                       "4 in flight, 0 whose data had left Redis")  # fmt: skip


@pytest.mark.parametrize(
    "args, words",
    [
        (["results", "b", "--errors", "e.jsonl"], "--errors needs --format openai"),
        (["results", "b", "--follow", "--wait"], "--follow and --wait: choose one"),
        (["results", "b", "--format", "openai", "-o", "x.jsonl", "--errors", "x.jsonl"], "name the same file"),
        (["results", "b", "--format", "csv"], "'csv' is not one of"),
        (["submit", "{file}", "--resume"], "--resume needs --batch NAME"),
        (["submit", "{file}", "--format", "xml"], "'xml' is not one of"),
        (["submit", "{file}", "--retries", "-1"], "-1 is not in the range x>=0"),
    ],
)
def test_usage_errors_exit_2_before_redis_is_reached(args: list[str], words: str, tmp_path: Any) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(request()) + "\n")
    result = CliRunner().invoke(cli, ["--redis-url", "redis://127.0.0.1:1/0", *(a.format(file=path) for a in args)])
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output
