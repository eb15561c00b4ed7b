"""`gpufleet web`: the dashboard, served by waitress (a production WSGI server) over the Flask app."""

from __future__ import annotations

import click

from gpufleet.dispatcher.store.connection import connect

from .state import EXIT_ERROR, CliState, pass_state


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves every interface (give --token to act from there).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True,
              help="Port to listen on.")
@click.option("--token", envvar="GPUFLEET_WEB_TOKEN", show_envvar=True, default=None, metavar="T",
              help="Allow actions (drain, undrain, cancel, requeue) to whoever sends this token, as a login or an "
                   "'Authorization: Bearer T' header; without it the dashboard is read-only. Prefer the environment "
                   "variable: a flag shows in the process list.")  # fmt: skip
@click.option("--refresh", "refresh_s", type=click.FloatRange(min=0.2), default=2.0, show_default=True, metavar="S",
              help="Seconds between a page's refreshes; the fleet is read from Redis at most once per refresh, "
                   "however many watch.")  # fmt: skip
@pass_state
def web(state: CliState, host: str, port: int, token: str | None, refresh_s: float) -> None:
    """Serve the web dashboard: the fleet (nodes, GPUs, queues, tenants), batches with their
    progress, each batch's jobs (filtered, searched, paginated) and each job, refreshing live,
    with a JSON API under /api/ (see README "Web dashboard"). Ctrl-C stops it."""
    try:
        import waitress

        from gpufleet.dispatcher.observe.web.app import create_app
    except ImportError as e:
        click.echo(f"Error: the dashboard needs Flask and waitress ({e.name} is missing): "
                   "pip install 'gpufleet[web]'", err=True)  # fmt: skip
        raise SystemExit(EXIT_ERROR) from e
    app = create_app(connect(state.settings.redis_url), state.settings, token=token or None, refresh_s=refresh_s)
    mode = "actions allowed with the token" if token else "read-only (no --token)"
    click.echo(f"gpufleet web on http://{host}:{port}/ for namespace {state.settings.namespace}, {mode}; Ctrl-C stops",
               err=True)  # fmt: skip
    try:
        waitress.serve(app, host=host, port=port, threads=8, ident="gpufleet")
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
