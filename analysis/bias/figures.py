"""Figures for bias asymmetry (BiasLens): layer heatmap, summary bars, differential, shared latents, behaviour.

Builders take a ``BiasResult`` / ``SharedLatents`` / ``BehaviourData`` and return a
themed ``go.Figure``; they never call Streamlit.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from analysis.figures.theme import DIVERGING_HEATMAP, QUALITATIVE, apply_theme



def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _refs_label(result) -> str:
    return f"{_pretty(result.refs[0])} − {_pretty(result.refs[1])}"


def _family(result) -> str:
    n_l, n_t = len(result.layers), len(result.targets)
    return f"{n_l} layers" if n_t == 1 else f"{n_l} layers × {n_t} targets"


def heatmap_figure(result, *, title: str | None = None) -> go.Figure:
    """Targets × layers Bias, diverging and centred on zero; dots: layers in the summary;
    open diamonds: cells that survive the family-wise (max-|T|) correction at alpha."""
    bias = np.asarray(result.bias, float)
    finite = bias[np.isfinite(bias)]
    span = float(np.abs(finite).max()) if finite.size else 1.0
    y = [_pretty(t) for t in result.targets]
    custom = np.stack([result.bias_low, result.bias_high, result.layer_p, result.layer_p_adjusted], -1)
    fig = go.Figure(go.Heatmap(
        z=bias, x=list(result.layers), y=y, zmin=-span, zmax=span, customdata=custom,
        colorbar=dict(title=dict(text="Bias")), **DIVERGING_HEATMAP,
        hovertemplate=("%{y}, layer %{x}<br>Bias %{z:.3f}<br>CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                       "<br>p %{customdata[2]:.3f}, corrected %{customdata[3]:.3f}<extra></extra>"),
    ))
    ti, li = np.nonzero(result.chosen)
    if len(ti):
        fig.add_trace(go.Scatter(
            x=[result.layers[i] for i in li], y=[y[i] for i in ti], mode="markers", name="layers in the summary",
            marker=dict(symbol="circle", size=5, color="#222222"), hoverinfo="skip",
        ))
    si, sl = np.nonzero(result.surviving)
    fig.add_trace(go.Scatter(
        x=[result.layers[i] for i in sl], y=[y[i] for i in si], mode="markers",
        name=f"p < {result.alpha:g} after max-|T| correction over {_family(result)}",
        marker=dict(symbol="diamond-open", size=13, color="#222222", line=dict(width=2)), hoverinfo="skip",
        visible=True if len(si) else "legendonly",
    ))
    fig.update_layout(
        title=title or f"Bias per layer: Align(target, {_pretty(result.refs[0])}) − Align(target, {_pretty(result.refs[1])})",
        xaxis_title="layer", yaxis_title="target", yaxis_autorange="reversed",
        legend=dict(orientation="h", y=-0.25), xaxis=dict(dtick=1, showgrid=False, range=[min(result.layers) - 0.5, max(result.layers) + 0.5]), yaxis=dict(showgrid=False),
    )
    return apply_theme(fig)


def summary_figure(result, *, title: str | None = None) -> go.Figure:
    """Summary Bias per target with bootstrap CI bars; the permutation test written under each bar."""
    from analysis.bias.reading import p_text

    x = [_pretty(t) for t in result.targets]
    summary = np.asarray(result.summary, float)
    fig = go.Figure(go.Bar(
        x=x, y=summary, name="Bias (bootstrap CI)", marker_color=[QUALITATIVE[0] if s >= 0 else QUALITATIVE[3] for s in np.nan_to_num(summary)],
        error_y=dict(type="data", symmetric=False, array=result.ci_high - summary, arrayminus=summary - result.ci_low,
                     thickness=1.5, width=6, color="#222222"),
        customdata=np.stack([result.ci_low, result.ci_high, result.p_value, result.p_holm, result.minimum_detectable], -1),
        hovertemplate=("%{x}<br>Bias %{y:.3f}<br>CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                       "<br>p %{customdata[2]:.3f} (Holm %{customdata[3]:.3f})<br>detectable |Bias| ≥ %{customdata[4]:.3f}"
                       "<extra></extra>"),
        width=0.55,
    ))
    for i, t in enumerate(x):
        if not np.isfinite(result.p_value[i]):
            continue
        sig_ = result.p_holm[i] < result.alpha
        label = p_text(result.p_value[i], result.n_permutations) + ("" if sig_ else
                                                                    f"<br>n.s.; detectable ≥ {result.minimum_detectable[i]:.3f}")
        fig.add_annotation(x=t, y=0, yref="y", text=label, showarrow=False, yshift=-14 if summary[i] >= 0 else 14,
                           font=dict(size=10, color="#222222" if sig_ else "#777777"))
    missing = [x[i] for i in range(len(x)) if not np.isfinite(summary[i])]
    note = f" (no qualifying layer: {', '.join(missing)})" if missing else ""
    lines = [f"{x[i]}: {result.verdict(i)}" for i in range(len(x))]
    if result.differential is not None:
        from analysis.bias.reading import differential_verdict

        lines.append(differential_verdict(result.differential, result.alpha))
    caption = "<br>".join(lines) + (f"<br>Two-sided permutation tests: {result.n_permutations} re-partitions of "
                                     f"{_pretty(result.refs[0])} ∪ {_pretty(result.refs[1])}; Holm over targets.")
    fig.update_layout(
        title=title or f"Summary Bias ({_refs_label(result)}){note}",
        xaxis_title="target", yaxis_title=f"Bias (+: leans to {_pretty(result.refs[0])})", barmode="overlay",
        showlegend=False, margin=dict(b=110 + 16 * len(lines)),
    )
    fig.add_annotation(text=caption, xref="paper", yref="paper", x=0, y=-0.22, yanchor="top", xanchor="left",
                       showarrow=False, align="left", font=dict(size=10))
    fig.add_hline(y=0, line=dict(color="#888888", width=1))
    return apply_theme(fig)


def differential_figure(result, *, title: str | None = None) -> go.Figure:
    """Bias(X) − Bias(Y) per layer with the layers that survive max-|T| over layers marked; verdict as title."""
    from analysis.bias.reading import differential_verdict

    diff = result.differential
    fig = go.Figure()
    if diff is None:
        fig.add_annotation(text="Give two targets to compare (differential test)", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
        fig.update_layout(title=title or "Differential Bias", xaxis_visible=False, yaxis_visible=False)
        return apply_theme(fig)
    x, y = (_pretty(t) for t in diff.targets)
    layers = list(result.layers)
    fig.add_trace(go.Scatter(x=layers, y=diff.layer_effect, mode="lines+markers", name=f"Bias({x}) − Bias({y})",
                             line=dict(color=QUALITATIVE[0]),
                             customdata=np.stack([diff.layer_p, diff.layer_p_adjusted], -1),
                             hovertemplate="layer %{x}<br>%{y:.3f}<br>p %{customdata[0]:.3f}, corrected %{customdata[1]:.3f}<extra></extra>"))
    keep = np.nan_to_num(diff.layer_p_adjusted, nan=1.0) < result.alpha
    fig.add_trace(go.Scatter(x=[l for l, k in zip(layers, keep) if k], y=diff.layer_effect[keep], mode="markers",
                             name=f"p < {result.alpha:g} after max-|T| correction over {len(layers)} layers",
                             marker=dict(symbol="diamond-open", size=13, color="#222222", line=dict(width=2))))
    fig.add_hline(y=0, line=dict(color="#888888", width=1))
    fig.update_layout(title=title or f"Differential: {differential_verdict(diff, result.alpha)}", title_font_size=12,
                      xaxis_title="layer", yaxis_title=f"Bias({x}) − Bias({y})", xaxis=dict(dtick=1),
                      legend=dict(orientation="h", y=-0.25))
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
    ci = f" [{data.rho_low:.2f}, {data.rho_high:.2f}]" if np.isfinite(data.rho_low) else ""
    fig.update_layout(
        title=title or f"Conceptual vs behavioural Bias: Spearman ρ = {rho}{ci} (n = {n} triples, bootstrap 95 % CI)",
        xaxis_title="conceptual Bias (summary, bootstrap CI)", yaxis_title="behavioural Bias (log-prob difference, ± s.e.)",
        legend=dict(orientation="h", y=-0.25),
    )
    return apply_theme(fig)
