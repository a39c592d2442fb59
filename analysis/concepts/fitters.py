"""Single-problem CAV fitters (``FITTERS``) and their k-fold accuracy.

``logistic`` is one problem of the batched fitter (:mod:`analysis.concepts.logistic`);
``mean_diff`` is the class-mean difference with the threshold at the midpoint of
the projected class means. Used where one concept is fitted alone (the bias
page's probes, the CLI); :mod:`analysis.concepts.cavs` batches every layer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from jaxtyping import Float

from analysis import vectors
from analysis.concepts.logistic import fit_logistic_batched
from analysis.concepts.pooled import cross_validate_gram

Fitter = Callable[..., tuple[np.ndarray, float]]


def fit_logistic(x: Float[np.ndarray, "n d"], y: np.ndarray, *, C: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """L2 logistic regression, sklearn's ``LogisticRegression(C=C)`` objective: ``(weights (d,), intercept)``.

    One problem of :func:`analysis.concepts.logistic.fit_logistic_batched`
    (solved to the optimum; sklearn's default tol=1e-4 stops short of it on
    residual streams with norms in the thousands). ``seed`` is unused (the fit is
    deterministic) and kept for the fitter signature.
    """
    w, b = fit_logistic_batched(np.asarray(x)[None], np.asarray(y)[None], C)
    return w[0].numpy(), float(b[0])


def fit_mean_diff(x: Float[np.ndarray, "n d"], y: np.ndarray, *, C: float = 1.0, seed: int = 0) -> tuple[np.ndarray, float]:
    """Mean(pos) − mean(neg); the decision threshold is the midpoint of the two means."""
    pos, neg = x[y == 1].mean(0, dtype=np.float64), x[y == 0].mean(0, dtype=np.float64)
    w = pos - neg
    return w, float(-w @ (pos + neg) / 2)


FITTERS: dict[str, Fitter] = {"logistic": fit_logistic, "mean_diff": fit_mean_diff}


unit = vectors.unit


def folds_for(y: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``StratifiedKFold(n_folds, shuffle=True, random_state=seed)`` splits (they depend only on y)."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y))


def cv_accuracy(x: np.ndarray, y: np.ndarray, method: str, *, n_folds: int, C: float, seed: int) -> tuple[float, float]:
    """Mean and std of held-out accuracy over stratified, shuffled k folds."""
    folds = folds_for(y, n_folds, seed)
    if method == "logistic":
        acc = _logistic_cv(np.asarray(x)[None], y, folds, C, torch.device("cpu"))[2][0]
        return float(acc.mean()), float(acc.std())
    scores = []
    for train, test in folds:
        w, b = FITTERS[method](x[train], y[train], C=C, seed=seed)
        scores.append(float(np.mean(((x[test] @ w + b) > 0).astype(int) == y[test])))
    return float(np.mean(scores)), float(np.std(scores))


def _logistic_cv(x: Float[np.ndarray, "g n d"], y: np.ndarray, folds, C: float, device: torch.device,
                 n_full: int | None = None):
    """Unit CAVs (h, d) of the first ``n_full`` problems (default all), fold accuracies (g, f)
    of all ``g`` problems sharing labels and folds.

    Rows are centred per problem (it moves only the intercept) and each problem's
    Gram matrix is formed once; all folds are sub-blocks of it.
    """
    xt = torch.as_tensor(np.asarray(x), device=device).double()
    xc = xt - xt.mean(1, keepdim=True)
    K = xc @ xc.transpose(1, 2)
    alpha, _, acc = cross_validate_gram(K, torch.as_tensor(y, dtype=torch.float64, device=device), folds, C,
                                        n_full=n_full)
    w = (xc[: len(alpha)].transpose(1, 2) @ alpha[..., None])[..., 0]
    return unit(w.cpu().numpy()), None, acc.cpu().numpy()
