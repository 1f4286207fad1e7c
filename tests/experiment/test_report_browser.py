"""report.html in a real headless browser: every chart draws, nothing errors, nothing is fetched.

Chromium comes from the distribution (`apt-get install chromium`), driven by Playwright
(`pip install playwright`; no `playwright install`, which downloads a browser from a CDN).
Missing either fails the test with the command to run: it is never skipped.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from recstack.experiment import run_experiment
from test_run import config_for, write_parts

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODELS = [{"name": "pop"}, {"name": "itemknn"},
          {"name": "bpr", "params": {"epochs": 3, "verbose": False, "embedding_size": 8}}]


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
def run_dir(tmp_path_factory) -> Path:
    parts = write_parts(tmp_path_factory.mktemp("data") / "tiny")
    config = config_for(parts, tmp_path_factory.mktemp("runs"), models=MODELS)
    return run_experiment(config, progress=False).run_dir


def _open(run_dir: Path, profile: Path, *, javascript: bool = True, screenshot: Path | None = None):
    """Load report.html; returns (page facts, console messages, page errors, non-file requests)."""
    sync_playwright = _playwright()
    console, errors, requests = [], [], []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True,
            java_script_enabled=javascript, viewport={"width": 1100, "height": 900})
        try:
            def route(request_route):
                url = request_route.request.url
                if url.startswith("file://"):
                    request_route.continue_()
                else:  # the report must open offline: anything else is recorded and refused
                    requests.append(url)
                    request_route.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda message: console.append((message.type, message.text)))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto((run_dir / "report.html").resolve().as_uri(), wait_until="load")
            facts = page.evaluate("""() => {
                const figures = [...document.querySelectorAll('figure.chart')];
                return figures.map(f => {
                    const plot = f.querySelector('.js-plotly-plot');
                    const img = f.querySelector('img');
                    return {
                        key: f.dataset.chart,
                        svgs: f.querySelectorAll('.js-plotly-plot .main-svg').length,
                        traces: plot && plot.data ? plot.data.length : 0,
                        drawn: f.querySelectorAll('.js-plotly-plot .trace').length,
                        marks: f.querySelectorAll('.js-plotly-plot .point, .js-plotly-plot .js-line').length,
                        img: img ? {w: img.naturalWidth, h: img.naturalHeight, complete: img.complete} : null,
                    };
                });
            }""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    return facts, console, errors, requests


def test_every_chart_draws_without_errors_offline(run_dir, tmp_path):
    page = (run_dir / "report.html").read_text()
    keys = re.findall(r'<figure class="chart" data-chart="([^"]+)"', page)
    for key in ("leaderboard", "k_NDCG", "k_Recall", "accuracy_fairness", "accuracy_novelty", "popularity_bias",
                "slice_user_activity", "slice_item_popularity", "train_loss"):
        assert key in keys, key
    assert page.count("plotly.js v") <= 2  # plotly.js inlined once (its banner names the version)

    facts, console, errors, requests = _open(run_dir, tmp_path / "profile", screenshot=tmp_path / "report.png")
    assert [f["key"] for f in facts] == keys
    for fact in facts:
        assert fact["svgs"] >= 1, fact  # plotly drew its SVG layers
        assert fact["traces"] >= 1 and fact["drawn"] >= 1 and fact["marks"] >= 1, fact
    by_key = {f["key"]: f for f in facts}
    assert by_key["leaderboard"]["traces"] == 1
    assert by_key["popularity_bias"]["traces"] == len(MODELS) + 1  # one line per model and the diagonal
    assert not errors, errors
    assert not [text for kind, text in console if kind == "error"], console
    assert not requests, requests  # nothing but the file itself (and its local PNGs) was requested
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_static_fallback_without_javascript(run_dir, tmp_path):
    facts, console, errors, requests = _open(run_dir, tmp_path / "profile", javascript=False)
    assert facts and not errors and not requests
    for fact in facts:
        assert fact["svgs"] == 0  # no script ran
        assert fact["img"] is not None and fact["img"]["complete"], fact  # the <noscript> PNG
        assert fact["img"]["w"] > 100 and fact["img"]["h"] > 100, fact


def test_a_missing_chromium_fails_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y --no-install-recommends chromium"):
        _playwright()
