"""OpenAI batch files on your own servers: a batch input line becomes a job that a forwarder
node POSTs to its OpenAI-compatible server, and a job's outcome becomes a batch output line.

Input line (OpenAI's batch input format; every field required, no others):

    {"custom_id": "r-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", ...}}

becomes JobSpec(func=FORWARD_FUNC, input={"method", "url", "body"}, client_id=custom_id,
model=body["model"], backend=OPENAI, retries=DEFAULT_RETRIES). The forwarder worker's side of
the contract: a 2xx ends the job `finished` with the result {"status_code", "request_id",
"body"}; a failure for good ends it `failed` with a RequestFailed, whose text (the `error` of
the job's `results` record) parse_failure reads back. 429s and 5xx are retried within the
job's retries before that.

Output line (OpenAI's batch output format, BatchRequestOutput): {"id": "batch_req_<job id>",
"custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code",
"message"} | null}. See output_line for each outcome.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterator
from typing import IO, Any

from ..errors import JobFileError
from ..routing.models import OPENAI, JobSpec
from .jobfile import decode_object, iter_lines

FORWARD_FUNC = "gpufleet.worker.forwarder:forward"  # what a forwarded job names; never called on a forwarder
OPENAI_URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")  # OpenAI's batch endpoints
FIELDS = ("custom_id", "method", "url", "body")
_KNOWN = frozenset(FIELDS)
DEFAULT_RETRIES = 3  # extra attempts after a 429, a 5xx or a timeout
FORMATS = ("auto", "jsonl", "openai")  # `submit --format`
GPUFLEET_ERROR = "gpufleet_error"  # the code of a failure gpufleet made (node lost, timeout, bad payload)
BATCH_CANCELLED = "batch_cancelled"  # OpenAI's code for a request canceled before it ran


class RequestFailed(Exception):
    """Raised by a forwarder worker when a request failed for good: the server refused it (4xx),
    or 429s, 5xx or timeouts outlasted the job's retries. Its text is one JSON object, so the
    job's error line (`module.RequestFailed: {...}`) can be read back by parse_failure."""

    def __init__(self, status_code: int | None, code: str, message: str) -> None:
        super().__init__(status_code, code, message)
        self.status_code, self.code, self.message = status_code, code, message

    def __str__(self) -> str:
        return json.dumps({"status_code": self.status_code, "code": self.code, "message": self.message})


# The exception's name (qualified or not) then its JSON; the leftmost match, so a message that
# quotes another "RequestFailed: {" stays inside the JSON.
_FAILURE_RE = re.compile(r"(?:^|[.\s])RequestFailed: (\{.*\})\s*$")


def parse_failure(error_line: str) -> dict[str, Any] | None:
    """{"status_code": int | None, "code": str, "message": str} from a RequestFailed's error line
    (`gpufleet.dispatcher.client.openai_batch.RequestFailed: {...}`); None for any other error."""
    match = _FAILURE_RE.search(error_line)
    if match is None:
        return None
    try:
        found = json.loads(match.group(1))
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    status, code, message = found.get("status_code"), found.get("code"), found.get("message")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        return None
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return {"status_code": status, "code": code, "message": message}


# -- input -------------------------------------------------------------------------------------


def is_openai_line(stream: IO[bytes]) -> bool:
    """Whether the first non-blank line of `stream` is an OpenAI batch line (it has custom_id,
    method, url and body); the stream is left where it was. A line that is not a JSON object
    says no: the job file reader then names what is wrong with it."""
    at = stream.tell()
    try:
        for line_no, text in iter_lines(stream, "<detect>"):
            obj = decode_object(text, "<detect>", line_no)
            return obj.keys() >= _KNOWN
        return False
    except JobFileError:
        return False
    finally:
        stream.seek(at)


def count_requests(stream: IO[bytes], *, source: str) -> int:
    """How many requests the OpenAI batch file holds, every line checked (read_requests's rules)
    and every custom_id unique, or the JobFileError naming the first bad line. Memory: one line,
    and 8 to 32 bytes per line for the uniqueness check (SeenHashes), never the ids themselves."""
    seen = SeenHashes()
    start = stream.tell()
    n = 0
    for _, custom_id, _, _ in _read(stream, source):
        seen.add(hash(custom_id))
        n += 1
    if seen.repeated:  # a hash seen twice: a duplicate, or (rarely) two ids with one hash
        stream.seek(start)
        _name_duplicate(stream, source, seen.repeated)
    return n


def read_requests(
    stream: IO[bytes], *, source: str, priority: str = "normal", retries: int = DEFAULT_RETRIES,
    timeout_s: int | None = None,
) -> Iterator[tuple[int, JobSpec]]:  # fmt: skip
    """Each request of an OpenAI batch file as (line number, JobSpec), checked line by line.
    Uniqueness of custom_id is count_requests's: call it first (submit reads a file twice)."""
    for line_no, custom_id, url, body in _read(stream, source):
        request = {"method": "POST", "url": url, "body": body}
        yield line_no, JobSpec(FORWARD_FUNC, request, custom_id, body["model"], None, priority, timeout_s, retries,
                               0.0, OPENAI)  # fmt: skip


def _read(stream: IO[bytes], source: str) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
    for line_no, text in iter_lines(stream, source):
        yield (line_no, *_parse(text, source, line_no))


def _parse(text: str, source: str, line_no: int) -> tuple[str, str, dict[str, Any]]:
    """One line's (custom_id, url, body), or the JobFileError naming its field."""
    obj = decode_object(text, source, line_no)
    if obj.keys() != _KNOWN:
        unknown = sorted(obj.keys() - _KNOWN)
        if unknown:
            raise JobFileError(source, line_no, unknown[0], f"unknown field (an OpenAI batch line has "
                                                            f"{', '.join(FIELDS)})")  # fmt: skip
        missing = next(name for name in FIELDS if name not in obj)
        raise JobFileError(source, line_no, missing, f"missing (an OpenAI batch line has {', '.join(FIELDS)})")
    custom_id, method, url, body = obj["custom_id"], obj["method"], obj["url"], obj["body"]
    if not isinstance(custom_id, str) or not custom_id:
        raise JobFileError(source, line_no, "custom_id", "must be a non-empty string")
    if method != "POST":
        raise JobFileError(source, line_no, "method", f"{method!r} is not 'POST' (a batch request is a POST)")
    if url not in OPENAI_URLS:
        raise JobFileError(source, line_no, "url", f"{url!r} is not one of {', '.join(OPENAI_URLS)}")
    if not isinstance(body, dict):
        raise JobFileError(source, line_no, "body", "must be a JSON object (the request's body)")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise JobFileError(source, line_no, "body.model", "must be a non-empty string (the model to run)")
    return custom_id, url, body


def _name_duplicate(stream: IO[bytes], source: str, suspects: set[int]) -> None:
    """Read the file again for the custom_ids whose hash was seen twice (a handful), and raise
    for the first one that really is used twice; a mere hash collision passes."""
    lines: dict[str, int] = {}
    for line_no, custom_id, _, _ in _read(stream, source):
        if hash(custom_id) in suspects:
            if custom_id in lines:
                why = f"{custom_id!r} already used on line {lines[custom_id]}"
                raise JobFileError(source, line_no, "custom_id", why)
            lines[custom_id] = line_no


class SeenHashes:
    """A set of 64-bit hashes in one flat array (open addressing, linear probing, at most half
    full): 16 to 32 bytes a member, where a Python set of the ids costs about 90. `repeated`
    holds the hashes added more than once."""

    def __init__(self) -> None:
        self._slots = array("q", bytes(8 * 1024))
        self._count = 0
        self.repeated: set[int] = set()

    def add(self, h: int) -> None:
        h = h or 1  # 0 marks an empty slot
        slots, mask = self._slots, len(self._slots) - 1
        i = h & mask
        while slots[i]:
            if slots[i] == h:
                self.repeated.add(h)
                return
            i = (i + 1) & mask
        slots[i] = h
        self._count += 1
        if 2 * self._count > len(slots):
            self._grow()

    def _grow(self) -> None:
        old, self._slots = self._slots, array("q", bytes(16 * len(self._slots)))
        mask = len(self._slots) - 1
        for h in old:
            if h:
                i = h & mask
                while self._slots[i]:
                    i = (i + 1) & mask
                self._slots[i] = h


# -- output ------------------------------------------------------------------------------------


def output_line(record: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """One `results` record (results.result_record) as an OpenAI batch output line, and whether
    it belongs in the output file (True: the server answered 2xx) or the error file (False).
    None while the job has not ended, or once its data has left Redis (no custom_id to name).

    - finished: response = the job's result {"status_code", "request_id", "body"}, error null.
    - failed with a RequestFailed: error {"code", "message"}; response {"status_code",
      "request_id": null, "body": {"error": {"code", "message"}}} when the server answered, else
      null (a timeout or a connection error past the retries).
    - failed otherwise (node lost, job timeout, bad payload): error {"code": "gpufleet_error",
      "message": the error line}, response null.
    - canceled: error {"code": "batch_cancelled", ...}, response null.
    """
    status = record.get("status")
    if status not in ("finished", "failed", "canceled", "stopped"):
        return None
    line: dict[str, Any] = {"id": f"batch_req_{record['job_id']}", "custom_id": record["id"], "response": None,
                            "error": None}  # fmt: skip
    if status == "finished":
        line["response"] = _response(record.get("result"))
        return line, True
    if status == "canceled":
        line["error"] = {"code": BATCH_CANCELLED, "message": "The request was canceled before it ran."}
        return line, False
    error = str(record.get("error") or f"job {status}")
    failure = parse_failure(error)
    if failure is None:
        line["error"] = {"code": GPUFLEET_ERROR, "message": error}
        return line, False
    line["error"] = {"code": failure["code"], "message": failure["message"]}
    if failure["status_code"] is not None:
        line["response"] = {"status_code": failure["status_code"], "request_id": None,
                            "body": {"error": {"code": failure["code"], "message": failure["message"]}}}  # fmt: skip
    return line, False


def _response(result: Any) -> dict[str, Any]:
    """A forwarded job's result as it is; any other job's return value as a 200's body."""
    if isinstance(result, dict) and {"status_code", "body"} <= result.keys():
        return {"status_code": result["status_code"], "request_id": result.get("request_id"), "body": result["body"]}
    return {"status_code": 200, "request_id": None, "body": result}
