"""Cosine similarity: one definition, one behaviour on zero vectors.

``cosine(a, b)`` is 0.0 when either vector has zero norm (there is no
direction to compare, and 0 keeps heatmaps and sorts finite); it is never
NaN for finite inputs and is clipped to [-1, 1] against rounding.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

_EPS = 1e-30


def unit(v: Float[np.ndarray, "... d"]) -> Float[np.ndarray, "... d"]:
    """``v / ||v||`` along the last axis; zero rows stay zero."""
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, n, out=np.zeros_like(v), where=n > _EPS)


def cosine(a: Float[np.ndarray, "... d"], b: Float[np.ndarray, "... d"]) -> Float[np.ndarray, "..."]:
    """Row-wise cosine of ``a`` and ``b`` (broadcasting), 0 where either is zero."""
    return np.clip(np.sum(unit(a) * unit(b), axis=-1), -1.0, 1.0)


def cosine_matrix(a: Float[np.ndarray, "m d"], b: Float[np.ndarray, "n d"] | None = None) -> Float[np.ndarray, "m n"]:
    """All pairwise cosines of the rows of ``a`` (and ``b``; default ``a``), 0 for zero rows."""
    ua = unit(a)
    ub = ua if b is None else unit(b)
    return np.clip(ua @ ub.T, -1.0, 1.0)
