"""Walks through the real app in headless Chromium: start ``streamlit run app.py``, open the Budget
page from the navigation, move the slider with the keyboard, click a LayerMerge point on the
frontier, pin it and see it tested after surgery; then the diffusion demo's Budget page.

Chromium is Debian's package, driven by Playwright with ``executable_path`` (``playwright install``
is never used: it downloads a browser). The fixture installs the package with apt-get when it is
missing and skips, saying why, only when that is impossible. The screenshot goes to the test's
temporary folder, and to docs/budget.png and docs/screenshot.png (the README's picture) when that
file is missing or LAYERMERGE_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "screenshot.png"  # the README's picture
BUDGET_SCREENSHOT = ROOT / "docs" / "budget.png"
CHROMIUM_ARGS = [
    "--no-sandbox",  # needed as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",  # no calls out
    "--disable-component-update",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"

pytestmark = pytest.mark.browser


def _install_chromium() -> str | None:
    """Install Debian's chromium if missing; the reason it cannot be, or None when it is there."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return "no /usr/bin/chromium and no apt-get to install it"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "no /usr/bin/chromium, and installing it needs root"
    for command in (
        ["apt-get", "install", "-y", "-qq", "chromium"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "chromium"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode == 0 and CHROMIUM.exists():
            return None
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    return f"apt-get could not install chromium: {tail[0]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    pytest.importorskip("playwright", reason="the playwright package is not installed")
    reason = _install_chromium()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ)
    env.setdefault("LAYERMERGE_APP_RUNS", str(tmp_path_factory.mktemp("app_runs")))
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"streamlit did not come up on port {port}:\n{output[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_idle(page: object) -> None:
    page.wait_for_timeout(300)  # let the rerun start before waiting for it to end
    page.wait_for_selector(IDLE, state="attached", timeout=120_000)


def _solution_text(page: object) -> str:
    summary = page.get_by_text(" segments · ").first
    latency = page.get_by_test_id("stMetric").first
    return f"{latency.inner_text()} | {summary.inner_text()}"


def _metric(page: object, label: str) -> str:
    return page.get_by_test_id("stMetric").filter(has_text=label).first.inner_text()


def _wait_tested(page: object) -> None:
    """Wait for the current solution's accuracy after surgery (a background job)."""
    deadline = time.monotonic() + 180
    while "testing" in _metric(page, "after surgery") and time.monotonic() < deadline:
        page.wait_for_timeout(1000)
    assert "%" in _metric(page, "after surgery"), _metric(page, "after surgery")
    _wait_idle(page)


def test_budget_page_walk(browser: object, server: str, tmp_path: Path) -> None:
    """Move the slider, click a LayerMerge point, pin it, see it tested after surgery."""
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(server)
    _wait_idle(page)
    page.get_by_role("link", name="Budget").click()
    _wait_idle(page)
    page.get_by_role("heading", name="Latency budget").wait_for(timeout=60_000)
    page.wait_for_selector("[data-testid='stSlider'], [data-testid='stAlert']", timeout=60_000)
    slider = page.get_by_role("slider")
    if slider.count() == 0:
        pytest.skip("the Budget page shows no slider: no tables for the digits demo yet")
    # the slider: one 1% step per key press, until the DP's answer changes
    before = _solution_text(page)
    slider.focus()
    changed = before
    for _ in range(40):
        page.keyboard.press("ArrowRight")
        _wait_idle(page)
        changed = _solution_text(page)
        if changed != before:
            break
    assert changed != before, f"the solution did not change: {before}"
    assert "method=layermerge" in page.url and "budget=" in page.url
    _wait_tested(page)  # a finished test redraws the page: click after it
    # a click on a fast LayerMerge point (the third trace: depth, layer, then LayerMerge on top)
    chart = page.get_by_test_id("stPlotlyChart").first
    points = chart.locator(".scatterlayer .trace").nth(2).locator(".point")
    assert points.count() > 5
    before = _solution_text(page)
    points.nth(points.count() - 3).click(force=True)
    _wait_idle(page)
    assert _solution_text(page) != before, "the click selected nothing"
    assert page.get_by_role("radio", name="layermerge").is_checked(), "the method changed"
    # pin it and a slower one; their tests after surgery arrive in the background
    _wait_tested(page)
    page.get_by_role("button", name="Pin this solution").click()
    _wait_idle(page)
    points = chart.locator(".scatterlayer .trace").nth(2).locator(".point")
    before = _solution_text(page)
    points.nth(points.count() // 3).click(force=True)
    _wait_idle(page)
    assert _solution_text(page) != before, "the second click selected nothing"
    assert page.get_by_role("radio", name="layermerge").is_checked()
    _wait_tested(page)
    page.get_by_role("button", name="Pin this solution").click()
    _wait_idle(page)
    pinned = page.get_by_test_id("stDataFrame").first
    pinned.wait_for(timeout=60_000)
    _wait_tested(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Pinned solution").click()
    options = page.get_by_role("option")
    assert options.count() == 2, [options.nth(i).inner_text() for i in range(options.count())]
    page.keyboard.press("Escape")
    page.get_by_role("heading", name="Latency budget").click()  # the focus leaves the select box
    assert page.get_by_test_id("stException").count() == 0
    page.mouse.move(5, 5)  # no tooltip in the picture
    page.wait_for_timeout(1500)  # plotly finishes drawing
    shot = tmp_path / "budget.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if not SCREENSHOT.exists() or os.environ.get("LAYERMERGE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, BUDGET_SCREENSHOT)
        shutil.copyfile(shot, SCREENSHOT)
    page.close()


def test_budget_page_renders_for_the_diffusion_demo(
    browser: object, server: str, tmp_path: Path
) -> None:
    """digits_unet chosen in the browser: its samples, then the Budget page with its own tables."""
    from core.families.unet.chain import trace_unet
    from core.families.unet.data import load_diffusion_data
    from core.families.unet.importance import UNetImportanceConfig, estimate_unet_importance
    from core.families.unet.latency import measure_unet_latency
    from core.families.unet.unet import build_unet
    from core.latency import LatencyConfig

    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(server)
    _wait_idle(page)
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name="digits_unet").click()
    page.get_by_role("button", name="Use this model").click()
    _wait_idle(page)
    page.get_by_test_id("stImage").first.wait_for(timeout=120_000)  # the sample grid
    page.get_by_role("link", name="Tables").click()
    _wait_idle(page)
    page.get_by_role("heading", name="Latency and importance tables").wait_for(timeout=60_000)
    missing = page.get_by_text("No tables for digits_unet")
    if missing.count():  # none ship that fit its weights: tiny ones where the app looks
        out = Path(re.search(r"\(written to (.+)\)\.", missing.first.inner_text()).group(1))
        bundle = build_unet("digits_unet")
        uchain = trace_unet(bundle.model)
        timing = LatencyConfig(batch=2, min_run_time=0.01, warmup_runs=0)
        measure_unet_latency(bundle, uchain, timing, out=out)
        importance = UNetImportanceConfig(steps=0, holdout_images=16)
        estimate_unet_importance(bundle, uchain, load_diffusion_data("digits"), importance, out=out)
    page.get_by_role("link", name="Budget").click()
    _wait_idle(page)
    page.get_by_role("heading", name="Latency budget").wait_for(timeout=60_000)
    page.get_by_role("slider").wait_for(timeout=60_000)
    page.get_by_role("button", name="Measure and sample the merged UNet").click()
    _wait_idle(page)
    page.get_by_test_id("stImage").nth(1).wait_for(timeout=120_000)  # original and merged grids
    assert page.get_by_test_id("stException").count() == 0
    page.wait_for_timeout(1000)  # plotly finishes drawing
    shot = tmp_path / "budget_unet.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()
