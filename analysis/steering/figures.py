"""Figures for steering vectors (Methods §3): layer search, α sweep, CAV and SAE links.

Builders take the dataclasses of ``analysis.steering.vector`` / ``analysis.steering.evaluation``
and return a themed ``go.Figure``; they never call Streamlit.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.figures.theme import QUALITATIVE, apply_theme

_SCORE_LABELS = {"paper": "authors' heuristic (concentration of M, not a divergence)",
                 "exact": "JS divergence (exact)", "centred": "JS of z-scored activations",
                 "behavioural": "held-out gain within loss budget (nats)"}



# A legend under the plot, left-aligned: on a narrow page column a legend on the right takes the
# width the panels need.
_BELOW = dict(orientation="h", x=0, xanchor="left", y=-0.1, yanchor="top")

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


def behavioural_search_figure(search, *, title: str | None = None) -> go.Figure:
    """Layer × strength heatmaps of the held-out gap gain and the background-loss cost; chosen cell starred."""
    layers = [str(int(l)) for l in search.layers]
    strengths = [f"{s:g}" for s in search.strengths]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14,
                        subplot_titles=("gap gain (nats),<br>validation pairs", "background-loss<br>increase (nats/token)"))
    near = f"{search.strengths[int(np.argmin(np.abs(search.strengths - search.best_strength)))]:g}"
    for col, (z, sem, scale, name) in enumerate(((search.gain, search.gain_sem, "RdBu", "gain"),
                                                 (search.cost, search.cost_sem, "Oranges", "cost")), start=1):
        text = [[f"{v:.2f}" if np.isfinite(v) else "" for v in row] for row in z]
        custom = np.dstack([np.nan_to_num(sem), search.alphas])
        fig.add_trace(go.Heatmap(
            z=z.T, x=layers, y=strengths, colorscale=scale, zmid=0 if col == 1 else None, text=np.array(text).T,
            texttemplate="%{text}", textfont=dict(size=10), customdata=custom.transpose(1, 0, 2), showscale=False,
            name=name,
            hovertemplate="layer %{x}, strength %{y}<br>" + name + " %{z:.3f} ± %{customdata[0]:.3f}"
                          "<br>α = %{customdata[1]:.3g}<extra></extra>",
        ), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[str(search.best)], y=[near], mode="markers", showlegend=col == 1,
            marker=dict(symbol="star", size=18, color="#ffd400", line=dict(color="#000000", width=1)),
            name=f"chosen: layer {search.best}, strength {search.best_strength:.3g} (nearest cell starred)",
        ), row=1, col=col)
    fig.update_xaxes(title_text="layer", type="category")
    fig.update_yaxes(title_text="strength (× mean residual norm)", type="category", row=1, col=1)
    skipped = "; blank cells: not measured (past the layer's first over-budget strength)" \
        if np.isnan(search.gain).any() else ""
    fig.update_layout(title=title or (f"Behavioural layer search: chosen layer {search.best} "
                                      f"({search.rule} rule, budget {search.config.loss_budget:g} nats/token"
                                      f"{skipped})"),
                      height=500, legend={**_BELOW, "y": -0.28})  # below the layer axis's title
    return apply_theme(fig)


def search_figure(search, *, chosen: int | None = None, title: str | None = None) -> go.Figure:
    """The figure of whichever search was run: heatmaps (behavioural) or the score curve."""
    if getattr(search, "score", None) == "behavioural":
        return behavioural_search_figure(search, title=title)
    return layer_search_figure(search, chosen=chosen, title=title)


def alpha_sweep_figure(sweep, *, title: str | None = None) -> go.Figure:
    """Gap change vs α with the random-direction band, background loss and KL (± s.e.), stacked."""
    has_kl = sweep.kl is not None
    rows = 3 if has_kl else 2
    titles = ["gap change vs α = 0 (held-out pairs);<br>grey: random directions of the same norm",
              f"loss on neutral background text (n = {sweep.n_background})"]
    if has_kl:
        titles.append("KL(unsteered ‖ steered) of the next token<br>on background text")
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.07, subplot_titles=titles)
    lo, hi = sweep.null_band
    if np.isfinite(lo).any():
        fig.add_trace(go.Scatter(x=np.concatenate([sweep.alphas, sweep.alphas[::-1]]),
                                 y=np.concatenate([hi, lo[::-1]]), fill="toself", mode="lines",
                                 line=dict(width=0), fillcolor="rgba(128,128,128,0.3)",
                                 name=f"random directions ({sweep.null_gain.shape[1]}), 95 % range",
                                 hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Scatter(
        x=sweep.alphas, y=sweep.gain, mode="lines+markers", name="gap change (mean ± s.e.m.)",
        error_y=dict(type="data", array=sweep.gap_sem, visible=True), line=dict(color=QUALITATIVE[0]),
    ), row=1, col=1)
    err = None if sweep.background_loss_sem is None else dict(type="data", array=sweep.background_loss_sem)
    fig.add_trace(go.Scatter(
        x=sweep.alphas, y=sweep.background_loss, mode="lines+markers", name="background loss (nats/token)",
        error_y=err, line=dict(color=QUALITATIVE[1]),
    ), row=2, col=1)
    if has_kl:
        fig.add_trace(go.Scatter(
            x=sweep.alphas, y=sweep.kl, mode="lines+markers", name="KL to unsteered (nats)",
            error_y=dict(type="data", array=sweep.kl_sem), line=dict(color=QUALITATIVE[2]),
        ), row=3, col=1)
    for row in range(1, rows + 1):
        fig.add_vline(x=0, line=dict(color="#888888", dash="dot", width=1), row=row, col=1)
    layers = ", ".join(str(l) for l in sweep.layers)
    fig.update_layout(title=title or f"Steering strength sweep (layer {layers})", height=280 * rows + 140,
                      legend=_BELOW)
    fig.update_xaxes(title_text="α (multiplier of v)", row=rows, col=1)
    fig.update_yaxes(title_text="nats", row=1, col=1)
    fig.update_yaxes(title_text="nats/token", row=2, col=1)
    return apply_theme(fig)


def cav_shift_figure(sweep, *, title: str | None = None) -> go.Figure:
    """Shift of the background's projection on each shipped CAV, per α (in unsteered-projection SDs)."""
    if sweep.cav_shift is None:
        raise ValueError("this sweep measured no CAV shifts; run it with a CavProbe")
    fig = go.Figure(go.Heatmap(
        z=sweep.cav_shift.T, x=[f"{a:g}" for a in sweep.alphas], y=list(sweep.cav_concepts), colorscale="RdBu",
        zmid=0, hovertemplate="%{y}, α = %{x}: %{z:.2f} SD<extra></extra>",
        colorbar=dict(title="shift (SD)"),
    ))
    fig.update_layout(title=title or f"Off-target concepts: CAV projection shift at layer {sweep.cav_layer}",
                      xaxis_title="α", yaxis_title="concept", height=max(320, 24 * len(sweep.cav_concepts) + 160))
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
