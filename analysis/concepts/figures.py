"""Figures for concept activation vectors: accuracy by layer, CAV cosine matrix, 2-D projection.

Builders take plain arrays or a ``CavResult`` and return a themed ``go.Figure``;
they never call Streamlit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from analysis.figures.theme import DIVERGING_HEATMAP, QUALITATIVE, apply_theme

BACKGROUND_GREY = "#9E9E9E"


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i: i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def accuracy_figure(result, *, title: str | None = None) -> go.Figure:
    """Held-out accuracy per layer for each concept, over its shaded random-split band.

    The band spans the min–max of the TCAV random-split accuracies; hollow
    markers are layers where the CAV is not significant (not above the band).
    """
    fig = go.Figure()
    layers = list(result.layers)
    # Concepts of equal size share one null: then a single grey band, else one tinted band each.
    shared = all(np.array_equal(result.random_accuracy[0], r) for r in result.random_accuracy[1:])
    for ci, name in enumerate(result.concepts):
        colour = QUALITATIVE[ci % len(QUALITATIVE)]
        if shared and ci > 0:
            continue
        lo, hi = result.random_min[ci], result.random_max[ci]
        fig.add_trace(go.Scatter(
            x=layers + layers[::-1], y=np.r_[hi, lo[::-1]], fill="toself", mode="lines",
            fillcolor=_rgba(BACKGROUND_GREY if shared else colour, 0.25 if shared else 0.15),
            line=dict(width=0), hoverinfo="skip", legendgroup="random" if shared else name, showlegend=shared,
            name="random-split band" if shared else f"{name} random band",
        ))
    for ci, name in enumerate(result.concepts):
        colour = QUALITATIVE[ci % len(QUALITATIVE)]
        sig = result.significant[ci]
        fig.add_trace(go.Scatter(
            x=layers, y=result.accuracy[ci], mode="lines+markers", name=name, legendgroup=name,
            line=dict(color=colour),
            marker=dict(color=[colour if s else "white" for s in sig], line=dict(color=colour, width=1.5), size=8),
            error_y=dict(type="data", array=result.accuracy_std[ci], visible=True, thickness=1, width=3),
            customdata=np.c_[result.random_mean[ci], result.random_max[ci], result.p_value[ci]],
            hovertemplate=("layer %{x}<br>accuracy %{y:.3f}<br>random mean %{customdata[0]:.3f}, "
                           "max %{customdata[1]:.3f}<br>p = %{customdata[2]:.3f}<extra>" + name + "</extra>"),
        ))
    fig.add_hline(y=0.5, line=dict(color=BACKGROUND_GREY, dash="dot", width=1))
    fig.update_layout(
        title=title or "CAV held-out accuracy by layer (shaded: random-split band; hollow: not significant)",
        # The layer axis spans its data (autorange padded a marker's width: −1 to 18 for 18 layers).
        xaxis=dict(title="layer", dtick=1, range=[min(layers) - 0.4, max(layers) + 0.4]),
        yaxis_title="held-out accuracy", yaxis_range=[0.3, 1.02],
        # Below the plot: on the right, the legend left the bars a third of a 1000 px page.
        height=520, legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0),
    )
    return apply_theme(fig)


def similarity_figure(matrix: np.ndarray, names: Sequence[str], layer: int) -> go.Figure:
    """Cosine similarity of CAVs at one layer (diverging scale centred at 0)."""
    fig = go.Figure(go.Heatmap(
        z=matrix, x=list(names), y=list(names), zmin=-1, zmax=1, **DIVERGING_HEATMAP,
        text=np.round(matrix, 2), texttemplate="%{text}", colorbar=dict(title="cosine"),
        hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=f"CAV cosine similarity at layer {layer}", yaxis_autorange="reversed")
    return apply_theme(fig)


def projection_figure(coords: np.ndarray, labels: Sequence[str], *, method: str, layer: int,
                      texts: Sequence[str] | None = None, background_label: str = "background") -> go.Figure:
    """2-D projection of text activations, one colour per concept, background in grey."""
    labels = np.asarray(labels)
    fig = go.Figure()
    order = [l for l in dict.fromkeys(labels.tolist()) if l != background_label]
    if background_label in labels:
        order = [background_label] + order  # drawn first, underneath
    colours = iter(QUALITATIVE * 4)
    for label in order:
        mask = labels == label
        colour = BACKGROUND_GREY if label == background_label else next(colours)
        fig.add_trace(go.Scatter(
            x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=label,
            marker=dict(color=colour, opacity=0.5 if label == background_label else 0.85),
            text=None if texts is None else [texts[i] for i in np.flatnonzero(mask)],
            hovertemplate="%{text}<extra>" + label + "</extra>" if texts is not None else None,
        ))
    fig.update_layout(title=f"{method.upper()} of resid_post activations at layer {layer}",
                      xaxis_title=f"{method.upper()} 1", yaxis_title=f"{method.upper()} 2")
    return apply_theme(fig)
