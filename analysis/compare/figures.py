"""Figures of the comparison views, drift and the steering audit (B − A throughout; never call Streamlit)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.compare.states import short_spec
from analysis.figures.theme import DIVERGING_HEATMAP, QUALITATIVE, apply_theme


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _title(a: str, b: str) -> str:
    return f"B = {short_spec(b)}  vs  A = {short_spec(a)}"


def delta_bias_figure(result, a: str, b: str) -> go.Figure:
    """ΔBias per target with its bootstrap CI; p in the hover and the label."""
    y = [_pretty(t) for t in result.targets]
    d = np.asarray(result.delta, float)
    fig = go.Figure(go.Scatter(
        x=d, y=y, mode="markers", marker=dict(size=11, color=QUALITATIVE[0]), name="ΔBias (B − A)",
        error_x=dict(type="data", symmetric=False, array=result.ci_high - d, arrayminus=d - result.ci_low),
        customdata=np.stack([result.summary_a, result.summary_b, result.p_value], -1),
        hovertemplate="%{y}<br>ΔBias %{x:.4f}<br>A %{customdata[0]:.4f} → B %{customdata[1]:.4f}"
                      "<br>permutation p %{customdata[2]:.3f}<extra></extra>",
        text=[f"p={p:.3f}" if np.isfinite(p) else "no layer" for p in result.p_value], textposition="top center",
    ))
    fig.update_traces(mode="markers+text")
    fig.add_vline(x=0, line=dict(color="#888", dash="dot"))
    fig.update_layout(title=f"ΔBias toward {_pretty(result.refs[0])} (vs {_pretty(result.refs[1])}), {_title(a, b)}",
                      xaxis_title="ΔBias (B − A), 95% bootstrap CI", yaxis_title="target", yaxis_autorange="reversed")
    return apply_theme(fig)


def delta_concepts_figure(result, a: str, b: str) -> go.Figure:
    """Left: Δ CAV accuracy (concept × layer). Right: each concept's shift along its CAV, with CI."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.18,
                        subplot_titles=("Δ CAV accuracy (B − A)", "shift along own CAV (units of separation)"))
    y = [_pretty(c) for c in result.concepts]
    dacc = result.acc_b - result.acc_a
    span = float(np.nanmax(np.abs(dacc))) if np.isfinite(dacc).any() else 1.0
    fig.add_trace(go.Heatmap(z=dacc, x=list(result.layers), y=y, zmin=-max(span, 1e-6), zmax=max(span, 1e-6),
                             colorbar=dict(title="Δ acc", x=0.52), **DIVERGING_HEATMAP,
                             hovertemplate="%{y}, layer %{x}<br>Δ accuracy %{z:.3f}<extra></extra>"), 1, 1)
    colors = [QUALITATIVE[1] if m else "#999999" for m in result.moved]
    fig.add_trace(go.Scatter(
        x=result.shift, y=y, mode="markers", marker=dict(size=10, color=colors), name="shift (grey: CI covers 0)",
        error_x=dict(type="data", symmetric=False, array=result.shift_high - result.shift,
                     arrayminus=result.shift - result.shift_low),
        hovertemplate="%{y}<br>shift %{x:.4f}<extra></extra>"), 1, 2)
    fig.add_vline(x=0, line=dict(color="#888", dash="dot"), row=1, col=2)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="layer", dtick=1, row=1, col=1)
    fig.update_layout(title=f"Concepts: {_title(a, b)}", showlegend=False)
    return apply_theme(fig)


def delta_cosine_figure(result, layer: int, a: str, b: str) -> go.Figure:
    """Δ cosine between concept CAVs at one layer."""
    li = list(result.layers).index(layer)
    z = result.cos_b[li] - result.cos_a[li]
    names = [_pretty(c) for c in result.concepts]
    span = max(float(np.abs(z).max()), 1e-6)
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=-span, zmax=span, colorbar=dict(title="Δ cos"),
                               **DIVERGING_HEATMAP, hovertemplate="%{y} · %{x}<br>Δ cosine %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Δ cosine between CAVs at layer {layer}, {_title(a, b)}", yaxis_autorange="reversed")
    return apply_theme(fig)


def lens_kl_figure(result, a: str, b: str) -> go.Figure:
    """KL(A ‖ B) of the logit lens per layer and position, and the most-changed next tokens."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.16,
                        subplot_titles=("KL(A ‖ B) of the logit lens", "next-token probability, last position"))
    x = [f"{i}:{t}" for i, t in enumerate(result.tokens)]
    fig.add_trace(go.Heatmap(z=result.kl, x=x, y=list(range(result.kl.shape[0])), colorscale="Viridis",
                             colorbar=dict(title="KL (nats)", x=0.55),
                             hovertemplate="layer %{y}, %{x}<br>KL %{z:.4f}<extra></extra>"), 1, 1)
    ch = result.changed
    fig.add_trace(go.Bar(y=list(ch.token), x=list(ch.p_a), orientation="h", name="A", marker_color=QUALITATIVE[0]), 1, 2)
    fig.add_trace(go.Bar(y=list(ch.token), x=list(ch.p_b), orientation="h", name="B", marker_color=QUALITATIVE[1]), 1, 2)
    fig.update_yaxes(title_text="layer", dtick=1, row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_layout(title=f"Live inspection: {_title(a, b)}", barmode="group", legend=dict(orientation="h", y=-0.2))
    return apply_theme(fig)


def likelihood_figure(frame, a: str, b: str) -> go.Figure:
    """Per pair: Δ log p(y+) and Δ log p(y−); CHES in A against CHES in B."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("Δ log p per pair (B − A)", "CHES before (A) and after (B)"))
    pairs = [str(p) for p in frame.pair]
    fig.add_trace(go.Bar(x=pairs, y=frame.delta_logp_chosen, name="Δ log p(y+)", marker_color=QUALITATIVE[0]), 1, 1)
    fig.add_trace(go.Bar(x=pairs, y=frame.delta_logp_rejected, name="Δ log p(y−)", marker_color=QUALITATIVE[1]), 1, 1)
    fig.add_trace(go.Scatter(x=frame.ches_a, y=frame.ches_b, mode="markers", name="pairs", text=pairs,
                             marker=dict(color=QUALITATIVE[2]),
                             hovertemplate="pair %{text}<br>CHES A %{x:.1f}<br>CHES B %{y:.1f}<extra></extra>"), 1, 2)
    lo = float(np.nanmin([frame.ches_a.min(), frame.ches_b.min()]))
    hi = float(np.nanmax([frame.ches_a.max(), frame.ches_b.max()]))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="#888"),
                             name="no change"), 1, 2)
    fig.update_xaxes(title_text="pair", row=1, col=1)
    fig.update_xaxes(title_text="CHES in A", row=1, col=2)
    fig.update_yaxes(title_text="CHES in B", row=1, col=2)
    fig.update_layout(title=f"Likelihood: {_title(a, b)}", barmode="group", legend=dict(orientation="h", y=-0.2))
    return apply_theme(fig)


def drift_figure(result) -> go.Figure:
    """Drift per axis over DPO steps with its bootstrap band: concepts' own CAVs on top, bias axes below.

    Filled markers: the 95% band excludes 0.
    """
    kinds = [k for k in ("concept", "bias") if any(kind == k for kind, _ in result.axes)] or ["concept"]
    titles = {"concept": "along each concept's own CAV", "bias": "along the preset's bias axes (target texts)"}
    fig = make_subplots(rows=len(kinds), cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[titles[k] for k in kinds])
    steps = list(result.steps)
    for i, (kind, name) in enumerate(result.axes):
        row = kinds.index(kind) + 1
        color = QUALITATIVE[i % len(QUALITATIVE)]
        fig.add_trace(go.Scatter(x=steps + steps[::-1], y=list(result.high[i]) + list(result.low[i])[::-1],
                                 mode="lines", fill="toself", line={"width": 0}, fillcolor=color, opacity=0.15,
                                 hoverinfo="skip", showlegend=False, legendgroup=name), row, 1)
        flagged = list(result.flagged[i])
        fig.add_trace(go.Scatter(
            x=steps, y=result.drift[i], mode="lines+markers", name=_pretty(name), legendgroup=name,
            line={"color": color}, customdata=np.stack([result.low[i], result.high[i]], -1),
            marker={"size": [11 if f else 7 for f in flagged], "symbol": ["circle" if f else "circle-open" for f in flagged]},
            hovertemplate=f"{_pretty(name)}<br>step %{{x}}<br>drift %{{y:.4f}}"
                          "<br>band [%{customdata[0]:.4f}, %{customdata[1]:.4f}]<extra></extra>"), row, 1)
        fig.add_hline(y=0, line={"color": "#888", "dash": "dot"}, row=row, col=1)
    fig.update_yaxes(title_text="drift (× separation)")
    fig.update_xaxes(title_text="DPO step", dtick=1, row=len(kinds), col=1)
    fig.update_layout(title="Concept drift during DPO (filled: 95% band excludes 0)",
                      height=380 * len(kinds) + 120, legend={"orientation": "h", "y": -0.12})
    return apply_theme(fig)


def audit_figure(result, spec: str) -> go.Figure:
    """Steered shift per concept against the random-direction spread (grey: |random| 95th percentile)."""
    y = [_pretty(c) for c in result.concepts]
    q = np.array([np.nanquantile(np.abs(r), 0.95) if np.isfinite(r).any() else np.nan for r in result.random])
    fig = go.Figure(go.Bar(x=2 * q, base=-q, y=y, orientation="h", marker_color="rgba(120,120,120,0.3)",
                           name="random directions (95% of |shift|)", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=result.shift, y=y, mode="markers", name="steered", marker=dict(size=10, color=QUALITATIVE[1]),
                             customdata=result.p_value, hovertemplate="%{y}<br>shift %{x:.4f}<br>p %{customdata:.3f}<extra></extra>"))
    fig.update_layout(title=f"Steering audit: {spec}", xaxis_title="shift along the concept's CAV (units of separation)",
                      yaxis_autorange="reversed", legend=dict(orientation="h", y=-0.2))
    return apply_theme(fig)
