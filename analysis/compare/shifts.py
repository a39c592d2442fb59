"""How far a concept's texts move along a direction between two states, with a paired bootstrap.

For concept c with texts T_c and background texts B, states A and B, layer l and
a unit direction u_l (c's CAV in A, or a bias axis):

    shift_l = ( mean_{x in T_c} (h_B(x) − h_A(x)) − mean_{x in B} (h_B(x) − h_A(x)) ) · u_l

``subtract_background=False`` drops the background term (a steering vector
added everywhere moves every text; the audit compares that raw move with random
directions). ``relative`` divides by the concept's separation in A,
``(mean_{T_c} h_A − mean_B h_A) · u_l``: a shift of 0.1 moves the texts a tenth
of their distance from the background along u.

The bootstrap resamples texts (and background texts) with replacement; the
same draw is used for both states (paired: a text is the same text in A and B)
and for every step of a drift run. Projections are taken first (the statistic
is linear in the activations), so resampling costs only scalars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float

from analysis.sampling import rng
from analysis.vectors import unit


def project(acts: Float[np.ndarray, "l n d"], direction: Float[np.ndarray, "l d"]) -> Float[np.ndarray, "l n"]:
    """``acts[l, i] · unit(direction[l])`` in float64."""
    return np.einsum("lnd,ld->ln", np.asarray(acts, np.float64), unit(direction), optimize=True)


def boot_weights(n: int, n_boot: int, seed: int, *salt: object) -> Float[np.ndarray, "b n"]:
    """Resampling weights (counts / n) of ``n_boot`` bootstrap draws of ``n`` items, seeded by the salt."""
    idx = rng(seed, "compare-bootstrap", *salt).integers(0, n, size=(n_boot, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]) / n


@dataclass(frozen=True)
class Shift:
    """Per-layer shift of one concept along one direction, its bootstrap draws and the separation in A."""

    point: Float[np.ndarray, " l"]
    boot: Float[np.ndarray, "b l"]
    separation: Float[np.ndarray, " l"]


def shift(
    proj_pos_a: Float[np.ndarray, "l n"], proj_pos_b: Float[np.ndarray, "l n"],
    proj_neg_a: Float[np.ndarray, "l m"], proj_neg_b: Float[np.ndarray, "l m"],
    w_pos: Float[np.ndarray, "b n"], w_neg: Float[np.ndarray, "b m"], *, subtract_background: bool = True,
) -> Shift:
    """The shift from projected activations (see the module docstring) and its bootstrap under ``w_*``."""
    d_pos, d_neg = proj_pos_b - proj_pos_a, proj_neg_b - proj_neg_a
    point = d_pos.mean(1)
    boot = w_pos @ d_pos.T  # (b, l)
    if subtract_background:
        point = point - d_neg.mean(1)
        boot = boot - w_neg @ d_neg.T
    return Shift(point, boot, proj_pos_a.mean(1) - proj_neg_a.mean(1))


def summary(values: Float[np.ndarray, "... l"], mask: Bool[np.ndarray, " l"]) -> np.ndarray:
    """Mean over the chosen layers (NaN when none is chosen)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(np.shape(values)[:-1], np.nan)
    return np.asarray(values)[..., mask].mean(-1)


def relative(s: Shift, mask: Bool[np.ndarray, " l"]) -> tuple[float, np.ndarray]:
    """Summary shift in units of the separation: ``(point, boot draws)`` over the chosen layers.

    Each layer's shift is divided by that layer's separation before averaging, so
    layers with large residual norms do not dominate.
    """
    sep = np.where(np.abs(s.separation) > 1e-12, s.separation, np.nan)
    return float(summary(s.point / sep, mask)), summary(s.boot / sep, mask)


def interval(draws: np.ndarray, ci: float) -> tuple[float, float]:
    """Central percentile interval of the bootstrap draws (NaN draws ignored)."""
    q = 100 * (1 - ci) / 2
    finite = np.asarray(draws)[np.isfinite(draws)]
    if not finite.size:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [q, 100 - q])
    return float(lo), float(hi)


def excludes_zero(lo: float, hi: float) -> bool:
    """True when the interval lies strictly on one side of 0 (an interval [0, 0] does not)."""
    return bool((lo > 0) or (hi < 0))
