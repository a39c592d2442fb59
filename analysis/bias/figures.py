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


def _summary_layers(result) -> str:
    """What the heatmap's dots mark, in the words of the layer rule."""
    cfg = result.config or {}
    if cfg.get("layer_rule") == "layer":
        return "the layer the summary uses"
    fallback = any("every layer instead" in m for m in result.messages.values())
    return (f"layers in the summary<br>(all three CAVs ≥ {float(cfg.get('acc_threshold', 0.9)):g} accuracy"
            + ("; every layer where none is)" if fallback else ")"))


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
            x=[result.layers[i] for i in li], y=[y[i] for i in ti], mode="markers", name=_summary_layers(result),
            marker=dict(symbol="circle", size=5, color="#222222"), hoverinfo="skip",
        ))
    si, sl = np.nonzero(result.surviving)
    correction = f"p < {result.alpha:g} after max-|T| correction over {_family(result)}"
    if len(si):
        fig.add_trace(go.Scatter(
            x=[result.layers[i] for i in sl], y=[y[i] for i in si], mode="markers",
            name=correction.replace(" over ", "<br>over "),
            marker=dict(symbol="diamond-open", size=13, color="#222222", line=dict(width=2)), hoverinfo="skip",
        ))
    # plotly.js drops an empty trace from the legend: say in the title that no cell survives.
    none = "" if len(si) else f"; no cell has {correction}"
    fig.update_layout(
        title=title or (f"Bias per layer: Align(target, {_pretty(result.refs[0])}) − "
                        f"Align(target, {_pretty(result.refs[1])}){none}"),
        xaxis_title="layer", yaxis_title="target", yaxis_autorange="reversed",
        # Shown explicitly: plotly.js hides a legend with one visible entry, and the dots were explained nowhere.
        showlegend=True, legend=dict(orientation="h", yanchor="top", y=-0.3, xanchor="left", x=0), xaxis=dict(dtick=1, showgrid=False, range=[min(result.layers) - 0.5, max(result.layers) + 0.5]), yaxis=dict(showgrid=False),
    )
    return apply_theme(fig)


def _short_p(p: float, n_permutations: int) -> str:
    """``p = 0.350`` or ``p ≤ 0.05``: :func:`p_text` without the permutation count (a tick label is narrow)."""
    from analysis.bias.reading import p_text

    return p_text(p, n_permutations).split(" (")[0]


def summary_figure(result, *, title: str | None = None) -> go.Figure:
    """Summary Bias per target with bootstrap CI bars, coloured by the side the target leans to.

    Under each bar, its tick label says in words what the target's permutation test concludes
    (``analysis.bias.reading.decision``: Holm-corrected over targets) with the p it rests on; the
    full verdicts (minimum detectable effect, surviving layers) are in ``summary_frame``'s
    ``verdict`` column and on the page.
    """
    from analysis.bias.reading import decision

    n_t = len(result.targets)
    summary = np.asarray(result.summary, float)
    holm = n_t > 1
    ticks = []
    for i, t in enumerate(result.targets):
        p = result.p_holm[i] if holm else result.p_value[i]
        line = f"{'Holm ' if holm else ''}{_short_p(p, result.n_permutations)}" if np.isfinite(p) else ""
        ticks.append("<br>".join(filter(None, (_pretty(t), decision(result, i), line))))  # data text: no tags
    custom = np.stack([result.ci_low, result.ci_high, result.p_value, result.p_holm, result.minimum_detectable], -1)
    fig = go.Figure()
    r1, r2 = (_pretty(r) for r in result.refs)
    # One trace per side, so that the legend names both colours.
    for name, colour, keep in ((f"Bias > 0: nearer {r1}", QUALITATIVE[0], summary >= 0),
                               (f"Bias < 0: nearer {r2}", QUALITATIVE[3], summary < 0)):
        idx = np.flatnonzero(keep & np.isfinite(summary))
        if not len(idx):
            continue
        fig.add_trace(go.Bar(
            y=[ticks[i] for i in idx], x=summary[idx], name=name, marker_color=colour, width=0.55, orientation="h",
            error_x=dict(type="data", symmetric=False, array=result.ci_high[idx] - summary[idx],
                         arrayminus=summary[idx] - result.ci_low[idx], thickness=1.5, width=6, color="#222222"),
            customdata=custom[idx], text=[_pretty(result.targets[i]) for i in idx],
            hovertemplate=("%{text}<br>Bias %{x:.3f}<br>CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                           "<br>p %{customdata[2]:.3f} (Holm %{customdata[3]:.3f})"
                           "<br>detectable |Bias| ≥ %{customdata[4]:.3f}<extra></extra>"),
            textposition="none",
        ))
    missing = [_pretty(result.targets[i]) for i in range(n_t) if not np.isfinite(summary[i])]
    note = f" (no qualifying layer: {', '.join(missing)})" if missing else ""
    test = (f"two-sided permutation tests ({result.n_permutations} re-partitions of {r1} ∪ {r2})"
            + (f", Holm over {n_t} targets" if holm else "") + f", α = {result.alpha:g}")
    # Horizontal bars: the three-line target labels (name, conclusion, p) read level at any width.
    plot_px = max(240, 64 * n_t)
    fig.update_layout(
        title=title or f"Summary Bias ({_refs_label(result)}){note}; {test}",
        yaxis=dict(title="target: what its test concludes", type="category", categoryorder="array",
                   categoryarray=ticks, autorange="reversed", tickfont=dict(size=12)),
        xaxis_title="Bias (bootstrap CI)", barmode="overlay", showlegend=True, height=plot_px + 250,
        legend=dict(orientation="h", yanchor="top", y=-90 / plot_px, xanchor="left", x=0),
    )
    fig.add_vline(x=0, line=dict(color="#888888", width=1))
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

    widths = [3, 6] + [3] * len(refs)
    header = ["concept", f"top latents (value), first {per}"] + [f"shared with {_pretty(r)}" for r in refs]
    columns = [[_pretty(c) for c in concepts], [top(c) for c in concepts]] + [[common(c, r) for c in concepts]
                                                                             for r in refs]
    fig = go.Figure(go.Table(
        columnwidth=widths, header=dict(values=header, fill_color="#EEEEEE", align="left"),
        cells=dict(values=columns, align="left"),
    ))
    # A table's rows wrap, but its figure does not grow with them: size it for a narrow page, or the
    # last rows are cut off.
    rows = [_table_lines(header, widths)] + [_table_lines([col[i] for col in columns], widths)
                                             for i in range(len(concepts))]
    fig.update_layout(title=title or f"SAE latents carrying each concept (layer {shared.layer}) and target ∩ reference overlap",
                      title_font_size=14, margin=dict(l=20, r=20, t=60, b=20),
                      height=130 + sum(_TABLE_LINE_PX * n + _TABLE_PAD_PX for n in rows))
    return apply_theme(fig)


_TABLE_WIDTH_PX = 480  # the narrowest table this figure is sized for (a 1000 px page shows it about 540 px wide)
_TABLE_CHAR_PX = 8.0  # a generous mean character width at the table's 14 px font
_TABLE_LINE_PX, _TABLE_PAD_PX = 18, 14


def _table_lines(cells, widths) -> int:
    """How many lines the tallest cell of a table row wraps to at ``_TABLE_WIDTH_PX`` (by word, as Plotly wraps)."""
    most = 1
    for text, w in zip(cells, widths):
        chars = max(4, int(_TABLE_WIDTH_PX * w / sum(widths) / _TABLE_CHAR_PX) - 1)
        lines, line = 1, 0
        for word in str(text).split():
            if line and line + 1 + len(word) > chars:
                lines, line = lines + 1, len(word)
            else:
                line += (1 if line else 0) + len(word)
        most = max(most, lines)
    return most


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
