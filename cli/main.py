"""The `gpufleet` command group: shared options, logging, and errors mapped to exit codes."""

from __future__ import annotations

import logging.config
import os
from typing import Any

import click
from click.core import ParameterSource

from gpufleet.dispatcher.errors import GpufleetError, JobFileError
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import namespace_problem

from .control import cancel, drain, forget, requeue, undrain
from .events import events
from .fleet import dispatcher, worker
from .jobs import results, submit
from .local import demo, local
from .options import check_redis_url
from .simulate import simulate
from .state import EXIT_USAGE, CliState
from .status import status
from .tenant import tenant
from .top import top
from .web import web

# Commands that start their own Redis unless one is named on the command line: GPUFLEET_REDIS_URL
# names the user's fleet, which a demo must not join (its nodes would stay there, dead).
OWN_REDIS_COMMANDS = ("demo", "local")


class Group(click.Group):
    """Maps GpufleetError to a message and an exit code: a traceback means a bug in gpufleet."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobFileError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_USAGE)
        except GpufleetError as e:
            raise click.ClickException(str(e)) from e


def default_log_config(level: str) -> dict[str, Any]:
    """One line per event, key=value style, on stderr; rq's per-job lines only at DEBUG."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"rq": {"level": "DEBUG" if level == "DEBUG" else "WARNING"}},
    }


def _check_namespace(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A bad --namespace (or GPUFLEET_NAMESPACE) is a usage error, caught before anything runs."""
    if value is not None and (why := namespace_problem(value)) is not None:
        raise click.BadParameter(why)
    return value


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--redis-url", envvar="GPUFLEET_REDIS_URL", show_envvar=True, default=None,
              help="Redis to use (redis://, rediss:// with TLS, unix://, or "
                   "redis+sentinel://host:port,host:port/service/db to follow a Sentinel failover); "
                   "a password in it is never printed. Default: redis://127.0.0.1:6379/0. `demo` and "
                   "`local` ignore GPUFLEET_REDIS_URL and start their own Redis unless a URL is given "
                   "on the command line.")  # fmt: skip
@click.option("--namespace", envvar="GPUFLEET_NAMESPACE", show_envvar=True, default=None, callback=_check_namespace,
              help="Key prefix, so several fleets can share one Redis: 1-64 letters, digits, '_' or '-', "
                   "and not 'rq'. Default: gpufleet.")  # fmt: skip
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="How much the long-running commands log to stderr.")  # fmt: skip
@click.version_option("0.1.0", prog_name="gpufleet")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, namespace: str | None, log_level: str) -> None:
    """gpufleet: route AI inference jobs over a fleet of GPU hosts, through Redis.

    Submit a batch with `gpufleet submit jobs.jsonl`, run `gpufleet dispatcher` once and
    `gpufleet worker` on every GPU host, then read `gpufleet results BATCH`. Try it all on
    this machine with `gpufleet demo`.
    """
    logging.config.dictConfig(default_log_config(log_level.upper()))
    env: dict[str, str] = dict(os.environ)
    if ctx.invoked_subcommand in OWN_REDIS_COMMANDS:  # only a URL typed on the command line counts
        env.pop("GPUFLEET_REDIS_URL", None)
        if ctx.get_parameter_source("redis_url") is ParameterSource.ENVIRONMENT:
            redis_url = None
    param = next(p for p in ctx.command.params if p.name == "redis_url")
    check_redis_url(ctx, param, redis_url)  # the flag's value, or GPUFLEET_REDIS_URL's
    settings = Settings.from_env(env).with_overrides(redis_url=redis_url, namespace=namespace)
    ctx.obj = CliState(settings=settings, redis_url_given=redis_url is not None, log_level=log_level.upper())


def main() -> None:
    """The `gpufleet` console script."""
    cli(prog_name="gpufleet")


for command in (submit, results, status, dispatcher, worker, drain, undrain, cancel, requeue, forget, demo, local,
                simulate, top, tenant, events, web):  # fmt: skip
    cli.add_command(command)
