"""Who may act through the dashboard: read-only without a token; with one, a request acts when
it sends the token (`Authorization: Bearer T`) or carries the login cookie plus the page's CSRF
token (`X-CSRF-Token`), so another site cannot make a logged-in browser act."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import MutableMapping
from typing import Any

from flask import Request

CSRF_HEADER = "X-CSRF-Token"


def bearer_ok(request: Request, token: str | None) -> bool:
    """The request names the token in its Authorization header."""
    sent = request.headers.get("Authorization", "")
    return bool(token) and sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].encode(), token.encode())  # type: ignore[union-attr]


def log_in(session: MutableMapping[str, Any], token: str | None, given: str) -> bool:
    """Start a logged-in session when `given` is the token; whether it was."""
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return False
    session["auth"] = True
    session["csrf"] = secrets.token_urlsafe(24)
    return True


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, for the page to send back with each action ("" logged out)."""
    return str(session.get("csrf", "")) if session.get("auth") else ""


def may_act(request: Request, session: MutableMapping[str, Any], token: str | None) -> tuple[bool, int, str]:
    """Whether the request may act: (ok, HTTP status when not, why)."""
    if not token:
        return False, 403, "the dashboard is read-only: start `gpufleet web` with --token to allow actions"
    if bearer_ok(request, token):
        return True, 200, ""
    if not session.get("auth"):
        return False, 401, "log in with the dashboard's token first (or send Authorization: Bearer TOKEN)"
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent.encode(), csrf_token(session).encode()):
        return False, 403, f"missing or wrong {CSRF_HEADER}: act from the dashboard's own pages"
    return True, 200, ""
