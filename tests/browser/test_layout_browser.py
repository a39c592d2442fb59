"""Every page as a reader sees it, at 1400 px and 1000 px: nothing overflows, nothing is cut off,
count and layer axes start at their data, and every figure names what it encodes.

The pages that compute are driven with their cheapest settings (the default prompts on Live
inspection, CHES scoring of the shipped single-token set on Likelihood, the default vector and
α sweep on Steering, one random split and 20
texts per concept on Concepts, 12 texts per concept and the minimum resample counts on Bias); the
others are checked as they open. A page with tabs is checked and shot once per tab that holds a
figure. Full-page screenshots go to artifacts/screenshots/layout-<page>[-<tab>]-<width>.png (the
README's come from there).

``test_pages_survive_a_second_visit`` goes from page to page and back in one browser session: a
page that kept state from its first visit must not raise on the second.
"""

from __future__ import annotations

import time

import pytest
from browser_wait import rerun, set_number, wait_idle
from layout_checks import axis_problems, figure_problems, overflow_problems

from analysis.bias import load_presets
from analysis.concepts import load_concepts

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

MODEL_LOAD_MS = 240_000
WIDTHS = (1400, 1000)


def _live_inspection(page):
    with rerun(page, MODEL_LOAD_MS):
        page.get_by_role("button", name="Run inspection").click()
    page.locator(".js-plotly-plot").filter(has_text="Logit lens").first.wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)


def _likelihood(page):
    with rerun(page, MODEL_LOAD_MS):
        page.locator(".st-key-lik_run_rank button").click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)


def _steering(page):
    """The default vector on the shipped sentiment pairs, then the page's α sweep (three panels with
    subplot titles under the figure's title)."""
    with rerun(page, MODEL_LOAD_MS):
        page.locator(".st-key-steer_build button").click()
    page.locator(".st-key-steer_sweep").scroll_into_view_if_needed()
    with rerun(page, MODEL_LOAD_MS):
        page.locator(".st-key-steer_sweep button").click()
    page.locator(".js-plotly-plot").filter(has_text="Steering strength sweep").wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)


def _concepts(page):
    """The default two concepts over every layer (the accuracy axis must start at layer 0), with one
    random split and 20 texts per concept; the SAE panel below computes with its defaults."""
    set_number(page, "concepts_random", 1)
    set_number(page, "concepts_max", 20)
    page.locator(".st-key-concepts_run").scroll_into_view_if_needed()
    with rerun(page, MODEL_LOAD_MS):
        page.locator(".st-key-concepts_run button").click()
    page.locator(".js-plotly-plot").filter(has_text="CAV held-out accuracy").wait_for(timeout=MODEL_LOAD_MS)
    page.locator(".js-plotly-plot").filter(has_text="SAE latents of").wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)
    # The concept-latent bars name each latent by id and its top tokens, on a categorical axis.
    ticks = page.evaluate("""() => {
        const el = [...document.querySelectorAll('.js-plotly-plot')].find(p => (p._fullLayout.title.text || '')
                                                                         .includes('SAE latents of'));
        return {type: el._fullLayout.yaxis.type, y: Array.from(el._fullData[0].y)};
    }""")
    assert ticks["type"] == "category", ticks
    assert all(t.startswith("#") and ":" in t for t in ticks["y"]), ticks["y"][:5]


def _bias(page):
    """The first preset with 12 texts per concept and the minimum bootstrap and permutation counts."""
    preset = next(iter(load_presets().values()))
    sets = load_concepts()
    page.locator('[data-testid="stExpander"] summary').filter(has_text="Estimation").click()
    set_number(page, "bias_cap", 12)
    set_number(page, "bias_boot", 20)
    set_number(page, "bias_perm", 19)
    # Before Compute the info line counts the texts the cap lets through, not every text of the sets.
    used = sum(min(12, len(sets[c])) for c in (*preset.targets, preset.ref1, preset.ref2))
    info = page.locator('[data-testid="stAlertContentInfo"]').filter(has_text="Press Compute bias")
    assert f"{used} concept texts" in info.inner_text(), info.inner_text()
    page.locator(".st-key-bias_run").scroll_into_view_if_needed()
    with rerun(page, MODEL_LOAD_MS):
        page.locator(".st-key-bias_run button").click()
    page.locator(".js-plotly-plot").filter(has_text="Bias per layer").wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)
    # The summary says in words, per target, what its permutation test concludes: under its bar, and in a list.
    ticks = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
        .filter(p => (p._fullLayout.title.text || '').startsWith('Summary Bias'))
        .flatMap(p => p._fullData.flatMap(t => Array.from(t.y || [])))""")
    listed = page.locator('[data-testid="stMarkdownContainer"] li').all_text_contents()
    for target in preset.targets:
        tick = next((t for t in ticks if t.startswith(target.replace("_", " ") + "<br>")), "")
        assert tick.split("<br>")[1:2] in (["significant"], ["not significant"]), (target, ticks)
        assert any(li.startswith(f"{target}: ") and "significant" in li for li in listed), (target, listed)


def _tab(name):
    def show(page):
        page.get_by_role("tab", name=name).click()
        page.locator('[role="tabpanel"]:visible .js-plotly-plot').first.wait_for(timeout=30_000)
    return show


# path, heading, the action that computes (None: checked as it opens), the tabs shown in turn ("" = as it opens)
PAGES = [
    ("", "RepScope", None, ()),
    ("live_inspection", "Live inspection", _live_inspection, ()),
    ("likelihood", "Likelihood displacement", _likelihood, ()),
    ("concepts", "Concepts", _concepts, ()),
    ("bias", "Bias asymmetry", _bias, (("summary", _tab("Summary")), ("latents", _tab("Shared SAE latents")))),
    ("steering", "Steering", _steering, ()),
    ("compare", "Compare two model states", None, ()),
    ("methods", "Methods", None, ()),
]


def _settle(page) -> None:
    wait_idle(page)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=30_000)
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                           ".every(el => !!el._fullLayout)", timeout=30_000)
    # Plotly relays a responsive figure out some time after a viewport change: check once every
    # figure's laid-out width has held still for 300 ms (a check before that sees the old width)
    sizes = None
    for _ in range(40):
        now = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                            ".map(el => [el._fullLayout.width, Math.round(el.getBoundingClientRect().width)])")
        if now == sizes:
            break
        sizes = now
        page.wait_for_timeout(300)


def _no_exception(page, where: str, errors: bool = False) -> None:
    """No exception box (and, with ``errors``, no error message either) is on the page."""
    for testid in ("stException", "stAlertContentError") if errors else ("stException",):
        shown = page.locator(f'[data-testid="{testid}"]')
        assert shown.count() == 0, f"{where}: {shown.first.inner_text()}"


@pytest.mark.parametrize("path,heading,action,tabs", PAGES, ids=[p[0] or "home" for p in PAGES])
def test_page_is_readable_at_both_widths(app_server, browser, screenshots, path, heading, action, tabs):
    t0 = time.perf_counter()
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{app_server.url}/{path}")
        page.get_by_role("heading", name=heading).first.wait_for(timeout=MODEL_LOAD_MS)
        wait_idle(page, MODEL_LOAD_MS)
        if action is not None:
            action(page)
        t_computed = time.perf_counter()
        problems = []
        for suffix, show in (("", None), *tabs):
            if show is not None:
                page.set_viewport_size({"width": WIDTHS[0], "height": 1000})
                show(page)
            name = "-".join(filter(None, (path or "home", suffix)))
            for width in WIDTHS:
                page.set_viewport_size({"width": width, "height": 1000})
                _settle(page)
                _no_exception(page, name)
                problems += [f"{name} {width}px: {p}" for p in overflow_problems(page) + axis_problems(page)
                             + figure_problems(page)]
                # Streamlit scrolls inside its main block, so a full-page shot needs a viewport as tall as the page.
                tall = page.evaluate("() => (document.querySelector('[data-testid=\"stMain\"]') || document.body)"
                                     ".scrollHeight")
                page.set_viewport_size({"width": width, "height": min(int(tall) + 40, 10_000)})
                wait_idle(page)
                # Elements that scroll into view render lazily (a grey skeleton first): shoot when all are drawn.
                page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')",
                                       timeout=30_000)
                page.screenshot(path=str(screenshots / f"layout-{name}-{width}.png"), full_page=True)
        print(f"\n[timing] layout {path or 'home'}: computed {t_computed - t0:.1f}s, "
              f"checked {time.perf_counter() - t_computed:.1f}s")
        assert problems == [], "\n".join(problems)
    finally:
        context.close()


def _navigate(page, path: str, heading: str) -> None:
    """Go to ``path`` by its sidebar link: the same Streamlit session (``page.goto`` would start a new one)."""
    link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]')
    with rerun(page, MODEL_LOAD_MS):
        link.click()
    page.get_by_role("heading", name=heading).first.wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)


def test_pages_survive_a_second_visit(app_server, browser):
    """Every analysis page twice in one session, with other pages between (state kept in the session)."""
    t0 = time.perf_counter()
    context = browser.new_context(viewport={"width": WIDTHS[0], "height": 1000})
    page = context.new_page()
    # Steering's behavioural search is too slow for a browser test: it is opened, not computed.
    cheap = {"live_inspection": _live_inspection, "likelihood": _likelihood, "concepts": _concepts, "bias": _bias}
    visits = [(p, h) for p, h, _, _ in PAGES if p not in ("", "methods")]
    try:
        page.goto(app_server.url)
        wait_idle(page, MODEL_LOAD_MS)
        for path, heading in visits:  # first visit: compute where it is cheap
            _navigate(page, path, heading)
            if path in cheap:
                cheap[path](page)
            _no_exception(page, f"{path}, first visit", errors=True)
        for path, heading in visits:  # second visit, in the same session, after all the others
            _navigate(page, path, heading)
            page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                   ".every(el => !!el._fullLayout)", timeout=30_000)
            _no_exception(page, f"{path}, second visit", errors=True)
        print(f"\n[timing] second visits: {time.perf_counter() - t0:.1f}s")
    finally:
        context.close()
