"""The one Plotly theme every RepScope figure uses, on screen and exported.

Importing this module registers the template as ``plotly.io.templates["repscope"]``;
it does not change Plotly's global default, so call `apply_theme` on each figure.

Footguns:
- A colour scale cannot centre itself: a bias heatmap needs ``zmid=0`` as well
  as the diverging scale, so spread `DIVERGING_HEATMAP` into the trace.
- Sizes are in layout pixels, not relative to the width, so a figure stretched
  to the container on screen keeps the same font and line sizes as its export.
"""

from __future__ import annotations

from types import MappingProxyType

import plotly.graph_objects as go
import plotly.io as pio

TEMPLATE_NAME = "repscope"

# DejaVu ships with Debian's chromium (the exporter), Arial covers most screens.
FONT_FAMILY = "DejaVu Sans, Arial, sans-serif"

# Okabe & Ito (2008), distinguishable under the common colour-vision
# deficiencies; yellow goes last because it is faint on white paper.
QUALITATIVE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)

# ColorBrewer RdBu, blue for negative and red for positive, white at the middle.
DIVERGING = (
    (0.0, "#2166AC"),
    (0.1, "#4393C3"),
    (0.2, "#92C5DE"),
    (0.35, "#D1E5F0"),
    (0.5, "#F7F7F7"),
    (0.65, "#FDDBC7"),
    (0.8, "#F4A582"),
    (0.9, "#D6604D"),
    (1.0, "#B2182B"),
)

# Viridis: perceptually uniform and readable in greyscale and by colour-blind readers.
SEQUENTIAL = tuple(
    (i / 9, colour)
    for i, colour in enumerate(
        (
            "#440154",
            "#482878",
            "#3E4A89",
            "#31688E",
            "#26828E",
            "#1F9E89",
            "#35B779",
            "#6DCD59",
            "#B4DE2C",
            "#FDE725",
        )
    )
)

# Spread into a heatmap for signed values: go.Heatmap(z=z, **DIVERGING_HEATMAP).
DIVERGING_HEATMAP = MappingProxyType({"colorscale": [list(s) for s in DIVERGING], "zmid": 0.0})

_INK = "#222222"
_GRID = "#E5E5E5"
_AXIS_LINE = "#888888"


def _axis() -> dict:
    return dict(
        showgrid=True,
        gridcolor=_GRID,
        gridwidth=1,
        zeroline=True,
        zerolinecolor=_AXIS_LINE,
        zerolinewidth=1,
        showline=True,
        linecolor=_AXIS_LINE,
        linewidth=1,
        ticks="outside",
        tickcolor=_AXIS_LINE,
        ticklen=5,
        tickfont=dict(size=13),
        title=dict(font=dict(size=15), standoff=10),
        automargin=True,
    )


def _colorbar() -> dict:
    return dict(outlinewidth=0, ticks="outside", ticklen=4, tickfont=dict(size=12), thickness=16)


def _build_template() -> go.layout.Template:
    sequential = [list(s) for s in SEQUENTIAL]
    template = go.layout.Template()
    template.layout = go.Layout(
        font=dict(family=FONT_FAMILY, size=14, color=_INK),
        # Just above the plot, pushing the top margin as far as it needs: a wrapped title never
        # runs into the plot (centred in a fixed margin, its lines grew into it).
        title=dict(font=dict(size=18), x=0.01, xanchor="left", xref="container", y=1, yanchor="bottom",
                   yref="paper", automargin=True, pad=dict(b=12)),
        paper_bgcolor="white",
        plot_bgcolor="white",
        colorway=list(QUALITATIVE),
        colorscale=dict(
            sequential=sequential,
            sequentialminus=sequential,
            diverging=[list(s) for s in DIVERGING],
        ),
        coloraxis=dict(colorscale=sequential, colorbar=_colorbar()),
        xaxis=_axis(),
        yaxis=_axis(),
        legend=dict(font=dict(size=13), bgcolor="rgba(255,255,255,0.8)", borderwidth=0),
        hoverlabel=dict(font=dict(family=FONT_FAMILY, size=13)),
        margin=dict(l=70, r=30, t=60, b=60),
    )
    for trace_type in ("heatmap", "contour", "histogram2d"):
        template.data[trace_type] = [dict(colorscale=sequential, colorbar=_colorbar())]
    template.data.scatter = [go.Scatter(marker=dict(size=7, line=dict(width=0)), line=dict(width=2))]
    template.data.bar = [go.Bar(marker=dict(line=dict(width=0)))]
    return template


pio.templates[TEMPLATE_NAME] = _build_template()


TITLE_LINE_CHARS = 52  # about 490 px at the title's 18 px font: fits a figure on a page 1000 px wide


def wrap_title(text: str, width: int = TITLE_LINE_CHARS) -> str:
    """``text`` broken into lines of at most ``width`` characters at spaces (Plotly does not wrap titles).

    Lines the author already broke with ``<br>`` are kept and each is wrapped on its own.
    """
    if not text:
        return text
    out = []
    for segment in text.split("<br>"):
        line = ""
        for word in segment.split(" "):
            if line and len(line) + 1 + len(word) > width:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        out.append(line)
    return "<br>".join(out)


def apply_theme(fig: go.Figure) -> go.Figure:
    """Set the RepScope template on `fig` (in place), wrap a long title, and return it for chaining."""
    fig.update_layout(template=TEMPLATE_NAME)
    title = fig.layout.title.text
    if title:
        wrapped = wrap_title(title)
        if wrapped != title:
            # The template's title.automargin makes room for the lines, but only once the margin is too
            # small for them (else plotly.js centres the block in the margin: two lines ran into the
            # plot). A small margin makes it always grow the margin to fit.
            fig.update_layout(title_text=wrapped, margin_t=20)
        # Subplot titles of the top row sit just above the plot, where the main title sits too:
        # lift the main title over the tallest of them (one line of 16 px text ≈ 22 px), in a top
        # margin made big enough for both up front (a margin that automargin has to grow is drawn
        # half-updated by the static export: axes apart from their data)
        lines = [str(a.text or "").count("<br>") + 1 for a in fig.layout.annotations
                 if a.yref == "paper" and a.yanchor == "bottom" and a.y is not None and a.y >= 0.999]
        if lines:
            # plotly.js anchors a multi-line title by its first line, the others run downwards: lift
            # it by their height as well (≈ 24 px a line at 18 px)
            n_title = fig.layout.title.text.count("<br>") + 1
            pad = 12 + 22 * max(lines) + 24 * (n_title - 1)
            fig.update_layout(title_pad_b=pad, margin_t=pad + 26 * n_title + 10)
    return fig
