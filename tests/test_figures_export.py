"""Theme, CSV export and kaleido/chromium figure export."""

from __future__ import annotations

import io
import re
import struct
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from analysis.figures import export, theme
from analysis.figures.export import ExportError, export_figure, find_browser, frame_to_csv
from analysis.figures.theme import DIVERGING_HEATMAP, TEMPLATE_NAME, apply_theme

needs_chromium = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(),
    reason="/usr/bin/chromium missing: install Debian's chromium (apt-get install chromium) to run export tests",
)


@pytest.fixture(scope="module", autouse=True)
def _close_browser():
    yield
    export.shutdown()


@pytest.fixture
def line_fig() -> go.Figure:
    fig = go.Figure(
        [
            go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="probe accuracy"),
            go.Bar(x=[1, 2, 3], y=[1, 2, 1], name="bias"),
        ]
    )
    fig.update_layout(title="Layer sweep", xaxis_title="layer", yaxis_title="score")
    return apply_theme(fig)


# --- theme ----------------------------------------------------------------------


def test_template_registered_and_applied(line_fig):
    assert TEMPLATE_NAME in pio.templates
    layout = line_fig.layout.template.layout
    assert layout.font.family.startswith("DejaVu Sans")
    assert layout.paper_bgcolor == "white"
    assert list(layout.colorway) == list(theme.QUALITATIVE)
    assert line_fig.layout.template.data.heatmap[0].colorscale[0][1].lower() == theme.SEQUENTIAL[0][1].lower()


def test_apply_theme_returns_same_figure():
    fig = go.Figure()
    assert apply_theme(fig) is fig


def test_diverging_heatmap_is_centred_on_zero():
    heatmap = go.Heatmap(z=[[-1.0, 3.0]], **DIVERGING_HEATMAP)
    assert heatmap.zmid == 0
    assert heatmap.colorscale[0][0] == 0 and heatmap.colorscale[-1][0] == 1
    middle = dict(theme.DIVERGING)[0.5]
    assert middle.upper() == "#F7F7F7"


# --- CSV --------------------------------------------------------------------------


def test_frame_to_csv_round_trips():
    df = pd.DataFrame({"layer": [0, 1], "concept": ["gender", "età"], "score": [0.5, -1.25]})
    out = frame_to_csv(df)
    assert out.decode("utf-8").splitlines()[0] == "layer,concept,score"
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(out)), df)


def test_frame_to_csv_keeps_named_index():
    df = pd.DataFrame({"score": [1.0, 2.0]}, index=pd.Index([3, 7], name="layer"))
    assert frame_to_csv(df).decode().splitlines() == ["layer,score", "3,1.0", "7,2.0"]


# --- finding the browser (no chromium needed) ---------------------------------------


def test_browser_path_env_var_wins(monkeypatch, tmp_path):
    fake = tmp_path / "my-chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BROWSER_PATH", str(fake))
    assert find_browser() == str(fake)


def test_bad_browser_path_env_var_is_explained(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chrome")
    with pytest.raises(
        ExportError,
        match=r"BROWSER_PATH='/nonexistent/chrome' is not an executable.*apt-get install chromium",
    ):
        find_browser()


def test_no_browser_says_how_to_fix(monkeypatch, line_fig):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(export, "DEBIAN_CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        ExportError, match=r"No chromium browser found.*install Debian's chromium: apt-get install chromium"
    ):
        export_figure(line_fig, "png")


def test_browser_that_fails_to_start_raises_instead_of_hanging(monkeypatch, line_fig):
    # kaleido.start_sync_server blocks forever here; our renderer must raise.
    monkeypatch.setenv("BROWSER_PATH", "/bin/false")
    started = time.monotonic()
    with pytest.raises(
        ExportError,
        match=r"Could not start the browser at /bin/false for export \(BrowserFailedError: [^)]*\)\. Check that it runs",
    ) as info:
        export_figure(line_fig, "svg")
    assert "get_chrome" not in str(info.value)  # we never tell users to download a Chrome
    assert time.monotonic() - started < export.TIMEOUT_S
    assert export._renderer is None


def test_unknown_format_lists_valid_ones(line_fig):
    with pytest.raises(ValueError, match=r"Unknown export format 'jpeg'.*\['png', 'svg', 'pdf'\]"):
        export_figure(line_fig, "jpeg")  # type: ignore[arg-type]


# --- real exports ---------------------------------------------------------------------


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


def _pdf_content(pdf: bytes) -> bytes:
    """All streams of `pdf`, inflated where they are Flate-compressed."""
    out = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            out.append(zlib.decompress(match.group(1)))
        except zlib.error:
            out.append(match.group(1))
    return b"\n".join(out)


@needs_chromium
def test_png_export(line_fig, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    png = export_figure(line_fig, "png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert _png_size(png) == (export.DEFAULT_WIDTH * 2, export.DEFAULT_HEIGHT * 2)
    small = export_figure(line_fig, "png", width=400, height=300, scale=1)
    assert _png_size(small) == (400, 300)


@needs_chromium
def test_svg_export_is_xml_with_svg_root(line_fig, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    svg = export_figure(line_fig, "svg")
    root = ET.fromstring(svg)
    assert root.tag.rsplit("}", 1)[-1] == "svg"
    assert (root.get("width"), root.get("height")) == (str(export.DEFAULT_WIDTH), str(export.DEFAULT_HEIGHT))
    assert b"Layer sweep" in svg
    assert b"DejaVu Sans" in svg


@needs_chromium
def test_pdf_export_is_vector(line_fig, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    pdf = export_figure(line_fig, "pdf")
    assert pdf.startswith(b"%PDF")
    assert pdf.rstrip().endswith(b"%%EOF")
    # Vector: fonts for the text and no embedded raster image (a screenshot PDF has one).
    assert re.search(rb"/Subtype\s*/Image", pdf) is None
    assert b"/Font" in pdf
    content = _pdf_content(pdf)
    assert re.search(rb"\bTJ?\b", content), "no text-showing operators"
    assert re.search(rb"\b[lc]\b", content), "no path operators"


@needs_chromium
def test_lock_serialises_concurrent_exports(line_fig, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    export_figure(line_fig, "svg")  # start the browser outside the timed region
    active, peak, errors, results = [0], [0], [], {}
    original = export._Renderer.render

    def counting_render(self, fig_dict, opts):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return original(self, fig_dict, opts)
        finally:
            active[0] -= 1

    monkeypatch.setattr(export._Renderer, "render", counting_render)
    formats = ["png", "svg", "pdf", "png"]

    def work(i: int) -> None:
        try:
            results[i] = export_figure(line_fig, formats[i])
        except Exception as exc:  # noqa: BLE001 collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert peak[0] == 1
    assert results[0].startswith(b"\x89PNG") and results[3].startswith(b"\x89PNG")
    assert results[1].lstrip().startswith(b"<svg") and results[2].startswith(b"%PDF")
