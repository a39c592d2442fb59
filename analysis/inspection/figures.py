"""Figures of the live-inspection view, built from a :class:`PromptInspection`.

Axes use ``insp.labels`` (``"i·token"``): Plotly merges category labels that are
equal, and a prompt often repeats a token.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from analysis.figures.theme import apply_theme
from analysis.inspection.lens import PromptInspection, check_layer_head, display_token

MAX_CELL_TEXT_TOKENS = 40  # beyond this many positions, top-1 tokens go to hover only
CELL_CHARS = 7  # at most this many characters per cell label ("…"); hover shows the whole token
ROW_CHARS = 64  # label characters that fit across the lens at the app's narrowest layout (1000 px window, 10 px font)


def cell_chars(n_positions: int) -> int:
    """Characters per cell label so labels fit their cells: ~64 across the plot at 1000 px, 2-7 per cell."""
    return max(2, min(CELL_CHARS, ROW_CHARS // max(1, n_positions)))


def cell_label(token: str, width: int = CELL_CHARS) -> str:
    """A lens cell's label: the visible token, shortened to ``width`` characters."""
    return token if len(token) <= width else token[: width - 1] + "…"


def residual_norms_figure(insp: PromptInspection, log: bool = False) -> go.Figure:
    """Heatmap of ‖resid_post[l]‖: tokens on x, layers on y.

    ``log`` colours by log10 of the norm: BOS often has a norm many times the
    others' (Gemma: ~100k vs ~10k), which flattens a linear scale.
    """
    z = np.log10(insp.resid_norms) if log else insp.resid_norms
    fig = go.Figure(go.Heatmap(
        z=z, x=insp.labels, y=list(range(insp.n_layers)), customdata=insp.resid_norms,
        colorbar=dict(title="log10 ‖resid‖" if log else "‖resid‖"),
        hovertemplate="token %{x}<br>layer %{y}<br>norm %{customdata:.2f}<extra></extra>",
    ))
    fig.update_layout(title="Residual-stream norm per token and layer",
                      xaxis_title="token", yaxis_title="layer (resid_post)")
    fig.update_xaxes(tickangle=-45)
    return apply_theme(fig)


def logit_lens_figure(insp: PromptInspection, metric: str = "prob") -> go.Figure:
    """Logit lens: the observed next token's probability (or log10 rank) per layer and position.

    Cells show the lens' top-1 token (short prompts); hover shows it with its probability.
    """
    if metric not in ("prob", "rank"):
        raise ValueError(f"metric {metric!r}: valid metrics are ('prob', 'rank')")
    if not insp.has_lens:
        raise ValueError("this inspection has no logit lens yet; call analysis.inspection.add_lens first")
    n = insp.n_tokens - 1
    top1 = np.vectorize(display_token, otypes=[object])(insp.lens_top_tokens[:, :n, 0])
    observed = np.array([display_token(t) for t in insp.tokens[1:]], dtype=object)
    custom = np.stack([
        top1, np.round(insp.lens_top_probs[:, :n, 0], 4).astype(object),
        np.broadcast_to(observed, top1.shape), insp.observed_rank.astype(object),
        np.round(insp.observed_prob, 4).astype(object),
    ], axis=-1)
    if metric == "prob":
        z, title, scale = insp.observed_prob, "p(next)", dict(zmin=0.0, zmax=1.0)
    else:
        z, title, scale = np.log10(insp.observed_rank), "log10 rank", dict(zmin=0.0, reversescale=True)
    show_text = n <= MAX_CELL_TEXT_TOKENS
    fig = go.Figure(go.Heatmap(
        z=z, x=insp.labels[:n], y=list(range(insp.n_layers)), customdata=custom,
        text=np.vectorize(lambda t: cell_label(t, cell_chars(n)), otypes=[object])(top1) if show_text else None,
        texttemplate="%{text}" if show_text else None,
        textfont=dict(size=10 if n <= 20 else 8), colorbar=dict(title=title), **scale,
        hovertemplate=(
            "input %{x} · layer %{y}<br>observed next %{customdata[2]}: p=%{customdata[4]}, "
            "rank %{customdata[3]}<br>lens top-1 %{customdata[0]} (p=%{customdata[1]})<extra></extra>"
        ),
    ))
    what = "probability" if metric == "prob" else "rank"
    fig.update_layout(title=f"Logit lens: {what} of the observed next token (cells: top-1 token)",
                      xaxis_title="input token (predicting the next one)", yaxis_title="layer (resid_post)")
    fig.update_xaxes(tickangle=-45)
    return apply_theme(fig)


def attention_figure(insp: PromptInspection, layer: int, head: int) -> go.Figure:
    """Attention pattern of one head: queries on y (top to bottom), keys on x."""
    check_layer_head(insp, layer, head)
    fig = go.Figure(go.Heatmap(
        z=insp.attention[layer, head], x=insp.labels, y=insp.labels, zmin=0.0, zmax=1.0,
        colorbar=dict(title="weight"),
        hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title=f"Attention pattern, layer {layer} head {head}",
                      xaxis_title="key token", yaxis_title="query token")
    fig.update_xaxes(tickangle=-45)
    fig.update_yaxes(autorange="reversed")
    return apply_theme(fig)


def next_token_figure(insp: PromptInspection) -> go.Figure:
    """Horizontal bars of the model's top-k next-token probabilities, largest on top."""
    labels = [f"{r + 1}·{display_token(t)}" for r, t in enumerate(insp.next_tokens)]
    fig = go.Figure(go.Bar(
        x=insp.next_probs, y=labels, orientation="h",
        text=[f"{p:.3f}" for p in insp.next_probs], textposition="outside",
        hovertemplate="%{y}<br>p=%{x:.4f}<extra></extra>",
    ))
    fig.update_layout(title="Next-token prediction after the prompt",
                      xaxis_title="probability", yaxis_title="token")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(range=[0, min(1.0, float(insp.next_probs.max()) * 1.2 + 0.02)])
    return apply_theme(fig)
