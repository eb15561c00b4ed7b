"""The web dashboard's Flask app: pages (server-rendered shells that fetch /api/ and refresh
themselves by short polling) and the JSON API they use.

Pages: `/` the fleet, `/batches`, `/batches/<id>` (its jobs, filtered and paginated), `/jobs/<id>`.
API (GET, JSON): `/api/fleet`, `/api/history` (observe/history.py), `/api/batches?page=N`,
`/api/batches/<id>?status=S&q=TEXT&page=N`, `/api/jobs/<id>?full=1`. Actions (POST, JSON):
`/api/nodes/<id>/drain`, `/api/nodes/<id>/undrain`, `/api/batches/<id>/cancel`,
`/api/batches/<id>/requeue`, only with a token (see auth.py). The fleet's snapshot and its
history are read at most once per refresh interval, whoever is watching (Shared).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Flask, abort, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from redis import Redis

from ...errors import GpufleetError, NotFound
from ...fleet import control
from ...settings import Settings
from ...store.keys import Keys
from ..history import read_history
from . import auth
from .data import STATUSES, JobQuery, Shared, batch_list, batch_page, fleet_view, job_view


def create_app(r: Redis, settings: Settings, *, token: str | None = None, refresh_s: float = 2.0) -> Flask:
    """The dashboard over Redis `r`; with `token`, actions are allowed to whoever has it."""
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)  # a login lasts as long as this process
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    keys = Keys(settings.namespace)
    fleet = Shared(lambda: fleet_view(r, settings), ttl_s=refresh_s)
    history = Shared(lambda: read_history(r, keys, time.time()), ttl_s=refresh_s)
    app.extensions["gpufleet_fleet"] = fleet

    @app.context_processor
    def page_context() -> dict[str, Any]:
        return {"namespace": settings.namespace, "refresh_ms": int(refresh_s * 1000), "can_act": bool(token),
                "logged_in": bool(session.get("auth")), "csrf": auth.csrf_token(session)}  # fmt: skip

    @app.after_request
    def headers(response: Any) -> Any:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(NotFound)
    def not_found(e: NotFound) -> ResponseReturnValue:
        if request.path.startswith("/api/"):
            return jsonify(error=str(e)), 404
        return render_template("error.html", message=str(e)), 404

    @app.get("/")
    def fleet_page() -> ResponseReturnValue:
        return render_template("fleet.html", api=url_for("api_fleet"))

    @app.get("/batches")
    def batches_page() -> ResponseReturnValue:
        return render_template("batches.html", api=url_for("api_batches"))

    @app.get("/batches/<batch_id>")
    def batch_detail(batch_id: str) -> ResponseReturnValue:
        batch_page(r, keys, batch_id, JobQuery(per_page=1))  # NotFound for an unknown batch
        return render_template("batch.html", api=url_for("api_batch", batch_id=batch_id), batch_id=batch_id,
                               statuses=STATUSES)  # fmt: skip

    @app.get("/jobs/<job_id>")
    def job_detail(job_id: str) -> ResponseReturnValue:
        job_view(r, keys, job_id)
        return render_template("job.html", api=url_for("api_job", job_id=job_id), job_id=job_id)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> ResponseReturnValue:
        if request.method == "POST":
            if auth.log_in(session, token, request.form.get("token", "")):
                return redirect(url_for("fleet_page"))
            return render_template("login.html", failed=True), 401
        return render_template("login.html", failed=False)

    @app.post("/logout")
    def logout() -> ResponseReturnValue:
        session.clear()
        return redirect(url_for("fleet_page"))

    @app.get("/api/fleet")
    def api_fleet() -> ResponseReturnValue:
        return jsonify(fleet.get())

    @app.get("/api/history")
    def api_history() -> ResponseReturnValue:
        return jsonify(buckets=history.get())

    @app.get("/api/batches")
    def api_batches() -> ResponseReturnValue:
        return jsonify(batch_list(r, keys, page=_int_arg("page")))

    @app.get("/api/batches/<batch_id>")
    def api_batch(batch_id: str) -> ResponseReturnValue:
        status = request.args.get("status") or None
        if status is not None and status not in STATUSES:
            return jsonify(error=f"status must be one of {', '.join(STATUSES)}"), 400
        query = JobQuery(status=status, q=request.args.get("q") or None, page=_int_arg("page"))
        return jsonify(batch_page(r, keys, batch_id, query))

    @app.get("/api/jobs/<job_id>")
    def api_job(job_id: str) -> ResponseReturnValue:
        return jsonify(job_view(r, keys, job_id, full_input=request.args.get("full") == "1"))

    def act(do: Any) -> ResponseReturnValue:
        ok, status, why = auth.may_act(request, session, token)
        if not ok:
            return jsonify(error=why), status
        try:
            return jsonify(do())
        except NotFound as e:
            return jsonify(error=str(e)), 404
        except GpufleetError as e:
            return jsonify(error=str(e)), 409

    @app.post("/api/nodes/<node_id>/<verb>")
    def api_node(node_id: str, verb: str) -> ResponseReturnValue:
        if verb not in ("drain", "undrain"):
            abort(404)

        def do() -> dict[str, Any]:
            (control.drain if verb == "drain" else control.undrain)(r, keys, node_id)
            return {"node": node_id, "draining": verb == "drain"}

        return act(do)

    @app.post("/api/batches/<batch_id>/cancel")
    def api_cancel(batch_id: str) -> ResponseReturnValue:
        def do() -> dict[str, Any]:
            report = control.cancel(r, settings, batch_id)
            return {"batch": batch_id, "canceled": report.canceled, "left": report.left}

        return act(do)

    @app.post("/api/batches/<batch_id>/requeue")
    def api_requeue(batch_id: str) -> ResponseReturnValue:
        return act(lambda: {"batch": batch_id, "requeued": control.requeue_failed(r, settings, batch_id)})

    return app


def _int_arg(name: str) -> int:
    try:
        value = int(request.args.get(name, "0"))
    except ValueError:
        abort(400)
    return max(0, value)
