"""Checks of shared option values, so a value that cannot work is a usage error (exit 2)
before anything runs; cli/main.py's group and the commands with options of their own use them."""

from __future__ import annotations

from urllib.parse import urlsplit

import click
from redis.connection import parse_url

from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.store.connection import SENTINEL_SCHEMES, mask_url, parse_sentinel_url
from gpufleet.dispatcher.store.keys import tenant_problem

REDIS_SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)


def redis_url_problem(url: str) -> str | None:
    """Why `url` is not a Redis URL gpufleet can use (a usage error), or None; whether a server
    answers there is another matter (exit 1)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        try:
            parse_sentinel_url(url)
        except SettingsError as e:
            return str(e)
        return None
    if scheme not in REDIS_SCHEMES:
        return (f"{mask_url(url)!r} is not a Redis URL: give redis://host:port/db, rediss:// (TLS), "
                "unix:///path/to/socket, or redis+sentinel://host:port,host:port/service/db")  # fmt: skip
    try:
        parse_url(url)
    except ValueError as e:
        return f"invalid Redis URL {mask_url(url)}: {e}"
    db = urlsplit(url).path.strip("/")
    if scheme != "unix" and db and not db.isdigit():
        return f"invalid Redis URL {mask_url(url)}: the database must be a number, not {db!r}"
    return None


def check_redis_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A --redis-url that is not a Redis URL is a usage error, caught before anything runs."""
    if value is not None and (why := redis_url_problem(value)) is not None:
        raise click.BadParameter(why, ctx=ctx, param=param)
    return value


def check_tenant_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A tenant name that cannot name one is a usage error."""
    if value is not None and (why := tenant_problem(value)) is not None:
        raise click.BadParameter(why, ctx=ctx, param=param)
    return value
