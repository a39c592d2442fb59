"""Permutation tests, bootstrap and effect sizes for Bias with mean-difference concept vectors.

Concept vector of c at a layer: ``v_c = mean(x̃ over c's texts) − origin``, where
``x̃`` is the activation, optionally z-scored per dimension with the background's
mean and standard deviation (``standardise``), and ``origin`` is the background
mean (``baseline="background"``) or the mean of all concept texts of the
analysis (``"contrast"``: each concept against the pooled others, since
``mean(c) − mean(others) ∝ mean(c) − grand mean``; a direction every concept
shares, such as a sentence format, cancels).

Every class mean is linear in a 0/1 selection of texts, so all permutations are
closed-form: with ``P`` the pooled (centred) texts, ``G = P Pᵀ`` and ``q = P u``,
a permuted concept's ``v·u = w q`` and ``‖v‖² = w G wᵀ`` for its weight row ``w``.
One matrix product per layer covers every permutation; nothing is refitted by
an iterative solver and nothing is re-extracted.

Tests (two-sided, ``p = (1 + #{|null| ≥ |observed|}) / (1 + B)``, resolution 1/(B+1)):

* per target, ``Bias(t) = 0``: the units of r1 ∪ r2 are re-partitioned into sets
  of r1's and r2's unit counts; t's vector is fixed;
* differential ``Bias(X) − Bias(Y) = 0`` (WEAT's statistic on concept vectors):
  the units of X ∪ Y are re-partitioned; the reference vectors are fixed;
* family-wise over the heatmap: max-|T| over every (target, layer) cell, T
  being Bias divided by the cell's null standard deviation (Westfall–Young).

Units are the exchangeable pieces (``analysis.bias.units``): a word with its
template sentences, or a single text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from analysis.sampling import rng as seeded_rng
from analysis.vectors import cosine

BASELINES = ("background", "contrast")


def _rows_times(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w @ x[l]`` for every layer as one flat BLAS matmul: ``(b, n) × (l, n, k) → (l, b, k)``.

    (A broadcast ``w[None] @ x`` loops over layers in numpy and is ~8× slower here.)
    """
    n_l, n, k = x.shape
    flat = w @ np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape(n, n_l * k)
    return np.swapaxes(flat.reshape(w.shape[0], n_l, k), 0, 1)
SD_FLOOR = 1e-6  # relative to the layer's median background sd: a constant dimension is not divided by ~0


@dataclass(frozen=True)
class Space:
    """Activations moved into the space where concept vectors are mean differences.

    ``texts[c]``: (l, n, d) float64, already centred on ``origin`` (so ``v_c`` is their mean);
    ``background``: (l, m, d) likewise; ``units[c]``: unit id per text.
    """

    texts: dict[str, np.ndarray]
    background: np.ndarray
    units: dict[str, np.ndarray]
    baseline: str
    standardise: bool

    def vector(self, c: str) -> Float[np.ndarray, "l d"]:
        return self.texts[c].mean(1)


def make_space(positives: dict[str, np.ndarray], negatives: np.ndarray, *, baseline: str = "background",
               standardise: bool = False, units: dict[str, np.ndarray] | None = None) -> Space:
    """Standardise (optional) and centre every concept's activations on the baseline's origin."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline {baseline!r}: valid baselines are {BASELINES}")
    neg = np.asarray(negatives, np.float64)
    mu = neg.mean(1, keepdims=True)
    scale = 1.0
    if standardise:
        sd = neg.std(1, keepdims=True)
        scale = np.maximum(sd, SD_FLOOR * np.median(sd, axis=-1, keepdims=True))
    texts = {c: (np.asarray(x, np.float64) - mu) / scale for c, x in positives.items()}
    bg = (neg - mu) / scale
    if baseline == "contrast":
        origin = np.concatenate(list(texts.values()), 1).mean(1, keepdims=True)
        texts = {c: x - origin for c, x in texts.items()}
        bg = bg - origin
    units = units or {c: np.arange(x.shape[1]) for c, x in texts.items()}
    return Space(texts=texts, background=bg, units={c: np.asarray(units[c]) for c in texts}, baseline=baseline,
                 standardise=standardise)


# ---------------------------------------------------------------- permutations

def _pool(space: Space, a: str, b: str):
    """Pooled texts (l, n, d) of a ∪ b, their unit ids (b's shifted) and a's unit count."""
    ua, ub = space.units[a], space.units[b]
    n_ua = int(ua.max()) + 1
    return np.concatenate([space.texts[a], space.texts[b]], 1), np.r_[ua, ub + n_ua], n_ua


def split_weights(units: np.ndarray, n_first: int, n_draws: int, seed: int, *salt) -> tuple[np.ndarray, np.ndarray]:
    """``n_draws`` random re-partitions of the units: rows of mean weights over texts for each side.

    Row 0 is the observed partition (units ``< n_first`` first), so ``null[0]`` is the observed value.
    """
    n_units = int(units.max()) + 1
    gen = seeded_rng(seed, "bias-permutation", *salt)
    order = np.stack([np.arange(n_units)] + [gen.permutation(n_units) for _ in range(n_draws)])
    first = np.zeros((n_draws + 1, n_units), bool)
    np.put_along_axis(first, order[:, :n_first], True, 1)
    sel = first[:, units].astype(np.float64)  # (draws+1, n_texts)
    w1 = sel / sel.sum(1, keepdims=True)
    w2 = (1 - sel) / (1 - sel).sum(1, keepdims=True)
    return w1, w2


def _split_cosines(sel: np.ndarray, pooled: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos of both sides' mean vectors with each fixed vector, per layer and draw: two ``(l, b, j)`` arrays.

    ``sel`` (b, n): 1 for texts on the first side; ``pooled`` (l, n, d); ``fixed`` (l, j, d).
    With ``G = P Pᵀ``: ``‖s P‖² = rowsum((s G) ∘ s)`` and, for the complement,
    ``‖(1−s) P‖² = 1ᵀG1 − 2 s G1 + sGs`` — one batched matmul for both sides; the
    permuted vectors are never formed.
    """
    gram = pooled @ np.swapaxes(pooled, 1, 2)  # (l, n, n)
    q = pooled @ np.swapaxes(fixed, 1, 2)  # (l, n, j)
    k1 = sel.sum(1)
    k2 = sel.shape[1] - k1
    s_g = _rows_times(sel, gram)  # (l, b, n)
    sgs = (s_g * sel[None]).sum(-1)  # (l, b)
    sg1 = s_g.sum(-1)
    total = gram.sum((1, 2))[:, None]
    norm1 = np.sqrt(np.maximum(sgs, 0.0)) / k1
    norm2 = np.sqrt(np.maximum(total - 2 * sg1 + sgs, 0.0)) / k2
    sq = _rows_times(sel, q)  # (l, b, j)
    dot1, dot2 = sq / k1[None, :, None], (q.sum(1)[:, None, :] - sq) / k2[None, :, None]
    fn = np.linalg.norm(fixed, axis=-1)[:, None, :]

    def cos(dot, norm):
        den = norm[..., None] * fn
        return np.divide(dot, den, out=np.zeros_like(dot), where=den > 0)

    return cos(dot1, norm1), cos(dot2, norm2)


def reference_null(space: Space, targets, r1: str, r2: str, n_draws: int, seed: int, *,
                   signed: bool = True) -> Float[np.ndarray, "b1 t l"]:
    """Bias(t) under re-partitions of r1 ∪ r2 (row 0: observed), for every target and layer."""
    pooled, units, n_first = _pool(space, r1, r2)
    w1, _ = split_weights(units, n_first, n_draws, seed, "refs", r1, r2)
    tv = np.stack([space.vector(t) for t in targets], 1)  # (l, t, d)
    c1, c2 = _split_cosines((w1 > 0).astype(np.float64), pooled, tv)
    out = np.moveaxis(c1 - c2, 0, -1)  # (b, t, l)
    return out if signed else np.abs(out)


def differential_null(space: Space, x: str, y: str, r1: str, r2: str, n_draws: int, seed: int, *,
                      signed: bool = True) -> Float[np.ndarray, "b1 l"]:
    """Bias(X) − Bias(Y) under re-partitions of X ∪ Y (row 0: observed), per layer."""
    pooled, units, n_first = _pool(space, x, y)
    wx, _ = split_weights(units, n_first, n_draws, seed, "targets", x, y)
    rv = np.stack([space.vector(r1), space.vector(r2)], 1)  # (l, 2, d)
    cx, cy = _split_cosines((wx > 0).astype(np.float64), pooled, rv)  # (l, b, 2)
    bx, by = cx[..., 0] - cx[..., 1], cy[..., 0] - cy[..., 1]
    out = (bx - by) if signed else (np.abs(bx) - np.abs(by))
    return out.T


def p_two_sided(observed, null: np.ndarray) -> np.ndarray:
    """``(1 + #{|null| ≥ |observed|}) / (1 + B)`` along the first axis of ``null`` (B draws)."""
    obs = np.abs(np.asarray(observed, np.float64))
    tol = 1e-12 * np.maximum(1.0, obs)  # the observed split itself ties with a redraw of it
    return (1 + np.sum(np.abs(null) >= obs - tol, axis=0)) / (1 + null.shape[0])


def max_t_adjusted(observed: np.ndarray, null: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Westfall–Young max-|T| adjusted p per cell; T = value / the cell's null sd. NaN outside ``valid``."""
    observed = np.asarray(observed, np.float64)
    valid = np.isfinite(observed) if valid is None else np.asarray(valid, bool) & np.isfinite(observed)
    sd = null.std(0)
    ok = valid & (sd > 0)
    out = np.full(observed.shape, np.nan)
    if not ok.any():
        return out
    t_null = np.abs(null[:, ok] / sd[ok])  # (B, cells)
    t_obs = np.abs(observed[ok] / sd[ok])
    peak = t_null.max(1)
    tol = 1e-9 * np.maximum(1.0, t_obs)
    out[ok] = (1 + (peak[:, None] >= t_obs[None, :] - tol).sum(0)) / (1 + null.shape[0])
    return out


def holm(p) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def minimum_detectable(null: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> float:
    """The |effect| the test detects with ``power`` at ``alpha``: (z_{1−α/2} + z_power) × null sd."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return float(z * np.std(null))


# ---------------------------------------------------------------- bootstrap

def bootstrap_vectors(space: Space, names, n_draws: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per concept, ``(b, l, d)`` vectors with its units (and the background's texts) resampled,
    and the ``(b, n_units)`` resample counts of its units.

    The origin is resampled with them: the background mean (already subtracted, so its
    resampled mean is subtracted again) or, for ``contrast``, the resampled grand mean.
    """
    means, sizes, unit_counts = {}, {}, {}
    for c in names:
        x, units = space.texts[c], space.units[c]
        n_units = int(units.max()) + 1
        draws = seeded_rng(seed, "bias-bootstrap", c).integers(0, n_units, size=(n_draws, n_units))
        counts = np.stack([np.bincount(row, minlength=n_units) for row in draws]).astype(np.float64)
        unit_counts[c] = counts
        w = counts[:, units]
        w /= w.sum(1, keepdims=True)
        means[c] = np.swapaxes(_rows_times(w, x), 0, 1)  # (b, l, d)
        sizes[c] = w.shape[1]
    if space.baseline == "background":
        m = space.background.shape[1]
        draws = seeded_rng(seed, "bias-bootstrap-background").integers(0, m, size=(n_draws, m))
        w = np.stack([np.bincount(row, minlength=m) for row in draws]) / m
        origin = np.swapaxes(_rows_times(w, space.background), 0, 1)
    else:
        total = sum(sizes.values())
        origin = sum(sizes[c] * means[c] for c in names) / total
    return {c: means[c] - origin for c in names}, unit_counts


def bootstrap_bias(boot: dict[str, np.ndarray], targets, r1: str, r2: str, *, signed: bool = True) -> np.ndarray:
    """``(b, t, l)`` Bias of every bootstrap draw."""
    out = np.stack([cosine(boot[t], boot[r1]) - cosine(boot[t], boot[r2]) for t in targets], 1)
    return out if signed else np.abs(out)


# ---------------------------------------------------------------- effect size

def unit_scores(space: Space, c: str, r1v: np.ndarray, r2v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """WEAT's per-word association s(w) for each unit of c: Bias of the unit's mean vector, mean over ``mask`` layers.

    ``r1v``/``r2v``: (l, d) or (b, l, d) reference vectors; returns (n_units,) or (b, n_units).
    """
    x, units = space.texts[c], space.units[c]
    member = np.zeros((int(units.max()) + 1, len(units)))
    member[units, np.arange(len(units))] = 1
    member /= member.sum(1, keepdims=True)
    u = np.swapaxes(_rows_times(member, x[mask]), 0, 1)  # (units, l', d)
    r1v, r2v = np.asarray(r1v)[..., mask, :], np.asarray(r2v)[..., mask, :]
    if r1v.ndim == 2:
        return (cosine(u, r1v[None]) - cosine(u, r2v[None])).mean(-1)
    un = np.linalg.norm(u, axis=-1)  # (units, l'): cosines without a (b, units, l', d) copy

    u_l = np.swapaxes(u, 0, 1)  # (l', units, d)

    def cos(r):
        den = un[None] * np.linalg.norm(r, axis=-1)[:, None]
        dots = np.moveaxis(u_l @ np.moveaxis(r, 0, -1), -1, 0).swapaxes(1, 2)  # (b, units, l')
        return np.divide(dots, den, out=np.zeros_like(dots), where=den > 0)

    return (cos(r1v) - cos(r2v)).mean(-1)


def weighted_sd(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Standard deviation of ``scores`` (b, n) with frequency weights ``counts`` (b, n), ddof 1."""
    total = counts.sum(-1)
    mean = (scores * counts).sum(-1) / total
    var = (counts * (scores - mean[..., None]) ** 2).sum(-1) / np.maximum(total - 1, 1)
    return np.sqrt(var)


def effect_size(effect: float, scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """d = (Bias(X) − Bias(Y)) / sd of the units' associations over X ∪ Y (WEAT's denominator)."""
    sd = float(np.std(np.r_[scores_x, scores_y], ddof=1))
    return effect / sd if sd > 0 else float("nan")
