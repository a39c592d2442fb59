"""Figures for bias asymmetry (BiasLens): layer heatmap, summary bars, shared latents, behaviour scatter.

Builders take a ``BiasResult`` / ``SharedLatents`` / ``BehaviourData`` and return a
themed ``go.Figure``; they never call Streamlit.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from analysis.figures.theme import DIVERGING_HEATMAP, QUALITATIVE, apply_theme

BAND_GREY = "rgba(120,120,120,0.25)"


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _refs_label(result) -> str:
    return f"{_pretty(result.refs[0])} − {_pretty(result.refs[1])}"


def heatmap_figure(result, *, title: str | None = None) -> go.Figure:
    """Targets × layers Bias, diverging and centred on zero; chosen layers marked with a dot."""
    bias = np.asarray(result.bias, float)
    finite = bias[np.isfinite(bias)]
    span = float(np.abs(finite).max()) if finite.size else 1.0
    y = [_pretty(t) for t in result.targets]
    custom = np.stack([result.bias_low, result.bias_high], -1)
    fig = go.Figure(go.Heatmap(
        z=bias, x=list(result.layers), y=y, zmin=-span, zmax=span, customdata=custom,
        colorbar=dict(title=dict(text="Bias")), **DIVERGING_HEATMAP,
        hovertemplate="%{y}, layer %{x}<br>Bias %{z:.3f}<br>CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>",
    ))
    ti, li = np.nonzero(result.chosen)
    if len(ti):
        fig.add_trace(go.Scatter(
            x=[result.layers[i] for i in li], y=[y[i] for i in ti], mode="markers", name="layers in the summary",
            marker=dict(symbol="circle", size=6, color="#222222"), hoverinfo="skip",
        ))
    fig.update_layout(
        title=title or f"Bias per layer: Align(target, {_pretty(result.refs[0])}) − Align(target, {_pretty(result.refs[1])})",
        xaxis_title="layer", yaxis_title="target", yaxis_autorange="reversed",
        legend=dict(orientation="h", y=-0.25), xaxis=dict(dtick=1, showgrid=False, range=[min(result.layers) - 0.5, max(result.layers) + 0.5]), yaxis=dict(showgrid=False),
    )
    return apply_theme(fig)


def summary_figure(result, *, title: str | None = None) -> go.Figure:
    """Summary Bias per target with bootstrap CI bars; grey boxes: the permutation null band."""
    x = [_pretty(t) for t in result.targets]
    fig = go.Figure(go.Bar(  # a floating bar per target: the null band from perm_low to perm_high
        x=x, y=result.perm_high - result.perm_low, base=result.perm_low, name="permutation null band",
        marker_color=BAND_GREY, width=0.8, hoverinfo="skip",
    ))
    summary = np.asarray(result.summary, float)
    fig.add_trace(go.Bar(
        x=x, y=summary, name="Bias (bootstrap CI)", marker_color=[QUALITATIVE[0] if s >= 0 else QUALITATIVE[3] for s in np.nan_to_num(summary)],
        error_y=dict(type="data", symmetric=False, array=result.ci_high - summary, arrayminus=summary - result.ci_low,
                     thickness=1.5, width=6, color="#222222"),
        customdata=np.stack([result.ci_low, result.ci_high, result.perm_low, result.perm_high], -1),
        hovertemplate=("%{x}<br>Bias %{y:.3f}<br>CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                       "<br>null band [%{customdata[2]:.3f}, %{customdata[3]:.3f}]<extra></extra>"),
        width=0.55,
    ))
    missing = [x[i] for i in range(len(x)) if not np.isfinite(summary[i])]
    note = f" (no qualifying layer: {', '.join(missing)})" if missing else ""
    fig.update_layout(
        title=title or f"Summary Bias ({_refs_label(result)}){note}",
        xaxis_title="target", yaxis_title=f"Bias (+: leans to {_pretty(result.refs[0])})", barmode="overlay",
        legend=dict(orientation="h", y=-0.3),
    )
    fig.add_hline(y=0, line=dict(color="#888888", width=1))
    return apply_theme(fig)


def shared_latents_figure(shared, *, max_rows: int = 60, title: str | None = None) -> go.Figure:
    """A table of each concept's top SAE latents, with the references each target shares them with."""
    if shared is None:
        fig = go.Figure()
        fig.add_annotation(text="No SAE for this model: shared latents are unavailable", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(title=title or "Shared SAE latents", xaxis_visible=False, yaxis_visible=False)
        return apply_theme(fig)
    refs = list(dict.fromkeys(r for (_, r) in shared.overlap))
    concepts = list(shared.latents)
    per = max(1, max_rows // max(1, len(concepts)))

    def top(c):
        return ", ".join(f"{int(i)} ({v:+.2f})" for i, v in zip(shared.latents[c][:per], shared.values[c][:per]))

    def common(c, r):
        ids = shared.overlap.get((c, r))
        return "" if ids is None else f"{len(ids)}: " + ", ".join(map(str, ids[:per]))

    fig = go.Figure(go.Table(
        columnwidth=[2, 6] + [3] * len(refs),
        header=dict(values=["concept", f"top latents (value), first {per}"] + [f"shared with {_pretty(r)}" for r in refs],
                    fill_color="#EEEEEE", align="left"),
        cells=dict(values=[[_pretty(c) for c in concepts], [top(c) for c in concepts]]
                   + [[common(c, r) for c in concepts] for r in refs], align="left"),
    ))
    fig.update_layout(title=title or f"SAE latents carrying each concept (layer {shared.layer}) and target ∩ reference overlap",
                      title_font_size=14, margin=dict(l=20, r=20, t=60, b=20))
    return apply_theme(fig)


def behaviour_figure(data, *, title: str | None = None) -> go.Figure:
    """Conceptual Bias (with CI) against behavioural Bias, one point per triple, one colour per preset."""
    fig = go.Figure()
    for pi, preset in enumerate(dict.fromkeys(data.presets)):
        rows = [i for i, p in enumerate(data.presets) if p == preset]
        c = data.conceptual[rows]
        fig.add_trace(go.Scatter(
            x=c, y=data.behavioural[rows], mode="markers+text", name=_pretty(preset),
            text=[_pretty(data.targets[i]) for i in rows], textposition="top center", textfont=dict(size=11),
            marker=dict(color=QUALITATIVE[pi % len(QUALITATIVE)], size=10),
            error_x=dict(type="data", symmetric=False, array=data.conceptual_high[rows] - c,
                         arrayminus=c - data.conceptual_low[rows], thickness=1),
            error_y=dict(type="data", array=data.behavioural_sem[rows], thickness=1),
            hovertemplate="%{text}<br>conceptual %{x:.3f}<br>behavioural %{y:.3f}<extra>" + preset + "</extra>",
        ))
    n = int(np.sum(np.isfinite(data.conceptual) & np.isfinite(data.behavioural)))
    rho = "n/a" if not np.isfinite(data.rho) else f"{data.rho:.2f}"
    fig.update_layout(
        title=title or f"Conceptual vs behavioural Bias: Spearman r = {rho} (n = {n} triples)",
        xaxis_title="conceptual Bias (summary, bootstrap CI)", yaxis_title="behavioural Bias (log-prob difference, ± s.e.)",
        legend=dict(orientation="h", y=-0.25),
    )
    return apply_theme(fig)
