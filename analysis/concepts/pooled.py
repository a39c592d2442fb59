"""Logistic fits whose rows are drawn from shared pools: one Gram matrix per pool.

Many CAV problems reuse the same texts: every concept's sample against a
background sample, every TCAV random split (two halves of the background),
every bootstrap draw or permutation. With an unpenalised intercept the fitted w
does not depend on how the rows are centred, so each pool's Gram matrix
(centred by the pool mean) is formed once and every problem (and fold) gathers
its block from it, inside the CPU workers of :mod:`analysis.concepts.logistic`.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float

from analysis.concepts.logistic import (
    _as_tensor, _map_chunks, _newton, _solve_blocks, _spd_solve, fit_logistic_gram, ridge_gram,
)
from analysis.vectors import unit


FOLD_TOL = 1e-8  # Newton tolerance of the fold fits, whose only output is held-out accuracy


def _projected_start(K: torch.Tensor, cross: torch.Tensor, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """α of the training rows' span closest to a full fit's w = Xᵀα: (K + λI)⁻¹ (cross · α).

    ``K``: training rows' Gram matrices, ``cross``: training rows × the full fit's
    rows, ``live``: 1 on real training rows, 0 on padding (which gets α = 0).
    (:func:`analysis.concepts.logistic.ridge_gram`, as the cold start).
    """
    target = live * (cross @ alpha[..., None])[..., 0]
    return _spd_solve(ridge_gram(K, live), target[..., None])[..., 0]


def cross_validate_gram(
    K: Float[torch.Tensor, "g n n"],
    y: Float[torch.Tensor, " n"],
    folds: list[tuple[np.ndarray, np.ndarray]],
    C: float,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
    n_full: int | None = None,
) -> tuple[Float[torch.Tensor, "h n"], Float[torch.Tensor, " h"], Float[torch.Tensor, "g f"]]:
    """Full fit and k-fold held-out accuracy of ``g`` problems that share labels and folds.

    ``K`` is each problem's Gram matrix over all its ``n`` rows; ``folds`` are
    ``(train, test)`` index arrays (e.g. sklearn's ``StratifiedKFold.split``).
    Returns the full-data ``(α, b)`` of the first ``n_full`` problems (default:
    all) and the accuracy per fold of all ``g``. See :func:`cross_validate_pool`.
    """
    g, n, _ = K.shape
    rows = torch.arange(n, device=K.device).expand(g, n)
    return cross_validate_pool(K, torch.arange(g, device=K.device), rows, y, folds, C,
                               tol=tol, max_iter=max_iter, n_full=n_full)


def cross_validate_pool(
    G: Float[torch.Tensor, "p r r"],
    pool: Float[torch.Tensor, " g"],
    rows: Float[torch.Tensor, "g n"],
    y: Float[torch.Tensor, " n"],
    folds: list[tuple[np.ndarray, np.ndarray]],
    C: float,
    *,
    tol: float = 1e-10,
    fold_tol: float = FOLD_TOL,
    max_iter: int = 100,
    n_full: int | None = None,
) -> tuple[Float[torch.Tensor, "h n"], Float[torch.Tensor, " h"], Float[torch.Tensor, "g f"]]:
    """:func:`cross_validate_gram` for problems whose rows are drawn from shared pools.

    ``G[p]`` is the Gram matrix of pool ``p``'s rows (centred by any fixed
    vector: with an unpenalised intercept the fitted w and the predictions do not
    depend on it); problem ``i`` is the rows ``rows[i]`` of pool ``pool[i]``, with
    labels ``y``. So a pool's Gram matrix is formed once for all the problems and
    folds drawn from it, and each problem's blocks are gathered from it. Returns
    ``(α, b)`` of the first ``n_full`` problems (default all; a null whose vectors
    are never used needs only its folds, ``n_full=0``) and the accuracy per fold
    of every problem.

    The folds of a problem with a full fit start from that fit's w projected onto
    the fold's training rows (:func:`_projected_start`: 5 Newton steps on
    Gemma-3-270M CAVs against 8 from :func:`_start`; the full fit's α merely cut
    to the training rows took 18-46). The others start cold. Folds only give
    held-out accuracies, so they stop at ``fold_tol``: after the last full Newton
    step the objective is then within ~1e-10 of its optimum and w within ~1e-5.
    """
    g, n = rows.shape
    dev = G.device
    y = _as_tensor(y, dev)
    pool = torch.as_tensor(pool, device=dev)
    rows = torch.as_tensor(rows, device=dev)
    h = g if n_full is None else n_full
    if h:
        r = rows[:h]
        alpha, b = fit_logistic_gram(G[pool[:h, None, None], r[:, :, None], r[:, None, :]], y.expand(h, n), C,
                                     tol=tol, max_iter=max_iter)
    else:
        alpha, b = G.new_zeros(0, n), G.new_zeros(0)
    n_tr = max(len(tr) for tr, _ in folds)
    n_te = max(len(te) for _, te in folds)

    def padded(parts, size):
        idx = torch.zeros(len(parts), size, dtype=torch.long, device=dev)
        live = torch.zeros(len(parts), size, dtype=torch.float64, device=dev)
        for i, part in enumerate(parts):
            idx[i, : len(part)] = torch.as_tensor(np.asarray(part), device=dev)
            live[i, : len(part)] = 1
        return idx, live

    tr, tr_live = padded([f[0] for f in folds], n_tr)  # (F, T); padding has weight 0
    te, te_live = padded([f[1] for f in folds], n_te)
    nf = len(folds)
    r_tr, r_te = rows[:, tr], rows[:, te]  # (g, F, T), (g, F, E)
    pf, rf = pool.repeat_interleave(nf), r_tr.reshape(g * nf, n_tr)  # one problem per (problem, fold)
    y_tr = y[tr].expand(g, nf, n_tr).reshape(g * nf, n_tr)
    w_tr = tr_live.expand(g, nf, n_tr).reshape(g * nf, n_tr)
    if not C > 0:
        raise ValueError(f"C={C}: the inverse regularisation strength must be positive")
    def block(sl: slice) -> torch.Tensor:
        return G[pf[sl, None, None], rf[sl, :, None], rf[sl, None, :]].double()

    def warm(sl: slice, K: torch.Tensor):  # fold problems sl of the first h problems
        i = torch.arange(sl.start, sl.stop, device=dev) // nf  # their problem
        cross = G[pf[sl, None, None], rf[sl, :, None], rows[i, None, :]].double()  # training rows × all rows
        return _projected_start(K, cross, alpha[i], w_tr[sl]), b[i]

    warm_part = _solve_blocks(block, h * nf, dev, y_tr[: h * nf], C, w_tr[: h * nf], fold_tol, max_iter, warm)
    shift = slice(h * nf, g * nf)
    cold_part = _solve_blocks(lambda sl: block(slice(sl.start + h * nf, sl.stop + h * nf)), (g - h) * nf, dev,
                              y_tr[shift], C, w_tr[shift], fold_tol, max_iter)
    a_f, b_f = (torch.cat(parts) for parts in zip(warm_part, cold_part))
    re = r_te.reshape(g * nf, n_te)
    af = a_f * w_tr

    def held_out_scores(sl: slice) -> torch.Tensor:
        k_te = G[pf[sl, None, None], re[sl, :, None], rf[sl, None, :]].double()
        return (k_te @ af[sl, :, None])[..., 0] + b_f[sl, None]

    scores = torch.cat(_map_chunks(held_out_scores, g * nf, dev))
    right = ((scores > 0).double() == y[te].expand(g, nf, n_te).reshape(g * nf, n_te)).double()
    acc = (right * te_live.repeat(g, 1)).sum(-1) / te_live.sum(-1).repeat(g)
    return alpha, b, acc.reshape(g, nf)


def fit_logistic_rows(
    x: Float[torch.Tensor, "p r d"] | np.ndarray,
    pool: np.ndarray | torch.Tensor,
    rows: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    C: float = 1.0,
    *,
    sample_weight: np.ndarray | torch.Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> tuple[Float[torch.Tensor, "g d"], Float[torch.Tensor, " g"]]:
    """Many logistic fits whose rows are drawn from a few shared pools: ``(w (g, d), intercept (g,))``.

    Problem ``i`` fits rows ``rows[i]`` of pool ``x[pool[i]]`` with labels ``y[i]`` and
    weights ``sample_weight[i]`` (a weight of 0 pads a short problem; a count
    stands for a row drawn that many times, as in a bootstrap). Each pool's
    Gram matrix (rows centred by the pool mean, which moves only the intercept)
    is formed once; every problem gathers its block from it, inside the CPU
    workers, and its w = Xᵀα is formed there too, so no (g, n, d) array exists.
    Same objective and solver as :func:`fit_logistic_batched` (rows ≤ d per problem).
    """
    if not C > 0:
        raise ValueError(f"C={C}: the inverse regularisation strength must be positive")
    xt = _as_tensor(x)
    dev = xt.device
    mu = xt.mean(1, keepdim=True)
    xc = xt - mu
    G = xc @ xc.transpose(1, 2)
    pool = torch.as_tensor(np.asarray(pool) if not isinstance(pool, torch.Tensor) else pool, device=dev).long()
    rows = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows, device=dev).long()
    g, n = rows.shape
    if pool.shape != (g,):
        raise ValueError(f"pool has shape {tuple(pool.shape)}; expected ({g},)")
    y = _as_tensor(y, dev).expand(g, n)
    sw = torch.ones_like(y) if sample_weight is None else _as_tensor(sample_weight, dev).expand(g, n)

    def one(sl: slice):
        p, r = pool[sl], rows[sl]
        alpha, bc = _newton(G[p[:, None, None], r[:, :, None], r[:, None, :]], y[sl], C, sw[sl], tol, max_iter)
        w = (xc[p[:, None], r].transpose(1, 2) @ alpha[..., None])[..., 0]
        return w, bc - (mu[p, 0] * w).sum(-1)

    out = _map_chunks(one, g, dev)
    return torch.cat([w for w, _ in out]), torch.cat([b for _, b in out])


class RowPool:
    """Every layer's background and concept rows as one pool, with one Gram matrix per layer.

    Each CAV problem (a concept's sample against a background sample) and each
    null split (two background halves) is a set of pool rows, so the pool's
    Gram matrix (centred by the pool mean; the logistic w does not depend on the
    centring) is formed once per layer and every problem's and fold's matrix is
    gathered from it, instead of stacking and multiplying each problem's rows.
    """

    def __init__(self, negatives: np.ndarray, positives: dict[str, np.ndarray], device: torch.device):
        parts = [negatives] + list(positives.values())
        self.offset = dict(zip([None, *positives], np.cumsum([0] + [p.shape[1] for p in parts])[:-1].tolist()))
        x = torch.as_tensor(np.concatenate(parts, axis=1), device=device).double()  # (l, R, d)
        self.x = x - x.mean(1, keepdim=True)
        self.gram = self.x @ self.x.transpose(1, 2)
        self.n_layers = x.shape[0]

    def rows(self, concept: str | None, idx) -> np.ndarray:
        """Pool rows of a problem: ``(positive rows, background rows)`` of ``concept``, or background rows."""
        if concept is None:
            return np.asarray(idx)
        pos_idx, neg_idx = idx
        return np.concatenate([self.offset[concept] + np.asarray(pos_idx), np.asarray(neg_idx)])

    def fit(self, problems: list[np.ndarray], y: np.ndarray, folds, C: float, *, n_full: int):
        """Unit CAVs (n_full, l, d) of the first ``n_full`` problems and fold accuracies (problems, l, f)."""
        n_l, dev = self.n_layers, self.gram.device
        rows = torch.as_tensor(np.repeat(np.stack(problems), n_l, axis=0), device=dev)  # problem-major, then layer
        layer = torch.arange(n_l, device=dev).repeat(len(problems))
        alpha, _, acc = cross_validate_pool(self.gram, layer, rows, torch.as_tensor(y, dtype=torch.float64, device=dev),
                                            folds, C, n_full=n_full * n_l)
        r = rows[: n_full * n_l]
        w = (self.x[layer[: n_full * n_l, None], r].transpose(1, 2) @ alpha[..., None])[..., 0]
        return (unit(w.cpu().numpy()).reshape(n_full, n_l, -1),
                acc.cpu().numpy().reshape(len(problems), n_l, -1))
