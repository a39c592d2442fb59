"""The Concepts and Bias pages in a real browser, kept cheap for CI on 2 cores.

Every cost cap is set through the pages' own widgets (max texts, a narrow layer
range, one random-split run, the minimum bootstrap/permutation counts). The
server runs with a throw-away ``REPSCOPE_WORKSPACE`` (conftest ``workspace``),
so the uploaded concept set never reaches the user's workspace.
"""

from __future__ import annotations

import time

import pytest
from browser_wait import rerun, set_number, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

MODEL_LOAD_MS = 240_000  # cold model load on a shared 2-core box
RUN_MS = 300_000  # one capped analysis run on a busy 2-core box

WEATHER = [
    "It is raining heavily this morning.",
    "The sun is shining and the sky is clear.",
    "A cold wind is blowing from the north.",
    "Snow fell all night and covered the roads.",
    "The forecast says thunderstorms this afternoon.",
    "Thick fog rolled in over the harbour.",
    "It is hot and humid today.",
    "Light drizzle is falling on the town.",
    "The temperature dropped below freezing overnight.",
    "A rainbow appeared after the shower.",
    "Hail stones bounced off the car roof.",
    "The clouds are dark and heavy with rain.",
    "It is a mild and breezy spring day.",
    "The heatwave will last until the weekend.",
    "Frost covered the grass at dawn.",
    "Strong gusts knocked over the garden chairs.",
    "The weather turned stormy by the evening.",
    "There is a chance of sleet tomorrow.",
    "The morning was grey, damp and chilly.",
    "Lightning flashed across the night sky.",
]
CONCEPT = "weather_talk"


def _wait_for_app(page, timeout: int = MODEL_LOAD_MS) -> None:
    """The Streamlit frame is up and no script run is in progress."""
    wait_idle(page, timeout)


def _shows(page, key: str, text: str, timeout: int = 30_000) -> None:
    """The widget ``key`` shows ``text`` (a selectbox keeps its value in an input; it may load lazily)."""
    page.wait_for_function(
        """([key, text]) => {
            const el = document.querySelector(`.st-key-${key}`);
            return !!el && (el.innerText.includes(text)
                            || [...el.querySelectorAll('input')].some(i => i.value.includes(text)));
        }""",
        arg=[key, text], timeout=timeout,
    )


def _no_errors(page) -> None:
    for testid in ("stException", "stAlertContentError"):
        shown = page.locator(f'[data-testid="{testid}"]')
        assert shown.count() == 0, shown.first.inner_text()


def _open(app_server, page, path: str, heading: str) -> None:
    page.goto(f"{app_server.url}/{path}")
    page.get_by_role("heading", name=heading).wait_for(timeout=MODEL_LOAD_MS)
    _wait_for_app(page)


def _expand(page, label: str) -> None:
    page.locator('[data-testid="stExpander"] summary').filter(has_text=label).click()


def test_concepts_upload_and_fit(app_server, page, screenshots, tmp_path, workspace):
    t0 = time.perf_counter()
    _open(app_server, page, "concepts", "Concepts")

    # Upload a one-concept .txt and save it to the (temporary) workspace.
    concept_file = tmp_path / f"{CONCEPT}.txt"
    concept_file.write_text("\n".join(WEATHER) + "\n")
    _expand(page, "Upload or remove your own concept sets")
    with rerun(page):
        page.locator('.st-key-concepts_upload input[type="file"]').set_input_files(str(concept_file))
    page.locator('[data-testid="stFileChip"]').filter(has_text=concept_file.name).wait_for(timeout=30_000)
    with rerun(page):
        page.locator(".st-key-concepts_save button").click()
    page.locator('[data-testid="stAlertContentSuccess"]').filter(
        has_text=f"Saved {CONCEPT} ({len(WEATHER)} texts)").wait_for(timeout=60_000)
    _wait_for_app(page)
    assert (workspace / "concepts" / f"{CONCEPT}.yaml").is_file()
    _shows(page, "concepts_delete_pick", CONCEPT)

    # Concepts: drop the default negative_sentiment (last chip), add ours -> positive_sentiment + weather_talk.
    pick = page.locator(".st-key-concepts_pick")
    with rerun(page):
        pick.locator("input").click()
        pick.locator("input").press("Backspace")
    pick.locator("input").click()
    pick.locator("input").fill("weather")
    with rerun(page):
        page.get_by_role("option", name=f"{CONCEPT} ({len(WEATHER)}, yours)").click()
    page.keyboard.press("Escape")
    _wait_for_app(page)
    shown = pick.inner_text()
    assert "positive_sentiment" in shown and CONCEPT in shown and "negative_sentiment" not in shown, shown

    # Layers 4..8 with the keyboard: the right thumb first, then the left.
    # Widgets below the fold load lazily (a skeleton until scrolled into view).
    page.locator(".st-key-concepts_layers").scroll_into_view_if_needed()
    thumbs = page.locator('.st-key-concepts_layers input[type="range"]')
    top = int(thumbs.nth(1).input_value())
    with rerun(page):
        thumbs.nth(1).focus()
        for _ in range(top - 8):
            page.keyboard.press("ArrowLeft")
        thumbs.nth(0).focus()
        for _ in range(4):
            page.keyboard.press("ArrowRight")
        thumbs.nth(0).blur()
    _wait_for_app(page)
    assert [thumbs.nth(i).input_value() for i in (0, 1)] == ["4", "8"]

    set_number(page, "concepts_random", 1)
    set_number(page, "concepts_max", 20)
    _no_errors(page)

    t_run = time.perf_counter()
    page.locator(".st-key-concepts_run").scroll_into_view_if_needed()
    with rerun(page, RUN_MS):
        page.locator(".st-key-concepts_run button").click()
    figure = page.locator(".js-plotly-plot").filter(has_text="CAV held-out accuracy by layer")
    figure.wait_for(timeout=RUN_MS)
    t_fig = time.perf_counter()
    _wait_for_app(page, RUN_MS)  # the projection and the SAE panel below finish too
    t_done = time.perf_counter()
    print(f"\n[timing] concepts: ready {t_run - t0:.1f}s, accuracy figure {t_fig - t_run:.1f}s after Run, "
          f"whole page {t_done - t_run:.1f}s after Run")
    _no_errors(page)
    assert figure.filter(has_text=CONCEPT).count() == 1  # its legend entry
    assert figure.locator(".xtick").count() >= 2

    page.set_viewport_size({"width": 1400, "height": 1600})
    page.get_by_role("heading", name="Concepts").scroll_into_view_if_needed()
    figure.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "concepts.png"))


def test_bias_compute_heatmap_and_pdf_download(app_server, page, screenshots, tmp_path):
    t0 = time.perf_counter()
    _open(app_server, page, "bias", "Bias asymmetry")
    # The default preset is the first one: review aspects x sentiment.
    _shows(page, "bias_preset", "Review aspects")
    _expand(page, "Estimation")
    set_number(page, "bias_cap", 12)
    set_number(page, "bias_boot", 20)  # the inputs' minimums
    set_number(page, "bias_perm", 19)
    _no_errors(page)

    t_run = time.perf_counter()
    page.locator(".st-key-bias_run").scroll_into_view_if_needed()
    with rerun(page, RUN_MS):
        page.locator(".st-key-bias_run button").click()
    heatmap = page.locator(".js-plotly-plot").filter(has_text="Bias per layer")
    heatmap.wait_for(timeout=RUN_MS)
    _wait_for_app(page, RUN_MS)
    t_fig = time.perf_counter()
    _no_errors(page)

    # A download button with a tooltip is drawn twice (one copy hidden): take the visible one.
    page.locator(".st-key-bias_heatmap-pdf").scroll_into_view_if_needed()
    pdf_button = page.locator(".st-key-bias_heatmap-pdf button:visible")
    with page.expect_download(timeout=180_000) as info:
        pdf_button.click()
    download = info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    t_pdf = time.perf_counter()
    print(f"\n[timing] bias: ready {t_run - t0:.1f}s, heatmap {t_fig - t_run:.1f}s after Compute, "
          f"PDF export {t_pdf - t_fig:.1f}s")
    assert target.name == "review_sentiment_dense_heatmap.pdf"
    assert target.read_bytes()[:4] == b"%PDF"
    assert target.stat().st_size > 1000
    _no_errors(page)

    page.set_viewport_size({"width": 1400, "height": 1600})
    heatmap.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "bias.png"))
