"""The web dashboard in a real browser: headless Chromium (Debian's chromium and
chromium-driver, through Selenium) against `gpufleet web` serving a real fleet. Node rows, GPU
bars, a batch's progress and a job's result appear; a live update arrives; an action without
the token is refused and works once logged in; each page's screenshot is checked.

Skipped where Chromium or Selenium is missing, except under CI=true, where .ci/run installs
them and a missing one fails. With GPUFLEET_SCREENSHOT_DIR set, the fleet page's screenshot is
also written there (README's is made so).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gpufleet.dispatcher.client.results import read_progress
from gpufleet.dispatcher.client.submit import Submitter
from gpufleet.dispatcher.routing.models import JobSpec
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.redis_server import RedisServer
from gpufleet.worker.fleet import GPUFLEET, LocalFleet, SimNode

from .support import FAST_ENV, wait_until

NS = "webui"
KEYS = Keys(NS)
TOKEN = "browser-test-token"
SYNTHETIC = "gpufleet.worker.tasks:synthetic"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WIDTH, HEIGHT = 1280, 900


def _require_browser() -> Any:
    """Selenium's webdriver module, or a skip (a failure under CI=true)."""
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or not CHROMIUM or not CHROMEDRIVER:
        why = "headless Chromium needs selenium and Debian's chromium and chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: .ci/run installs them")
        pytest.skip(why)
    return webdriver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def site(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, str, str, Settings]]:
    """A fleet of two sim nodes with one finished batch (2 of 12 jobs failed), and `gpufleet
    web` serving it with a token: (redis, base URL, batch id, settings)."""
    _require_browser()
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    fleet = LocalFleet(redis_server.url, namespace=NS, env={**FAST_ENV, "GPUFLEET_HISTORY_BUCKET_S": "0.5"})
    port = free_port()
    web = None
    try:
        fleet.start_dispatcher()
        for node_id in ("b0", "b1"):
            fleet.start_worker(SimNode(node_id))
        fleet.wait_for_nodes(r, ["b0", "b1"])
        settings = Settings(redis_url=redis_server.url, namespace=NS)
        specs = [JobSpec(SYNTHETIC, {"cost": 0.0, "i": i, **({"fail": True} if i in (3, 4) else {})},
                         client_id=f"j{i}") for i in range(12)]  # fmt: skip
        batch = Submitter(r, settings).submit(specs, batch_id="browser-batch").batch_id
        wait_until(lambda: read_progress(r, KEYS, batch).done, 60, "the batch to end")
        web = subprocess.Popen([*GPUFLEET, "--redis-url", redis_server.url, "--namespace", NS, "web", "--port",
                                str(port), "--refresh", "0.5"],
                               env={**os.environ, **FAST_ENV, "GPUFLEET_WEB_TOKEN": TOKEN},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        wait_until(lambda: _listening(port), 20, "gpufleet web to listen")
        yield r, f"http://127.0.0.1:{port}", batch, settings
    finally:
        if web is not None:
            web.terminate()
            _, err = web.communicate(timeout=10)
            assert TOKEN.encode() not in err  # the token is in no log line
        fleet.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = _require_browser()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},{HEIGHT}"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, what: str, predicate: Any, timeout_s: float = 15.0) -> Any:
    """`predicate(driver)` once it is true; an element the page re-rendered meanwhile (every
    refresh rebuilds its tables) counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = predicate(driver)
        except StaleElementReferenceException:
            found = None
        if found:
            return found
        time.sleep(0.1)
    text = driver.find_element("tag name", "body").text[:500]
    raise AssertionError(f"{what} did not appear within {timeout_s} s; page text: {text}")


def css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements("css selector", selector))


def click(driver: Any, selector: str) -> None:
    """Click the first element `selector` finds, finding it again if a refresh replaced it."""
    def clicked(d: Any) -> bool:
        css(d, selector)[0].click()
        return True

    wait_for(driver, f"a click on {selector}", clicked)


def check_screenshot(driver: Any, path: Path) -> None:
    """Save the page's screenshot and check it is a real one: a PNG of the viewport's size (the
    window, less the browser's own bars), neither empty nor one flat colour (a flat image
    compresses to almost nothing)."""
    driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    viewport = driver.execute_script("return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio]")
    assert [width, height] == [round(x) for x in viewport] and width == WIDTH and height > HEIGHT / 2, (width, height)
    assert len(data) > 20_000, f"{len(data)} bytes: an empty page?"


def test_the_fleet_page_shows_nodes_gpu_bars_and_updates_live(
    site: tuple[redis.Redis, str, str, Settings], browser: Any, tmp_path: Path,
) -> None:
    _, base, _, _ = site
    browser.get(base + "/")
    rows = wait_for(browser, "two node rows", lambda d: len(css(d, "tr.node")) == 2 and css(d, "tr.node"))
    assert {row.get_attribute("data-node") for row in rows} == {"b0", "b1"}
    assert all("alive" in row.text for row in rows)
    assert len(css(browser, "tr.node .bar .fill")) >= 4  # a utilization and a memory bar per node
    count = int(browser.find_element("id", "updated").get_attribute("data-count"))
    wait_for(browser, "a refresh", lambda d: int(d.find_element("id", "updated").get_attribute("data-count")) > count)
    def charted(d: Any) -> bool:
        lines = css(d, "#chart-rate polyline")
        return bool(lines) and len(lines[0].get_attribute("points").split()) >= 2

    wait_for(browser, "the jobs/s chart", charted)
    check_screenshot(browser, tmp_path / "fleet.png")
    if out := os.environ.get("GPUFLEET_SCREENSHOT_DIR"):
        shutil.copy(tmp_path / "fleet.png", Path(out) / "web-fleet.png")


def test_a_new_batch_appears_live_and_a_batch_shows_its_progress_and_jobs(
    site: tuple[redis.Redis, str, str, Settings], browser: Any, tmp_path: Path,
) -> None:
    r, base, batch, settings = site
    browser.get(base + "/batches")
    wait_for(browser, "the batch row", lambda d: any(batch in row.text for row in css(d, "tr.batch")))
    newer = Submitter(r, settings).submit([JobSpec(SYNTHETIC, {"cost": 0.0})], batch_id="arrived-later").batch_id
    wait_for(browser, "the new batch, without a reload", lambda d: any(newer in row.text for row in css(d, "tr.batch")))

    browser.get(f"{base}/batches/{batch}")
    wait_for(browser, "the batch's progress", lambda d: "12 of 12 ended" in d.find_element("id", "progress").text)
    wait_for(browser, "its 12 jobs", lambda d: len(css(d, "tr.job")) == 12)
    check_screenshot(browser, tmp_path / "batch.png")
    browser.get(f"{base}/batches/{batch}?status=failed")
    failed = wait_for(browser, "the failed jobs", lambda d: len(css(d, "tr.job")) == 2 and css(d, "tr.job"))
    assert [row.text.split()[0] for row in failed] == ["j3", "j4"]


def test_a_job_page_shows_its_result(
    site: tuple[redis.Redis, str, str, Settings], browser: Any, tmp_path: Path,
) -> None:
    r, base, batch, _ = site
    job_id = r.lindex(KEYS.batch_jobs(batch), 0).decode()  # type: ignore[union-attr]
    browser.get(f"{base}/jobs/{job_id}")
    wait_for(browser, "the result", lambda d: '"i": 0' in d.find_element("id", "outcome").text)
    assert "finished" in browser.find_element("id", "job").text
    attempts = wait_for(browser, "the attempts", lambda d: len(css(d, "tr.event")) == 2 and css(d, "tr.event"))
    assert [row.text.split()[1] for row in attempts] == ["job_started", "job_finished"]
    check_screenshot(browser, tmp_path / "job.png")
    failed_id = r.lindex(KEYS.batch_jobs(batch), 3).decode()  # type: ignore[union-attr]
    browser.get(f"{base}/jobs/{failed_id}")
    wait_for(browser, "the traceback",
             lambda d: "RuntimeError: synthetic failure" in d.find_element("id", "outcome").text)


def test_an_action_is_refused_without_the_token_and_works_once_logged_in(
    site: tuple[redis.Redis, str, str, Settings], browser: Any,
) -> None:
    r, base, _, _ = site
    browser.get(base + "/")
    wait_for(browser, "b1's drain button", lambda d: css(d, 'tr.node[data-node="b1"] button'))
    click(browser, 'tr.node[data-node="b1"] button')
    wait_for(browser, "the refusal", lambda d: "refused" in d.find_element("id", "message").text)
    assert not r.exists(KEYS.drain_flag("b1"))

    browser.get(base + "/login")
    browser.find_element("name", "token").send_keys(TOKEN)
    browser.find_element("css selector", "form button").click()
    wait_for(browser, "the fleet page, logged in", lambda d: css(d, 'tr.node[data-node="b1"] button'))
    assert TOKEN not in browser.page_source
    click(browser, 'tr.node[data-node="b1"] button')
    wait_for(browser, "done", lambda d: "done" in d.find_element("id", "message").text)
    assert r.exists(KEYS.drain_flag("b1"))
    wait_for(browser, "b1 shown draining", lambda d: "draining" in css(d, 'tr.node[data-node="b1"]')[0].text)
    wait_for(browser, "the undrain button", lambda d: css(d, 'tr.node[data-node="b1"] button')[0].text == "undrain")
    click(browser, 'tr.node[data-node="b1"] button')
    wait_for(browser, "b1 undrained", lambda d: not r.exists(KEYS.drain_flag("b1")))
