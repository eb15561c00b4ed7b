"""`submit --notify URL`: where a batch's summary is POSTed when it ends.

The URL goes in the batch HASH (events.BatchField.NOTIFY_URL); the dispatcher's notifier
(observe/notifier.py) sends the summary. Only http and https URLs with a host are accepted.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis import Redis

from ..errors import NotFound, SettingsError
from ..store.keys import Keys
from ..store.scripts import Scripts


def notify_url_problem(url: str) -> str | None:
    """Why `url` cannot receive a batch's summary, or None when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number in range
    except ValueError as e:
        return f"--notify {url!r} is not a URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--notify {url!r} must be an http:// or https:// URL with a host, e.g. https://hooks.example.com/batch"
    return None


def check_notify_url(url: str) -> str:
    """`url`, or SettingsError saying why it cannot be one."""
    if (why := notify_url_problem(url)) is not None:
        raise SettingsError(why)
    return url


def set_notify(r: Redis, keys: Keys, batch_id: str, url: str) -> None:
    """POST the batch's summary to `url` when it ends; a batch that has ended already gets its
    summary sent now (see lua/set_notify.lua). NotFound when there is no such batch."""
    if not Scripts(r, keys).set_notify(batch_id, check_notify_url(url)):
        raise NotFound(f"no batch {batch_id!r}")
