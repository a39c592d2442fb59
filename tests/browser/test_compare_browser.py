"""The Compare page in a real browser: base vs a steered state in the live-inspection view.

A random steering vector for the default model is saved into the server's
throw-away workspace (``workspace/steering``), so it appears as a state option;
the cheap lens view (two forward passes of one prompt) keeps CI time low.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from browser_wait import rerun, wait_idle

from analysis.models import CATALOGUE, DEFAULT_MODEL

pytestmark = [pytest.mark.browser, pytest.mark.real_model]

MODEL_LOAD_MS = 240_000
RUN_MS = 300_000


def _no_errors(page) -> None:
    for testid in ("stException", "stAlertContentError"):
        shown = page.locator(f'[data-testid="{testid}"]')
        assert shown.count() == 0, shown.first.inner_text()


def test_compare_base_vs_steered_lens(app_server, page, workspace, tmp_path, screenshots):
    from analysis.steering import SteeringVector

    spec = CATALOGUE[DEFAULT_MODEL]
    g = np.random.default_rng(0)
    vectors = (g.standard_normal((spec.n_layers, spec.d_model)) * 20).astype(np.float32)
    path = SteeringVector(model=DEFAULT_MODEL, vectors=vectors, layers=(6,)).save(workspace / "steering" / "random6.safetensors")

    page.goto(f"{app_server.url}/compare")
    page.get_by_role("heading", name="Compare two model states").wait_for(timeout=MODEL_LOAD_MS)
    wait_idle(page, MODEL_LOAD_MS)
    b_spec = page.locator(".st-key-cmp_b_choice")
    page.wait_for_function("""(p) => {
        const el = document.querySelector('.st-key-cmp_b_choice');
        return !!el && (el.innerText.includes(p) || [...el.querySelectorAll('input')].some(i => i.value.includes(p)));
    }""", arg="random6.safetensors", timeout=30_000)
    assert b_spec.count() == 1
    _no_errors(page)

    with rerun(page):
        page.locator(".st-key-cmp_view").get_by_text("Live inspection").click()
    page.locator(".st-key-cmp_prompt input").wait_for(timeout=30_000)
    with rerun(page, RUN_MS):
        page.locator(".st-key-cmp_run button").click()
    # Long figure titles wrap (analysis.figures.theme.wrap_title): match across the line break.
    figure = page.locator(".js-plotly-plot").filter(has_text=re.compile(r"Live inspection:\s*B\s*=\s*steer:"))
    figure.wait_for(timeout=RUN_MS)
    wait_idle(page, RUN_MS)
    _no_errors(page)
    assert str(path) in figure.inner_text() or "random6" in figure.inner_text()

    page.locator(".st-key-cmp_lens-csv").scroll_into_view_if_needed()
    with page.expect_download(timeout=60_000) as info:
        page.locator(".st-key-cmp_lens-csv button:visible").click()
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    kl = {(int(r["layer"]), int(r["position"])): float(r["kl"]) for r in rows}
    assert max(kl.values()) > 0  # the vector at layer 6 changes the lens after it
    assert all(v == 0 for (layer, _), v in kl.items() if layer < 6)  # and nothing before it
    # the figure in the middle of the viewport: scrolled to its top edge, its wrapped title was cut off
    figure.evaluate("e => e.scrollIntoView({block: 'center'})")
    page.screenshot(path=str(screenshots / "compare.png"))
