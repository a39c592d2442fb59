"""Figures for likelihood displacement: CHES distribution, CHES vs surface similarity,
DPO curves and over-optimisation indicators per step.

Every builder takes a DataFrame made by the analysis layer
(``likelihood.scores_frame`` / ``dpo.history_frame`` / ``dpo.compare_indicators``)
and returns a themed ``go.Figure``; nothing here computes model outputs.
"""

from __future__ import annotations

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
    fig.update_layout(title=f"{label} per preference pair (n = {len(frame)})", xaxis_title=label,
                      yaxis_title="pairs", showlegend=False)
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


def dpo_curves_figure(frame: pd.DataFrame) -> go.Figure:
    """Per step: mean log p(y+), log p(y-) and the margin (left); watched-token probabilities (right)."""
    _check(frame, ["step", "logp_chosen", "logp_rejected", "margin", "loss"], "dpo_curves_figure")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Log-probabilities and margin", "Watched next tokens"))
    series = [("logp_chosen", "log p(y+)"), ("logp_rejected", "log p(y−)"), ("margin", "reward margin"), ("loss", "DPO loss")]
    for i, (col, name) in enumerate(series):
        fig.add_trace(go.Scatter(x=frame["step"], y=frame[col], mode="lines+markers", name=name,
                                 line=dict(color=QUALITATIVE[i], dash="dot" if col in ("margin", "loss") else None)),
                      row=1, col=1)
    for j, col in enumerate(_watch_columns(frame)):
        token = col[len("p_watch["):-1]
        fig.add_trace(go.Scatter(x=frame["step"], y=frame[col], mode="lines+markers", name=f"p({token!r})",
                                 line=dict(color=QUALITATIVE[(4 + j) % len(QUALITATIVE)])), row=1, col=2)
    fig.update_xaxes(title_text="DPO step")
    fig.update_yaxes(title_text="mean over pairs", row=1, col=1)
    fig.update_yaxes(title_text="probability after the prompt", type="log", row=1, col=2)
    fig.update_layout(title="DPO on a copy of the model")
    return apply_theme(fig)


def dpo_indicators_figure(frame: pd.DataFrame) -> go.Figure:
    """Per step: mean top-k mass M_k and top-k entropy H_k over chosen and rejected responses."""
    _check(frame, ["step", "topk_mass_chosen", "topk_entropy_chosen"], "dpo_indicators_figure")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Top-k mass M_k", "Top-k entropy H_k (nats)"))
    for i, side in enumerate(("chosen", "rejected")):
        for col, stat in ((1, "topk_mass"), (2, "topk_entropy")):
            name = f"{stat}_{side}"
            if name in frame:
                fig.add_trace(go.Scatter(x=frame["step"], y=frame[name], mode="lines+markers",
                                         name=f"{'y+' if side == 'chosen' else 'y−'}", legendgroup=side,
                                         showlegend=col == 1, line=dict(color=QUALITATIVE[i])), row=1, col=col)
    fig.update_xaxes(title_text="DPO step")
    fig.update_layout(title="Over-optimisation indicators per step")
    return apply_theme(fig)


def indicator_comparison_figure(frame: pd.DataFrame) -> go.Figure:
    """Mean M_k and H_k per model and response side (from ``dpo.compare_indicators``)."""
    _check(frame, ["model", "response", "topk_mass", "topk_entropy"], "indicator_comparison_figure")
    means = frame.groupby(["model", "response"], sort=False)[["topk_mass", "topk_entropy"]].mean().reset_index()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Top-k mass M_k", "Top-k entropy H_k (nats)"))
    for i, side in enumerate(("chosen", "rejected")):
        sub = means[means["response"] == side]
        for col, stat in ((1, "topk_mass"), (2, "topk_entropy")):
            fig.add_trace(go.Bar(x=sub["model"], y=sub[stat], name="y+" if side == "chosen" else "y−",
                                 legendgroup=side, showlegend=col == 1, marker_color=QUALITATIVE[i]), row=1, col=col)
    fig.update_layout(title="Indicators by model (mean over responses)", barmode="group")
    return apply_theme(fig)
