"""Smoke tests of app.figures.render_figure through Streamlit's AppTest (no browser)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _script() -> None:
    import pandas as pd
    import plotly.graph_objects as go

    from analysis.figures import apply_theme
    from app.figures import render_figure

    fig = apply_theme(go.Figure(go.Bar(x=["a", "b"], y=[1, 2])))
    render_figure(
        fig,
        data=pd.DataFrame({"x": ["a", "b"], "y": [1, 2]}),
        recipe={"page": "smoke", "layer": 3},
        key="smoke",
        filename="smoke test/figure",
    )
    render_figure(fig, data=None, recipe=None, key="bare", filename="bare")


def test_render_figure_shows_chart_and_download_row(monkeypatch, tmp_path):
    browser = tmp_path / "chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(browser))
    at = AppTest.from_function(_script).run(timeout=30)
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    buttons = at.get("download_button")
    assert [b.label for b in buttons[:5]] == ["PNG", "SVG", "PDF", "CSV", "Recipe"]
    assert all(not b.proto.disabled for b in buttons[:5])
    # No data / recipe: those two buttons are disabled, the image ones are not.
    assert [b.proto.disabled for b in buttons[5:]] == [False, False, False, True, True]
    assert len(at.error) == 0


def test_missing_browser_shows_error_and_disables_image_buttons(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    at = AppTest.from_function(_script).run(timeout=30)
    assert not at.exception
    assert len(at.error) == 2
    assert "apt-get install chromium" in at.error[0].value
    buttons = at.get("download_button")
    assert [b.proto.disabled for b in buttons[:5]] == [True, True, True, False, False]
