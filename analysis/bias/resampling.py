"""Resampled concept estimates for Bias: bootstrap over texts (used by the SAE
representations, logistic refits and ``analysis.compare``; dense mean-difference
runs use ``analysis.bias.significance``).

Both return, per concept, a CAV estimate ``(draws, layers, d)`` and (with SAE codes)
a mean-code difference ``(draws, k)``; ``analysis.bias.compute`` turns them into Bias.
See the ``analysis.bias.compute`` docstring for the choices (mean_diff vs warm-started
logistic refits; fake-concept sizes).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from analysis.sampling import rng as seeded_rng



def rng_for(seed: int, *salt) -> np.random.Generator:
    """A generator seeded by ``seed`` and the salt (``analysis.sampling.rng``)."""
    return seeded_rng(seed, *salt)


def weighted_means(w: Float[np.ndarray, "b n"], x: Float[np.ndarray, "l n d"]) -> Float[np.ndarray, "b l d"]:
    """``w @ x`` per layer: the (re)weighted means of the rows of ``x``."""
    return np.einsum("bn,lnd->bld", w, x, optimize=True)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    return np.stack([np.bincount(row, minlength=n) for row in idx]) / idx.shape[1]


def bootstrap_draws(
    positives: dict[str, Float[np.ndarray, "l n d"]],
    negatives: Float[np.ndarray, "l m d"],
    n_draws: int,
    seed: int,
    *,
    fit: str = "mean_diff",
    codes: dict[str, np.ndarray] | None = None,
    codes_bg: np.ndarray | None = None,
    C: float = 1.0,
    warm: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Resample every concept's texts and the background with replacement ``n_draws`` times.

    ``fit="mean_diff"``: CAV = weighted mean of positives − weighted mean of the background.
    ``fit="logistic"``: per draw, concept and layer, a logistic refit on the resampled
    positives against as many resampled background texts, warm-started from ``warm[c]`` (l, d).
    ``codes[c]`` (n, k) / ``codes_bg`` (m, k): SAE codes, resampled with the same draws.
    """
    m = negatives.shape[1]
    rng = seeded_rng(seed, "bootstrap-background")
    bg_idx = rng.integers(0, m, size=(n_draws, m))
    w_bg = _counts(bg_idx, m)
    bg_mean = weighted_means(w_bg, negatives) if fit == "mean_diff" else None
    cavs, diffs = {}, ({} if codes is not None else None)
    for name, pos in positives.items():
        n = pos.shape[1]
        idx = seeded_rng(seed, "bootstrap", name).integers(0, n, size=(n_draws, n))
        w = _counts(idx, n)
        if fit == "mean_diff":
            cavs[name] = weighted_means(w, pos) - bg_mean
        elif fit == "logistic":
            cavs[name] = _logistic_refits(pos, negatives, idx, bg_idx[:, :n], C, None if warm is None else warm.get(name))
        else:
            raise ValueError(f"bootstrap fit {fit!r}: valid fits are ('mean_diff', 'logistic')")
        if codes is not None:
            diffs[name] = w @ codes[name] - w_bg @ codes_bg
    return cavs, diffs


def _logistic_refits(pos, neg, idx, neg_idx, C: float, warm) -> np.ndarray:
    """Logistic CAVs of every draw and layer, ``(draws, l, d)``: one batched fit
    (``analysis.concepts.fit_logistic_rows``; a row drawn k times has weight k, which is
    sklearn's objective on the duplicated rows). ``warm`` is unused: the batched
    Newton needs no warm start (kept for the call signature)."""
    from analysis.concepts import fit_logistic_rows

    n_l, n, d = pos.shape
    draws = idx.shape[0]
    pooled = np.concatenate([pos, neg], 1)  # (l, n + m, d): one pool per layer
    picks = [np.unique(np.r_[idx[b], n + neg_idx[b]], return_counts=True) for b in range(draws)]
    width = max(len(u) for u, _ in picks)
    rows = np.zeros((draws, width), np.int64)
    weight = np.zeros((draws, width))
    for b, (u, c) in enumerate(picks):
        rows[b, : len(u)], weight[b, : len(u)] = u, c
    y = (rows < n).astype(np.float64)
    problems = np.arange(draws * n_l)
    w, _ = fit_logistic_rows(pooled, problems % n_l, rows[problems // n_l], y[problems // n_l], C,
                             sample_weight=weight[problems // n_l])
    return w.numpy().reshape(draws, n_l, d)


def mean_diff(pos: Float[np.ndarray, "l n d"], neg: Float[np.ndarray, "l m d"]) -> Float[np.ndarray, "l d"]:
    """Full-data mean-difference CAV (unnormalised), as ``analysis.cavs.fit_mean_diff``."""
    return pos.mean(1, dtype=np.float64) - neg.mean(1, dtype=np.float64)


