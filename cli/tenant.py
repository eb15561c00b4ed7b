"""`gpufleet tenant set|list`: tenants' shares and quotas, and what each has waiting and in flight."""

from __future__ import annotations

import json

import click

from gpufleet.dispatcher.fleet.tenants import TenantUsage, read_usage, set_tenant
from gpufleet.dispatcher.store.connection import connect
from gpufleet.dispatcher.store.keys import Keys

from .options import check_tenant_option
from .state import CliState, pass_state


class Quota(click.ParamType):
    """A quota: a count (0 or more), or 'none' for no quota."""

    name = "N|none"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "none":
            return None
        try:
            n = int(text)
        except ValueError:
            self.fail(f"{value!r} is neither a count nor 'none'", param, ctx)
        if n < 0:
            self.fail(f"{n} is below 0", param, ctx)
        return n


UNSET = "unset"  # a quota option not given: the quota stays as it is


@click.group()
def tenant() -> None:
    """Tenants: who shares the fleet, in what proportion, within what quotas.

    Every batch belongs to a tenant (`submit --tenant T`, GPUFLEET_TENANT; default
    'default'). Within a priority, freed slots go to the tenants with work in proportion to
    their weights, and within a tenant to its batches equally; a tenant without settings
    has weight 1 and no quota.
    """


@tenant.command("set")
@click.argument("name", metavar="TENANT", callback=check_tenant_option)
@click.option("--weight", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Its share of freed slots against the other tenants with work (default 1).")
@click.option("--max-running", type=Quota(), default=UNSET, show_default=False,
              help="At most N of its jobs in flight at once (taken for routing, queued on a node, or running); "
                   "'none' removes the quota.")  # fmt: skip
@click.option("--max-queued", type=Quota(), default=UNSET, show_default=False,
              help="A submit that would leave more than N of its jobs waiting is refused whole; 'none' removes "
                   "the quota.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the tenant's settings as JSON.")
@pass_state
def set_command(state: CliState, name: str, weight: float | None, max_running: int | str | None,
                max_queued: int | str | None, as_json: bool) -> None:  # fmt: skip
    """Set TENANT's weight and quotas; what is not given stays as it was. The dispatcher
    applies them from its next round."""
    quotas = {k: v for k, v in (("max_running", max_running), ("max_queued", max_queued)) if v != UNSET}
    settings = set_tenant(connect(state.settings.redis_url), Keys(state.settings.namespace), name, weight=weight,
                          quotas=quotas)  # type: ignore[arg-type]  # fmt: skip
    if as_json:
        click.echo(json.dumps({"tenant": name, "weight": settings.weight, "max_running": settings.max_running,
                               "max_queued": settings.max_queued}))  # fmt: skip
    else:
        click.echo(f"{name}: weight {settings.weight:g}, max running {_cap(settings.max_running)}, "
                   f"max queued {_cap(settings.max_queued)}")  # fmt: skip


@tenant.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per tenant, as a JSON list.")
@pass_state
def list_command(state: CliState, as_json: bool) -> None:
    """Every tenant with settings, jobs waiting or jobs in flight."""
    usage = read_usage(connect(state.settings.redis_url), Keys(state.settings.namespace))
    if as_json:
        click.echo(json.dumps([u.as_json() for u in usage]))
        return
    click.echo(render_tenants(usage) if usage else "no tenants yet: submit a batch, or `gpufleet tenant set`")


def render_tenants(usage: list[TenantUsage]) -> str:
    """The tenants as a table."""
    rows = [("TENANT", "WEIGHT", "MAX RUNNING", "MAX QUEUED", "WAITING", "IN FLIGHT")]
    rows += [(u.tenant, f"{u.settings.weight:g}", _cap(u.settings.max_running), _cap(u.settings.max_queued),
              str(u.waiting), str(u.in_flight)) for u in usage]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _cap(value: int | None) -> str:
    return "-" if value is None else str(value)
