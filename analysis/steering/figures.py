"""Figures for steering vectors (METHODS §3): layer search, α sweep, CAV and SAE links.

Builders take the dataclasses of ``analysis.steering.vector`` / ``analysis.steering.evaluation``
and return a themed ``go.Figure``; they never call Streamlit.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.figures.theme import QUALITATIVE, apply_theme

_SCORE_LABELS = {"paper": "paper score (authors' variant)", "exact": "JS divergence (exact)"}


def layer_search_figure(search, *, chosen: int | None = None, title: str | None = None) -> go.Figure:
    """Score per candidate layer, the chosen layer marked (default: the best)."""
    chosen = search.best if chosen is None else chosen
    layers = np.asarray(search.layers)
    fig = go.Figure(go.Scatter(
        x=layers, y=search.scores, mode="lines+markers", name=search.score,
        line=dict(color=QUALITATIVE[0]), hovertemplate="layer %{x}: %{y:.4g}<extra></extra>",
    ))
    if chosen in layers.tolist():
        y = float(search.scores[layers.tolist().index(chosen)])
        fig.add_trace(go.Scatter(
            x=[chosen], y=[y], mode="markers", name=f"chosen layer {chosen}",
            marker=dict(color=QUALITATIVE[3], size=14, symbol="star"),
        ))
    fig.add_vline(x=chosen, line=dict(color=QUALITATIVE[3], dash="dot", width=1))
    fig.update_layout(title=title or f"Contrastive layer search (chosen layer {chosen})",
                      xaxis_title="layer", yaxis_title=_SCORE_LABELS.get(search.score, search.score))
    return apply_theme(fig)


def alpha_sweep_figure(sweep, *, title: str | None = None) -> go.Figure:
    """Held-out log-prob gap (± s.e.m.) and background loss against α, in two stacked panels."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("log p(positive) − log p(negative), held-out pairs",
                                        "loss on neutral background text"))
    fig.add_trace(go.Scatter(
        x=sweep.alphas, y=sweep.gap_mean, mode="lines+markers", name="gap (mean ± s.e.m.)",
        error_y=dict(type="data", array=sweep.gap_sem, visible=True), line=dict(color=QUALITATIVE[0]),
    ), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=sweep.alphas, y=sweep.background_loss, mode="lines+markers", name="background loss (nats/token)",
        line=dict(color=QUALITATIVE[1]),
    ), row=2, col=1)
    for row in (1, 2):
        fig.add_vline(x=0, line=dict(color="#888888", dash="dot", width=1), row=row, col=1)
    layers = ", ".join(str(l) for l in sweep.layers)
    fig.update_layout(title=title or f"Steering strength sweep (layer {layers})", height=560)
    fig.update_xaxes(title_text="α", row=2, col=1)
    fig.update_yaxes(title_text="gap (nats)", row=1, col=1)
    fig.update_yaxes(title_text="nats/token", row=2, col=1)
    return apply_theme(fig)


def cav_links_figure(links, *, layer: int, top: int = 20) -> go.Figure:
    """Cosine of the steering vector at ``layer`` with each concept's CAV, sorted."""
    if layer not in links.layers:
        raise ValueError(f"layer {layer} has no CAVs; CAV layers are {list(links.layers)}")
    cos = links.cosine[:, list(links.layers).index(layer)]
    order = np.argsort(cos)[-top:]
    fig = go.Figure(go.Bar(
        x=cos[order], y=[links.concepts[i] for i in order], orientation="h",
        marker_color=[QUALITATIVE[3] if c > 0 else QUALITATIVE[0] for c in cos[order]],
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    ))
    fig.update_layout(title=f"Steering vector vs concept CAVs at layer {layer}",
                      xaxis_title="cosine similarity", yaxis_title="concept", height=max(320, 26 * len(order) + 140))
    return apply_theme(fig)


def sae_links_figure(links) -> go.Figure:
    """The SAE latents whose decoder directions align most with the vector (signed cosine)."""
    labels = [f"latent {int(i)}" for i in links.latents][::-1]
    vals = np.asarray(links.cosine)[::-1]
    fig = go.Figure(go.Bar(
        x=vals, y=labels, orientation="h",
        marker_color=[QUALITATIVE[3] if v > 0 else QUALITATIVE[0] for v in vals],
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    ))
    fig.update_layout(title=f"SAE latents aligned with the vector ({links.sae}, layer {links.layer})",
                      xaxis_title="cosine with decoder direction", yaxis_title="latent",
                      height=max(320, 26 * len(labels) + 140))
    return apply_theme(fig)
