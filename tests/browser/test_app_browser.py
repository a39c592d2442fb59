"""User-level checks in a real browser against ``streamlit run app/main.py``.

Marked ``browser`` and ``real_model``: the server loads the offline default
model on the first page view (tens of seconds on a busy CPU box).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from analysis.gguf_convert import GEMMA_NOTICE

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

MODEL_LOAD_MS = 240_000  # cold model load on a shared 2-core box
ROOT = Path(__file__).resolve().parents[2]


def _wait_for_app(page) -> None:
    """The Streamlit frame is up and no script run is in progress."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=MODEL_LOAD_MS)


def _no_exceptions(page) -> None:
    shown = page.locator('[data-testid="stException"]')
    assert shown.count() == 0, shown.first.inner_text()


def test_home_shows_model_facts_and_gemma_notice(app_server, page, screenshots):
    t0 = time.perf_counter()
    page.goto(app_server.url)
    page.get_by_role("heading", name="RepScope").wait_for(timeout=60_000)
    first_paint = time.perf_counter()
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Layers")
    metric.wait_for(timeout=MODEL_LOAD_MS)
    loaded = time.perf_counter()
    print(
        f"\n[timing] cold start: first rendered page {first_paint - app_server.started:.1f}s after launch "
        f"({first_paint - t0:.1f}s after navigation); model facts {loaded - app_server.started:.1f}s after launch"
    )
    _wait_for_app(page)
    assert "18" in metric.inner_text()
    assert "640" in page.locator('[data-testid="stMetric"]').filter(has_text="d_model").inner_text()
    main_notice = page.locator('[data-testid="stMain"]').get_by_text(GEMMA_NOTICE[:40])
    assert main_notice.first.is_visible()
    assert page.locator('[data-testid="stSidebar"]').get_by_text(GEMMA_NOTICE[:40]).first.is_visible()
    assert page.locator('[data-testid="stDownloadButton"]').filter(has_text="Gemma Terms").count() == 1
    _no_exceptions(page)
    # Streamlit scrolls inside its main block, so full_page cannot grow past the viewport.
    page.set_viewport_size({"width": 1400, "height": 1250})
    page.screenshot(path=str(screenshots / "home.png"))


def test_home_bad_model_name_shows_error_and_keeps_model(app_server, page):
    page.goto(app_server.url)
    page.locator('[data-testid="stMetric"]').filter(has_text="Layers").wait_for(timeout=MODEL_LOAD_MS)
    _wait_for_app(page)
    field = page.get_by_role("textbox", name="…or any TransformerLens", exact=False)
    field.fill("no-such-org/no-such-model")
    field.press("Enter")
    page.get_by_role("button", name="Load").click()
    error = page.locator('[data-testid="stAlertContentError"]')
    error.first.wait_for(timeout=60_000)
    assert "no-such-org/no-such-model" in error.first.inner_text()
    _wait_for_app(page)
    assert page.get_by_text("Kept the previous model").is_visible()
    assert page.locator('[data-testid="stMetric"]').filter(has_text="Layers").is_visible()
    _no_exceptions(page)
