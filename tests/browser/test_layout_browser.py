"""Every page as a reader sees it, at 1400 px and 1000 px: nothing overflows, nothing is cut off,
count and layer axes start at their data, and every figure names what it encodes.

The pages that compute are driven with their cheapest settings (the default prompts on Live
inspection, CHES scoring of the shipped single-token set on Likelihood); the others are checked as
they open. Full-page screenshots go to artifacts/screenshots/layout-<page>-<width>.png (the README's
come from there).
"""

from __future__ import annotations

import pytest
from browser_wait import rerun, wait_idle
from layout_checks import axis_problems, figure_problems, overflow_problems

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

MODEL_LOAD_MS = 240_000
WIDTHS = (1400, 1000)


def _live_inspection(page) -> None:
    with rerun(page, MODEL_LOAD_MS):
        page.get_by_role("button", name="Run inspection").click()
    page.locator(".js-plotly-plot").filter(has_text="Logit lens").first.wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)


def _likelihood(page) -> None:
    with rerun(page, MODEL_LOAD_MS):
        page.locator(".st-key-lik_run_rank button").click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)


PAGES = [
    ("", "RepScope", None),
    ("live_inspection", "Live inspection", _live_inspection),
    ("likelihood", "Likelihood displacement", _likelihood),
    ("steering", "Steering", None),
    ("compare", "Compare two model states", None),
    ("methods", "Methods", None),
]


@pytest.mark.parametrize("path,heading,action", PAGES, ids=[p[0] or "home" for p in PAGES])
def test_page_is_readable_at_both_widths(app_server, browser, screenshots, path, heading, action):
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{app_server.url}/{path}")
        page.get_by_role("heading", name=heading).first.wait_for(timeout=MODEL_LOAD_MS)
        wait_idle(page, MODEL_LOAD_MS)
        if action is not None:
            action(page)
        problems = []
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 1000})
            wait_idle(page)
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=30_000)
            page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                   ".every(el => !!el._fullLayout)", timeout=30_000)
            shown = page.locator('[data-testid="stException"]')
            assert shown.count() == 0, shown.first.inner_text()
            problems += [f"{width}px: {p}" for p in overflow_problems(page) + axis_problems(page)
                         + figure_problems(page)]
            # Streamlit scrolls inside its main block, so a full-page shot needs a viewport as tall as the page.
            tall = page.evaluate("() => (document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight")
            page.set_viewport_size({"width": width, "height": min(int(tall) + 40, 6000)})
            wait_idle(page)
            # Elements that scroll into view render lazily (a grey skeleton first): shoot when all are drawn.
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=30_000)
            page.screenshot(path=str(screenshots / f"layout-{path or 'home'}-{width}.png"), full_page=True)
        assert problems == [], "\n".join(problems)
    finally:
        context.close()
