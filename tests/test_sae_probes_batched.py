"""The sparse probe's batched fits against scikit-learn's pipeline, problem by problem.

Oracle: ``make_pipeline(StandardScaler(), LogisticRegression(C, class_weight="balanced"))``
fitted per (k, fold) at ``tol=1e-10, max_iter=10000`` on the same folds, with the
latents ranked by |mean difference| on the training rows (recomputed here).
Both solve the same strictly convex problem in float64, so the weights agree to
the solvers' tolerance: cosine ≥ 0.999 (in practice 1 − 1e-9). A held-out text
whose score sits within that tolerance of 0 may flip, so balanced accuracies
may differ by one test text: 0.5 / (texts of its class in the fold).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from analysis.saes.probes import _probe_fits, compute_sparse_probe


def _planted(n_pos: int, n_neg: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse non-negative codes; latents 0..4 carry the concept with decreasing strength."""
    rng = np.random.default_rng(seed)

    def codes(m):
        return rng.exponential(0.5, (m, d)) * (rng.random((m, d)) < 0.2)

    pos, neg = codes(n_pos), codes(n_neg)
    pos[:, :5] += rng.exponential(1.0, (n_pos, 5)) * np.array([1.0, 0.6, 0.4, 0.3, 0.2])
    # degenerate columns StandardScaler must leave unscaled: never fires, constant
    pos[:, -2:] = 0.0
    neg[:, -2:] = 0.0
    pos[:, -1] = neg[:, -1] = 0.7
    return pos, neg


def _sklearn(X, y, ks, splits, C):
    acc = np.zeros((len(ks), len(splits)))
    coef = {}
    for f, (tr, te) in enumerate(splits):
        diff = np.abs(X[tr][y[tr] == 1].mean(0) - X[tr][y[tr] == 0].mean(0))
        order = np.argsort(-diff, kind="stable")
        for j, k in enumerate(ks):
            cols = order[:k]
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", tol=1e-10,
                                                                     max_iter=10000))
            clf.fit(X[tr][:, cols], y[tr])
            acc[j, f] = balanced_accuracy_score(y[te], clf.predict(X[te][:, cols]))
            lr = clf[-1]
            coef[j, f] = (lr.coef_[0], lr.intercept_[0])
    return acc, coef


@pytest.mark.parametrize(("n_pos", "n_neg", "d", "ks", "folds", "C"), [
    (60, 120, 300, (1, 2, 4, 8, 16, 32, 64), 5, 1.0),  # n_train > k: primal Newton
    (14, 22, 60, (3, 16, 40, 60), 4, 0.3),  # largest k > n_train (27): the dual path; k = all latents
])
def test_sparse_probe_matches_sklearn_pipeline(n_pos, n_neg, d, ks, folds, C):
    pos, neg = _planted(n_pos, n_neg, d, seed=n_pos)
    X = np.concatenate([pos, neg])
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    ks = np.array(ks)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y))
    w, b, acc = _probe_fits(X, y, ks, splits, C)
    ref_acc, ref_coef = _sklearn(X, y, ks, splits, C)

    for f, (_, te) in enumerate(splits):
        one_text = 0.5 / min((y[te] == 1).sum(), (y[te] == 0).sum())
        assert np.all(np.abs(acc[:, f] - ref_acc[:, f]) <= one_text + 1e-12), (f, acc[:, f], ref_acc[:, f])
    for (j, f), (coef, intercept) in ref_coef.items():
        k = ks[j]
        cos = coef @ w[j, f, :k] / (np.linalg.norm(coef) * np.linalg.norm(w[j, f, :k]))
        assert cos >= 0.999, (k, f, cos)
        assert np.all(w[j, f, k:] == 0.0)  # padding columns: weight exactly 0
        assert b[j, f] == pytest.approx(intercept, abs=1e-4 * (1 + abs(intercept)))
    if ks.max() == d:  # the degenerate columns rank last (|diff| = 0) and get weight 0 (scale 1, centred to 0)
        assert np.abs(w[-1, :, -2:]).max() < 1e-12

    curve = compute_sparse_probe(pos, neg, ks=ks, folds=folds, seed=0, C=C)
    np.testing.assert_allclose(curve.accuracy, acc.mean(1), rtol=0, atol=1e-15)
    assert curve.accuracy.max() > 0.75  # the planted latents are found
