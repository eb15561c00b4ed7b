"""One OpenAI request sent to the server, and what came of it, as a job's outcome.

2xx: the job's result, `{"status_code", "request_id", "body"}`. 429, 5xx, a timeout or a
connection error: a failed attempt, retried with backoff while the job's retries last (the
server may be busy or restarting). Any other 4xx: a failure for good with the server's code and
message (the request itself is wrong; sending it again would not help). Failures carry a
RequestFailed, whose text the results' OpenAI output format reads back.
"""

from __future__ import annotations

from typing import Any

import httpx

from gpufleet.dispatcher.client.openai_batch import RequestFailed

from ..job_run import Outcome


async def send(http: httpx.AsyncClient, request: dict[str, Any], timeout_s: float) -> Outcome:
    """POST `request` ({"method", "url", "body"}: an OpenAI batch line's) to the server."""
    try:
        response = await http.post(request["url"], json=request["body"], timeout=timeout_s)
    except httpx.TimeoutException:
        return failed(RequestFailed(None, "timeout", f"no answer within {timeout_s:g} s"), final=False)
    except httpx.TransportError as e:
        return failed(RequestFailed(None, "connection_error", f"{type(e).__name__}: {e}"), final=False)
    body = _json(response)
    if response.is_success:
        request_id = response.headers.get("x-request-id") or (body.get("id") if isinstance(body, dict) else None)
        return Outcome(True, {"status_code": response.status_code, "request_id": request_id or "", "body": body})
    code, message = _error(response, body)
    retryable = response.status_code == 429 or response.status_code >= 500
    return failed(RequestFailed(response.status_code, code, message), final=not retryable)


def failed(error: RequestFailed, *, final: bool) -> Outcome:
    """A failed attempt, its error written as a traceback's last line would be."""
    return Outcome(False, f"{type(error).__module__}.{type(error).__qualname__}: {error}", final=final)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _error(response: httpx.Response, body: Any) -> tuple[str, str]:
    """The server's error code and message: OpenAI's {"error": {"code"|"type", "message"}}
    shape, else FastAPI's {"detail": ...}, else the body's text."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or _code(response.status_code)
        return str(code), str(error.get("message") or error)
    if isinstance(error, str):
        return _code(response.status_code), error
    if isinstance(body, dict) and "detail" in body:
        return _code(response.status_code), str(body["detail"])
    return _code(response.status_code), str(body)[:2000] or response.reason_phrase


def _code(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    return "server_error" if status >= 500 else "invalid_request_error"
