"""Batched L2 logistic regression (analysis.concepts.logistic) against scikit-learn.

The oracle is sklearn's ``LogisticRegression(C=C)`` run to a tight tolerance
(``tol=1e-10``): at its default ``tol=1e-4`` sklearn stops short of the optimum
on large-norm data (our objective is then lower than sklearn's), so a loose
oracle would test sklearn's stopping rule, not the fit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.concepts import fit_logistic_batched, fit_logistic_gram, fit_logistic_rows


def _sk(x, y, C, sample_weight=None):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, solver="newton-cg", tol=1e-10, max_iter=10_000).fit(x, y, sample_weight=sample_weight)
    return clf.coef_[0], float(clf.intercept_[0])


def _objective(w, b, x, y, C, s=None):
    s = np.ones(len(y)) if s is None else s
    return 0.5 * w @ w + C * np.sum(s * np.logaddexp(0, -(2 * y - 1) * (x @ w + b)))


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _planted(rng, b, n, d, shift, scale=1.0, offset=0.0):
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    x = rng.normal(size=(b, n, d)) * scale + offset
    y = np.tile(np.r_[np.ones(n // 2), np.zeros(n - n // 2)], (b, 1))
    x[:, : n // 2] += shift * scale * u
    return x, y


@pytest.mark.parametrize("C", [1e-3, 0.1, 1.0, 10.0])
def test_matches_sklearn_on_planted_data_n_less_than_d(C):
    rng = np.random.default_rng(0)
    x, y = _planted(rng, b=4, n=60, d=120, shift=1.0)
    w, b = fit_logistic_batched(x, y, C)
    for i in range(4):
        ref_w, ref_b = _sk(x[i], y[i], C)
        assert _cos(w[i].numpy(), ref_w) >= 0.999
        # same optimum: the objective agrees to sklearn's tolerance, relative to its size
        ours, ref = _objective(w[i].numpy(), float(b[i]), x[i], y[i], C), _objective(ref_w, ref_b, x[i], y[i], C)
        assert ours <= ref * (1 + 1e-6)
        acc = np.mean(((x[i] @ w[i].numpy() + float(b[i])) > 0) == y[i])
        ref_acc = np.mean(((x[i] @ ref_w + ref_b) > 0) == y[i])
        assert abs(acc - ref_acc) <= 1 / len(y[i])


def test_matches_sklearn_with_large_norms_and_a_shared_offset():
    # residual-stream-like: norms in the thousands, a big common direction, n < d
    rng = np.random.default_rng(1)
    x, y = _planted(rng, b=3, n=80, d=200, shift=1.5, scale=40.0, offset=rng.normal(size=200) * 2000)
    w, b = fit_logistic_batched(x, y, 1.0)
    for i in range(3):
        ref_w, ref_b = _sk(x[i], y[i], 1.0)
        assert _cos(w[i].numpy(), ref_w) >= 0.999
        assert _objective(w[i].numpy(), float(b[i]), x[i], y[i], 1.0) <= _objective(ref_w, ref_b, x[i], y[i], 1.0) * (1 + 1e-6)


def test_n_greater_than_d_and_overlapping_classes():
    rng = np.random.default_rng(2)
    x, y = _planted(rng, b=2, n=300, d=8, shift=0.5)
    w, b = fit_logistic_batched(x, y, 0.3)
    for i in range(2):
        ref_w, ref_b = _sk(x[i], y[i], 0.3)
        # a non-separable, well-conditioned problem: both reach the optimum closely
        np.testing.assert_allclose(w[i].numpy(), ref_w, rtol=1e-4, atol=1e-6)
        assert float(b[i]) == pytest.approx(ref_b, abs=1e-5)


def test_sample_weights_equal_duplicated_rows_and_zero_weights_drop_rows():
    rng = np.random.default_rng(3)
    x, y = _planted(rng, b=1, n=40, d=30, shift=1.0)
    counts = rng.integers(0, 3, size=40).astype(float)
    counts[[0, 39]] = 1  # keep both classes
    w, b = fit_logistic_batched(x, y, 0.5, sample_weight=counts[None])
    keep = np.repeat(np.arange(40), counts.astype(int))
    w2, b2 = fit_logistic_batched(x[:, keep], y[:, keep], 0.5)
    np.testing.assert_allclose(w[0].numpy(), w2[0].numpy(), rtol=1e-6, atol=1e-9)
    assert float(b[0]) == pytest.approx(float(b2[0]), abs=1e-7)
    ref_w, _ = _sk(x[0], y[0], 0.5, sample_weight=counts)
    assert _cos(w[0].numpy(), ref_w) >= 0.999


def test_intercept_is_not_penalised():
    # shifting every x by a constant vector moves only the intercept (sklearn lbfgs/newton-cg semantics)
    rng = np.random.default_rng(4)
    x, y = _planted(rng, b=1, n=50, d=20, shift=1.0)
    shift = rng.normal(size=20) * 100
    w, b = fit_logistic_batched(x, y, 1.0)
    ws, bs = fit_logistic_batched(x + shift, y, 1.0)
    np.testing.assert_allclose(ws.numpy(), w.numpy(), rtol=1e-6, atol=1e-9)
    assert float(bs[0]) == pytest.approx(float(b[0] - shift @ w[0].numpy()), rel=1e-6, abs=1e-6)


def test_problems_in_a_batch_are_independent():
    rng = np.random.default_rng(5)
    x, y = _planted(rng, b=3, n=30, d=40, shift=1.0)
    w, b = fit_logistic_batched(x, y, 1.0)
    w1, b1 = fit_logistic_batched(x[1:2], y[1:2], 1.0)
    np.testing.assert_allclose(w[1].numpy(), w1[0].numpy(), rtol=1e-7, atol=1e-10)


def test_gram_form_gives_the_test_scores_without_features():
    rng = np.random.default_rng(6)
    x, y = _planted(rng, b=1, n=40, d=60, shift=1.0)
    K = torch.as_tensor(x @ x.transpose(0, 2, 1))
    alpha, b = fit_logistic_gram(K, torch.as_tensor(y), 1.0)
    w = x[0].T @ alpha[0].numpy()
    ref_w, ref_b = _sk(x[0], y[0], 1.0)
    assert _cos(w, ref_w) >= 0.999
    assert float(b[0]) == pytest.approx(ref_b, rel=1e-3, abs=1e-3)


def test_rejects_bad_input():
    x = np.zeros((1, 4, 3))
    with pytest.raises(ValueError, match="C="):
        fit_logistic_batched(x, np.array([[0, 1, 0, 1]]), 0.0)
    with pytest.raises(ValueError, match="each class"):
        fit_logistic_batched(x, np.array([[1, 1, 1, 1]]), 1.0)
    with pytest.raises(ValueError, match="expected"):
        fit_logistic_batched(x, np.array([[0, 1]]), 1.0)


def test_pooled_rows_with_counts_equal_sklearn_on_the_resampled_rows():
    # a bootstrap: rows drawn with replacement from two pools, as (unique row, count) with 0-weight padding;
    # the oracle fits sklearn on the explicitly duplicated rows
    rng = np.random.default_rng(3)
    pools, _ = _planted(rng, b=2, n=80, d=120, shift=1.5, scale=20.0, offset=300.0)
    labels = np.r_[np.ones(40), np.zeros(40)]
    problems, width = [], 0
    for i in range(20):  # > CPU_CHUNK: the chunked, threaded path
        p = i % 2
        drawn = np.r_[rng.integers(0, 40, 40), rng.integers(40, 80, 40)]
        uniq, counts = np.unique(drawn, return_counts=True)
        problems.append((p, drawn, uniq, counts))
        width = max(width, len(uniq))
    rows = np.zeros((20, width), int)
    weight = np.zeros((20, width))
    y = np.zeros((20, width))
    for i, (p, _, uniq, counts) in enumerate(problems):
        rows[i, : len(uniq)], weight[i, : len(uniq)], y[i, : len(uniq)] = uniq, counts, labels[uniq]
    w, b = fit_logistic_rows(pools, [p for p, *_ in problems], rows, y, 1.0, sample_weight=weight)
    for i, (p, drawn, _, _) in enumerate(problems):
        ref_w, ref_b = _sk(pools[p][drawn], labels[drawn], 1.0)
        assert _cos(w[i].numpy(), ref_w) >= 0.999
        ours = _objective(w[i].numpy(), float(b[i]), pools[p][drawn], labels[drawn], 1.0)
        assert ours <= _objective(ref_w, ref_b, pools[p][drawn], labels[drawn], 1.0) * (1 + 1e-6)


def test_spd_solve_equals_a_dense_solve_and_marks_a_matrix_that_is_not_positive_definite():
    from analysis.concepts.logistic import _spd_solve

    rng = np.random.default_rng(5)
    a = torch.as_tensor(rng.normal(size=(5, 30, 50)))
    B = a @ a.transpose(1, 2) + torch.eye(30, dtype=torch.float64)
    B[3] = -B[3]  # negative definite: potrf fails on it
    rhs = torch.as_tensor(rng.normal(size=(5, 30, 2)))
    z = _spd_solve(B.clone(), rhs)
    ok = [0, 1, 2, 4]
    ref = torch.linalg.solve(B[ok], rhs[ok])
    # backward-stable Cholesky: error ≲ n·eps·cond(B)·|z|
    bound = 30 * torch.finfo(torch.float64).eps * torch.linalg.cond(B[ok]).amax() * ref.abs().amax()
    assert (z[ok] - ref).abs().max() <= bound
    assert torch.isnan(z[3]).all()


