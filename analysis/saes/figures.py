"""Figures for SAE latents: concept latents, sparse-probe accuracy, latent cards."""

from __future__ import annotations

import plotly.graph_objects as go

from analysis.figures.theme import QUALITATIVE, apply_theme


def latent_label(latent: int, tokens=()) -> str:
    """``#1234: 'good' 'great'``: a latent named by its id and (quoted, so spaces show) its top tokens."""
    return f"#{int(latent)}: " + " ".join(repr(t) for t in tokens) if tokens else f"#{int(latent)}"


def concept_latents_figure(data, top: int = 20, tokens: dict[int, tuple[str, ...]] | None = None) -> go.Figure:
    """Horizontal bars: the ``top`` latents by mean pooled code, concept minus background.

    One bar per latent on a categorical axis, labelled with the latent id and, given ``tokens``
    (``analysis.saes.latent_top_tokens``), the tokens of the concept's texts where it peaks.
    """
    frame = data.frame(top).iloc[::-1]
    tokens = tokens or {}
    labels = [latent_label(i, tokens.get(int(i), ())) for i in frame["latent"]]
    fig = go.Figure(go.Bar(
        x=frame["diff"], y=labels, orientation="h",
        marker_color=QUALITATIVE[0],
        customdata=frame[["mean_concept", "mean_background"]].to_numpy(),
        hovertemplate="latent %{y}<br>diff %{x:.3f}<br>concept %{customdata[0]:.3f}"
                      "<br>background %{customdata[1]:.3f}<extra></extra>",
    ))
    fig.update_layout(
        title=(f"SAE latents of '{data.concept}': mean activation, concept − background "
               f"({data.pooling}-pooled, {data.n_pos} vs {data.n_neg} texts)"),
        xaxis_title="concept − background",  # short: long latent labels leave the bars little width
        yaxis=dict(title="latent: top tokens in the concept's texts" if tokens else "latent", type="category"),
        height=max(360, 24 * len(frame) + 140), bargap=0.25,
    )
    return apply_theme(fig)


def probe_accuracy_figure(curve) -> go.Figure:
    """Cross-validated balanced accuracy of the sparse probe against the number of latents k."""
    fig = go.Figure(go.Scatter(
        x=curve.ks, y=curve.accuracy, mode="lines+markers", name="probe",
        error_y=dict(type="data", array=curve.accuracy_std, visible=True),
        hovertemplate="k=%{x}<br>accuracy %{y:.3f}<extra></extra>",
    ))
    fig.add_hline(y=curve.chance, line_dash="dash", line_color="#888888",
                  annotation_text="chance", annotation_position="bottom right")
    fig.update_layout(
        title=f"Sparse probe on SAE latents: '{curve.concept}' vs background ({curve.folds}-fold CV)",
        xaxis=dict(title="k (top latents by |mean difference|, ranked per training fold)", type="log",
                   tickvals=list(curve.ks), ticktext=[str(k) for k in curve.ks]),
        yaxis=dict(title="held-out balanced accuracy", range=[min(0.4, float(curve.accuracy.min()) - 0.05), 1.02]),
        showlegend=False,
    )
    return apply_theme(fig)


def latent_histogram_figure(card) -> go.Figure:
    """Histogram of the latent's non-zero per-token activations over the corpus."""
    fig = go.Figure(go.Histogram(x=card.activations, nbinsx=40, marker_color=QUALITATIVE[2]))
    fig.update_layout(
        title=f"Latent #{card.latent}: non-zero activations (fires on {100 * card.frac_active:.2f}% of tokens)",
        xaxis_title="activation", yaxis_title="tokens", bargap=0.05,
    )
    return apply_theme(fig)


def promoted_tokens_figure(card) -> go.Figure:
    """The tokens the latent's decoder row promotes most (W_dec[i] @ W_U)."""
    labels = [repr(t) for t in card.promoted_tokens][::-1]
    fig = go.Figure(go.Bar(x=list(card.promoted_logits[::-1]), y=labels, orientation="h",
                           marker_color=QUALITATIVE[1]))
    fig.update_layout(
        title=f"Latent #{card.latent}: tokens promoted by its decoder direction",
        xaxis_title="W_dec[i] · W_U (logit contribution per unit activation)", yaxis_title="token",
        height=max(360, 26 * len(labels) + 140),
    )
    return apply_theme(fig)
