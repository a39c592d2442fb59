"""Figures for likelihood displacement: CHES distribution, CHES vs surface similarity,
DPO curves and over-optimisation indicators per step.

Every builder takes a DataFrame made by the analysis layer
(``likelihood.scores_frame`` / ``dpo.history_frame`` / ``dpo.compare_indicators``)
and returns a themed ``go.Figure``; nothing here computes model outputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.figures.theme import QUALITATIVE, apply_theme

SCORES = {"ches": "CHES", "ches_length_normalised": "Length-normalised CHES"}
SIMILARITIES = {"token_jaccard": "Token-overlap Jaccard", "edit_distance": "Normalised edit distance (tokens)"}


def _check(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: the frame has no columns {missing}; build it with the matching analysis function")


def _score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"score {score!r}: valid scores are {list(SCORES)}")
    return SCORES[score]


def ches_histogram_figure(frame: pd.DataFrame, *, score: str = "ches", cut: float | None = None) -> go.Figure:
    """Distribution of CHES over pairs; ``cut`` draws the filtering threshold."""
    label = _score(score)
    _check(frame, [score], "ches_histogram_figure")
    fig = go.Figure(go.Histogram(x=frame[score], nbinsx=min(40, max(5, len(frame) // 3)), name=label,
                                 marker_color=QUALITATIVE[0]))
    if cut is not None:
        fig.add_vline(x=cut, line_dash="dash", line_color=QUALITATIVE[3],
                      annotation_text="filter threshold", annotation_position="top right")
    title = f"{label} per preference pair (n = {len(frame)})"
    if {"len_chosen", "len_rejected"} <= set(frame.columns):
        single = int(((frame["len_chosen"] == 1) & (frame["len_rejected"] == 1)).sum())
        if single == len(frame):
            title += ": all single-token, so CHES = 0 by definition"
        elif single:
            title += f" ({single} single-token pairs at exactly 0)"
    fig.update_layout(title=title, xaxis_title=label, yaxis_title="pairs (count)", showlegend=False)
    return apply_theme(fig)


def ches_similarity_figure(frame: pd.DataFrame, *, score: str = "ches", similarity: str = "token_jaccard") -> go.Figure:
    """CHES against a surface similarity of y+ and y-, one marker per pair, coloured by kind."""
    label = _score(score)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity {similarity!r}: valid similarities are {list(SIMILARITIES)}")
    _check(frame, [score, similarity, "pair"], "ches_similarity_figure")
    kinds = frame["kind"].fillna("").astype(str) if "kind" in frame else pd.Series([""] * len(frame))
    fig = go.Figure()
    for i, kind in enumerate(sorted(kinds.unique())):
        sub = frame[kinds == kind]
        text = [f"pair {p}<br>+ {c[:60]}<br>− {r[:60]}" for p, c, r in
                zip(sub["pair"], sub.get("chosen", [""] * len(sub)), sub.get("rejected", [""] * len(sub)))]
        fig.add_trace(go.Scatter(
            x=sub[similarity], y=sub[score], mode="markers", name=kind or "pairs", text=text,
            hovertemplate="%{text}<br>x=%{x:.3f}, y=%{y:.4g}<extra></extra>",
            marker=dict(color=QUALITATIVE[i % len(QUALITATIVE)]),
        ))
    fig.update_layout(title=f"{label} vs surface similarity", xaxis_title=SIMILARITIES[similarity], yaxis_title=label)
    return apply_theme(fig)


def _watch_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("p_watch[")]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def _band(fig, frame: pd.DataFrame, col: str, name: str, color: str, *, row: int = 1, column: int = 1,
          dash: str | None = None, x: str = "step", group: str = "seed") -> None:
    """Mean over runs (``group``) per ``x`` as a line, with the min..max over runs as a band."""
    g = frame.groupby(x)[col]
    mean, lo, hi = g.mean(), g.min(), g.max()
    runs = int(frame[group].nunique()) if group in frame else 1
    if runs > 1:
        xs = list(mean.index)
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(hi) + list(lo)[::-1], fill="toself", mode="lines",
                                 line=dict(width=0), fillcolor=_rgba(color, 0.18), hoverinfo="skip",
                                 showlegend=False, legendgroup=name), row=row, col=column)
    fig.add_trace(go.Scatter(x=list(mean.index), y=list(mean), mode="lines", name=name, legendgroup=name,
                             line=dict(color=color, dash=dash)), row=row, col=column)


def _runs_note(frame: pd.DataFrame) -> str:
    runs = int(frame["seed"].nunique()) if "seed" in frame else 1
    return f"mean of {runs} runs (band: min–max)" if runs > 1 else "one run"


def dpo_curves_figure(frame: pd.DataFrame) -> go.Figure:
    """Per step, over runs: change of log p(y+), log p(y−) (whole responses) and the margin (left);
    first-response-position probabilities of y+, y− and the watched tokens (right)."""
    _check(frame, ["step", "logp_chosen_change", "logp_rejected_change", "margin"], "dpo_curves_figure")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=(
        "Change of log-probabilities since step 0", "Next-token probability after the prompt"))
    for i, (col, name) in enumerate([("logp_chosen_change", "Δ log p(y+)"), ("logp_rejected_change", "Δ log p(y−)"),
                                     ("margin", "reward margin")]):
        _band(fig, frame, col, name, QUALITATIVE[i], dash="dot" if col == "margin" else None)
    right = [("p_first_chosen", "p(y+ first token)"), ("p_first_rejected", "p(y− first token)")]
    right += [(c, f"p({c[len('p_watch['):-1]!r})") for c in _watch_columns(frame)]
    for j, (col, name) in enumerate(c for c in right if c[0] in frame):
        _band(fig, frame, col, name, QUALITATIVE[(3 + j) % len(QUALITATIVE)], column=2,
              dash="dash" if col == "p_first_rejected" else None)
    fig.update_xaxes(title_text="DPO step (optimizer updates)")
    fig.update_yaxes(title_text="nats, mean over pairs", row=1, col=1)
    fig.update_yaxes(title_text="probability (log scale)", type="log", row=1, col=2)
    fig.update_layout(title=f"DPO on a copy of the model: {_runs_note(frame)}", legend_title_text="series")
    return apply_theme(fig)


def dpo_indicators_figure(frame: pd.DataFrame) -> go.Figure:
    """Per step: mean top-k mass M_k and top-k entropy H_k over chosen and rejected responses.

    When y+ and y− give the same numbers at every step (single-token pairs:
    both are predicted from the same position) one line is drawn and the
    legend says so, instead of two lines hiding each other."""
    _check(frame, ["step", "topk_mass_chosen", "topk_entropy_chosen"], "dpo_indicators_figure")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=("Top-k mass M_k", "Top-k entropy H_k (nats)"))
    same = all(f"{s}_rejected" in frame and np.allclose(frame[f"{s}_chosen"], frame[f"{s}_rejected"], rtol=1e-6, atol=1e-9)
               for s in ("topk_mass", "topk_entropy"))
    sides = [("chosen", "y+ = y− (same predicting position)" if same else "y+")] + ([] if same else [("rejected", "y−")])
    for i, (side, label) in enumerate(sides):
        for col, stat in ((1, "topk_mass"), (2, "topk_entropy")):
            name = f"{stat}_{side}"
            if name in frame:
                sub = frame.rename(columns={name: label})
                _band(fig, sub, label, label, QUALITATIVE[i], column=col, dash="dash" if side == "rejected" else None)
                if col == 2:
                    fig.data[-1].showlegend = False
    fig.update_xaxes(title_text="DPO step (optimizer updates)")
    fig.update_yaxes(title_text="mass (mean over positions)", row=1, col=1)
    fig.update_yaxes(title_text="entropy, nats", row=1, col=2)
    fig.update_layout(title=f"Over-optimisation indicators per step: {_runs_note(frame)}", legend_title_text="response")
    return apply_theme(fig)


def dpo_gainers_figure(trajectories: pd.DataFrame, gainers: pd.DataFrame, *, n: int = 8) -> go.Figure:
    """Probability change at the first response position of the tokens that gained most (mean over runs),
    per step: how a token such as " Yes" is found without being named in advance."""
    _check(trajectories, ["seed", "step", "token_id", "p_change"], "dpo_gainers_figure")
    _check(gainers, ["token_id", "token", "p_change_mean"], "dpo_gainers_figure")
    fig = make_subplots(rows=1, cols=1)
    for i, (tid, token) in enumerate(zip(gainers["token_id"][:n], gainers["token"][:n])):
        sub = trajectories[trajectories["token_id"] == tid]
        if not sub.empty:
            _band(fig, sub, "p_change", repr(token), QUALITATIVE[i % len(QUALITATIVE)])
    fig.add_hline(y=0, line=dict(color="#888888", dash="dot", width=1))
    fig.update_xaxes(title_text="DPO step (optimizer updates)")
    fig.update_yaxes(title_text="Δ p(token | prompt) since step 0")
    runs = int(trajectories["seed"].nunique()) if len(trajectories) else 0
    fig.update_layout(title=f"Tokens whose probability rose most after the prompt ({runs} run{'s' * (runs != 1)})",
                      legend_title_text="token")
    return apply_theme(fig)


def dpo_rank_figure(frame: pd.DataFrame) -> go.Figure:
    """Rank of y+ among all tokens by probability gain (1 = gained most) and its first-token log-probs."""
    _check(frame, ["step", "rank_chosen_by_p_gain", "logp_first_chosen", "logp_first_rejected"], "dpo_rank_figure")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=("Rank of y+ by gain since step 0", "First-token log-probabilities"))
    data = frame[frame["step"] > 0]
    _band(fig, data, "rank_chosen_by_p_gain", "rank by Δp", QUALITATIVE[0])
    if "rank_chosen_by_logp_gain" in data:
        _band(fig, data, "rank_chosen_by_logp_gain", "rank by Δ log p", QUALITATIVE[1], dash="dot")
    _band(fig, frame, "logp_first_chosen", "log p(y+)", QUALITATIVE[2], column=2)
    _band(fig, frame, "logp_first_rejected", "log p(y−)", QUALITATIVE[3], column=2, dash="dash")
    fig.update_xaxes(title_text="DPO step (optimizer updates)")
    fig.update_yaxes(title_text="rank (1 = largest gain)", autorange="reversed", row=1, col=1)
    fig.update_yaxes(title_text="nats", row=1, col=2)
    fig.update_layout(title=f"Where y+ stands among the tokens that gain mass: {_runs_note(frame)}",
                      legend_title_text="series")
    return apply_theme(fig)


def token_geometry_figure(frame: pd.DataFrame) -> go.Figure:
    """<W+, W−> against ||W+||² per pair: above the diagonal the DPO push on the shared hidden state
    can lower p(y+) (the paper's single-token condition)."""
    _check(frame, ["pair", "inner", "norm_plus_sq", "chosen", "rejected"], "token_geometry_figure")
    fig = go.Figure()
    for flag, name, color in ((True, "may displace (⟨W+,W−⟩ > ‖W+‖²)", QUALITATIVE[3]), (False, "below the line", QUALITATIVE[0])):
        sub = frame[(frame["inner"] > frame["norm_plus_sq"]) == flag]
        fig.add_trace(go.Scatter(
            x=sub["norm_plus_sq"], y=sub["inner"], mode="markers", name=name, marker=dict(color=color, size=9),
            text=[f"pair {p}: +{c!r} −{r!r}" for p, c, r in zip(sub["pair"], sub["chosen"], sub["rejected"])],
            hovertemplate="%{text}<br>‖W+‖²=%{x:.4g}<br>⟨W+,W−⟩=%{y:.4g}<extra></extra>",
        ))
    lo = float(min(frame["norm_plus_sq"].min(), frame["inner"].min(), 0.0))
    hi = float(max(frame["norm_plus_sq"].max(), frame["inner"].max()))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="⟨W+,W−⟩ = ‖W+‖²",
                             line=dict(color="#888888", dash="dot")))
    fig.update_layout(title=f"Unembedding geometry of the first response tokens (n = {len(frame)} pairs)",
                      xaxis_title="‖W+‖² (squared norm of y+'s output embedding)",
                      yaxis_title="⟨W+, W−⟩", legend_title_text="pairs")
    return apply_theme(fig)


def indicator_comparison_figure(frame: pd.DataFrame) -> go.Figure:
    """Mean M_k and H_k per model and response side (from ``dpo.compare_indicators``)."""
    _check(frame, ["model", "response", "topk_mass", "topk_entropy"], "indicator_comparison_figure")
    means = frame.groupby(["model", "response"], sort=False)[["topk_mass", "topk_entropy"]].mean().reset_index()
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14, subplot_titles=("Top-k mass M_k", "Top-k entropy H_k (nats)"))
    for i, side in enumerate(("chosen", "rejected")):
        sub = means[means["response"] == side]
        for col, stat in ((1, "topk_mass"), (2, "topk_entropy")):
            fig.add_trace(go.Bar(x=sub["model"], y=sub[stat], name="y+" if side == "chosen" else "y−",
                                 legendgroup=side, showlegend=col == 1, marker_color=QUALITATIVE[i]), row=1, col=col)
    fig.update_layout(title="Indicators by model (mean over responses)", barmode="group")
    return apply_theme(fig)
