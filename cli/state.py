"""What the `gpufleet` group resolves for its subcommands, and the exit codes they share.

Its own module, so the command modules and the group (cli/main.py, which imports them all)
import it and not each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from gpufleet.dispatcher.settings import Settings

EXIT_ERROR = 1  # something the user can fix: the message says what
EXIT_USAGE = 2  # bad flags or a bad job file: nothing was done


class CliState:
    """The settings the group resolved (defaults, GPUFLEET_* env, flags) and what it was told."""

    def __init__(self, settings: Settings, redis_url_given: bool, log_level: str) -> None:
        self.settings = settings
        self.redis_url_given = redis_url_given  # by --redis-url or GPUFLEET_REDIS_URL (for demo/local: the flag only)
        self.log_level = log_level


pass_state: Callable[..., Any] = click.make_pass_decorator(CliState)
