"""User-level checks in a real browser against ``streamlit run app/main.py``.

Marked ``browser`` and ``real_model``: the server loads the offline default
model on the first page view (tens of seconds on a busy CPU box).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from browser_wait import rerun, wait_idle

from analysis.gguf_convert import GEMMA_NOTICE

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

MODEL_LOAD_MS = 240_000  # cold model load on a shared 2-core box
ROOT = Path(__file__).resolve().parents[2]


def _wait_for_app(page) -> None:
    """The Streamlit frame is up and no script run is in progress."""
    wait_idle(page, MODEL_LOAD_MS)


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
    with rerun(page):
        field.fill("no-such-org/no-such-model")
        field.press("Enter")
    with rerun(page, MODEL_LOAD_MS):
        page.get_by_role("button", name="Load").click()
    error = page.locator('[data-testid="stAlertContentError"]')
    error.first.wait_for(timeout=60_000)
    assert "no-such-org/no-such-model" in error.first.inner_text()
    page.get_by_text("Kept the previous model").wait_for(state="visible", timeout=60_000)
    page.locator('[data-testid="stMetric"]').filter(has_text="Layers").wait_for(state="visible", timeout=60_000)
    _no_exceptions(page)


# ---------------------------------------------------------------- live inspection

PROMPTS_TXT = b"The capital of France is Paris, and the capital of Italy is\nOne, two, three, four,\n"
NORMS_KEY = "inspect-residual_norms"  # pages/live_inspection.py: render_figure key of the heatmap


def _open_live_inspection(app_server, page) -> None:
    if not (ROOT / "pages" / "live_inspection.py").is_file():
        pytest.fail("pages/live_inspection.py does not exist")
    page.goto(f"{app_server.url}/live_inspection")
    page.get_by_role("heading", name="Live inspection").wait_for(timeout=MODEL_LOAD_MS)
    page.get_by_role("button", name="Run inspection").wait_for(timeout=MODEL_LOAD_MS)
    _wait_for_app(page)


def _upload(page, name: str, data: bytes, mime: str = "text/plain") -> None:
    # The uploader sits inside the page's form: choosing a file causes no rerun until the form is submitted.
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}]
    )
    page.locator('[data-testid="stFileChip"]').filter(has_text=name).wait_for(timeout=30_000)


def _norms_heatmap(page):
    return page.locator(".js-plotly-plot").filter(has_text="Residual-stream norm")


def test_live_inspection_upload_heatmap_and_svg_download(app_server, page, screenshots, tmp_path):
    _open_live_inspection(app_server, page)
    _upload(page, "prompts.txt", PROMPTS_TXT)
    with rerun(page, MODEL_LOAD_MS):
        page.get_by_role("button", name="Run inspection").click()
    heatmap = _norms_heatmap(page)
    heatmap.wait_for(timeout=MODEL_LOAD_MS)
    _wait_for_app(page)
    _no_exceptions(page)
    assert page.get_by_text("Inspecting prompt 1").first.is_visible()

    # A download button with a tooltip is drawn twice (one copy hidden): take the visible one.
    svg_button = page.locator(f".st-key-{NORMS_KEY}-svg button:visible")
    t0 = time.perf_counter()
    with page.expect_download(timeout=180_000) as info:
        svg_button.click()
    download = info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    print(f"\n[timing] SVG export of the residual-norm heatmap: {time.perf_counter() - t0:.1f}s")
    assert target.suffix == ".svg"
    root = ET.parse(target).getroot()
    assert root.tag.endswith("svg"), root.tag
    assert target.stat().st_size > 1000

    # Tall enough for the form, the prompt table and the whole heatmap with its buttons.
    page.set_viewport_size({"width": 1400, "height": 1750})
    page.get_by_role("heading", name="Live inspection").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "live_inspection.png"))


def test_live_inspection_binary_upload_shows_error_then_works(app_server, page):
    _open_live_inspection(app_server, page)
    _upload(page, "garbage.txt", bytes(range(256)) * 8)
    with rerun(page):
        page.get_by_role("button", name="Run inspection").click()
    error = page.locator('[data-testid="stAlertContentError"]').filter(has_text="garbage.txt")
    error.first.wait_for(timeout=60_000)
    _wait_for_app(page)
    _no_exceptions(page)
    # Still usable: replace the file with a good one and run again.
    page.locator('[data-testid="stFileChipDeleteBtn"] button').first.click()  # inside the form: no rerun
    _upload(page, "prompts.txt", PROMPTS_TXT)
    with rerun(page, MODEL_LOAD_MS):
        page.get_by_role("button", name="Run inspection").click()
    _norms_heatmap(page).wait_for(timeout=MODEL_LOAD_MS)
    _wait_for_app(page)
    assert page.locator('[data-testid="stAlertContentError"]').filter(has_text="garbage.txt").count() == 0
    _no_exceptions(page)
