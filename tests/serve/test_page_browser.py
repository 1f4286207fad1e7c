"""The web page in a real headless Chromium (Debian's, driven by Playwright) against a live server:
it loads offline, search finds items, clicking builds a history and the models' lists change;
for a user, clicking posts an event and the history-based lists change without retraining."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from recstack.serve.app import create_app
from serve_run import tiny_run

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _playwright():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: the browser test needs Debian's Chromium: "
                    "`apt-get install -y --no-install-recommends chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright: `pip install playwright` (no `playwright install`: "
                    "it uses /usr/bin/chromium)")
    return sync_playwright


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app under uvicorn in a thread, on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(tiny_run(), events=tmp_path_factory.mktemp("events") / "events.sqlite")
    live = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    live.should_exit = True
    thread.join(timeout=10)


def _lists(page) -> dict[str, list[str]]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.model-column')].map(
        c => [c.dataset.model, [...c.querySelectorAll('li')].map(li => li.dataset.item)]))""")


def _wait_refresh(page, before: int) -> None:
    page.wait_for_function(f"Number(document.body.dataset.refreshed || 0) > {before}", timeout=15_000)


def _refreshed(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.refreshed || 0)"))


def test_search_click_and_watch_the_lists_change(server, tmp_path):
    sync_playwright = _playwright()
    outside, errors = [], []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                       args=ARGS, headless=True)
        try:
            def route(request_route):
                if request_route.request.url.startswith(server):
                    request_route.continue_()
                else:  # the page must work offline: anything else is recorded and refused
                    outside.append(request_route.request.url)
                    request_route.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server + "/", wait_until="load")
            page.wait_for_function("document.querySelectorAll('.model-column').length === 5", timeout=15_000)
            empty = _lists(page)
            assert set(empty) == {"pop", "itemknn", "ease", "bpr", "sasrec"}
            assert page.locator(".model-column[data-model=ease] .fallback").count() == 1  # no history yet

            page.fill("#search", "Movie 7")
            page.wait_for_function("document.querySelector('#results li') && "
                                   "document.querySelector('#results li').dataset.item === '7'", timeout=10_000)
            before = _refreshed(page)
            page.click("#results li[data-item='7']")
            _wait_refresh(page, before)
            assert page.locator("#history li").count() == 1
            first = _lists(page)
            assert page.locator(".model-column[data-model=ease] .fallback").count() == 0
            assert "7" not in first["ease"] and len(first["ease"]) == 10
            assert page.locator(".model-column[data-model=ease] .why").count() > 0  # because you liked Movie 7
            assert page.locator(".model-column[data-model=bpr] .fallback").count() == 1  # cannot score a new user

            before = _refreshed(page)
            page.click(f".model-column[data-model=itemknn] li[data-item='{first['itemknn'][0]}']")
            _wait_refresh(page, before)
            second = _lists(page)
            assert page.locator("#history li").count() == 2 and second["ease"] != first["ease"]

            # a user of the run: a click posts an event, and the next lists already exclude it
            before = _refreshed(page)
            page.fill("#user", "5")
            page.press("#user", "Enter")
            _wait_refresh(page, before)
            user_lists = _lists(page)
            top = user_lists["itemknn"][0]
            before = _refreshed(page)
            page.click(f".model-column[data-model=itemknn] li[data-item='{top}']")
            _wait_refresh(page, before)
            assert top not in _lists(page)["itemknn"]
            assert "1 new" in page.inner_text("#history-count")
            assert page.inner_text("#error") == ""
        finally:
            context.close()
    assert not errors and not outside
    assert httpx.get(f"{server}/v1/users/5").json()["new_events"] == 1
