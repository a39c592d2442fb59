"""Batched L2 logistic regression: many small problems solved at once, in torch, on any device.

Objective (scikit-learn's ``LogisticRegression(C=C)``, lbfgs/newton-cg, exactly)::

    min_{w, b}  ½‖w‖² + C Σ_i s_i log(1 + exp(−y_i (x_i·w + b))),   y_i ∈ {−1, +1}

with the intercept ``b`` NOT penalised and ``s_i`` the sample weights (1 by
default; 0 drops a row, a count duplicates it, as sklearn's ``sample_weight``).

Solver. Here n (texts, ~100-300) ≪ d (d_model, 640), so the optimum lies in
the row span of X (the representer theorem: w = Xᵀα). We work in that
n-dimensional space with the Gram matrix K = XcXcᵀ of the rows centred by their
mean μ (centring changes only the intercept, b = b_c − μ·w, and removes the
huge shared direction of residual streams from K's spectrum), and take damped
Newton steps on (α, b). Each step solves with B = I + W½KW½ (Rasmussen &
Williams, GPML Alg. 3.1), whose eigenvalues are ≥ 1, by one batched Cholesky,
and eliminates the intercept with a second right-hand side. Newton converges
quadratically, so the tight default tolerance costs one or two extra steps.
Everything runs in float64 on ``x``'s device (CPU or CUDA alike).

Footguns: ``x`` is converted to float64 (memory 8·b·n·d bytes); the fitted
``w`` is exact for the objective, sklearn's own solution stops at ``tol=1e-4``,
so the two agree to its tolerance, not to machine precision.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from jaxtyping import Float

_STEPS = 2.0 ** -torch.arange(0, 12, dtype=torch.float64)  # backtracking candidates 1, ½, ¼, …


def _as_tensor(a, device=None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device if device is not None else a.device, dtype=torch.float64)
    return torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device)


def _softplus_neg(m: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(−m)), stable for large |m|."""
    return torch.nn.functional.softplus(-m)


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Batched LAPACK on CPU: one torch thread per call is ~20x faster than two.

    torch splits the batch over OpenMP threads and each calls a threaded LAPACK;
    on a small shared machine that oversubscribes the cores and they spin.
    """
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _start(K, ys, s, pos, neg, C, iters: int = 30):
    """Starting point: the mean-difference direction, its scale and the intercept optimised.

    Newton from w = 0 spends tens of damped steps when ‖x‖ is in the thousands (the
    loss is nearly linear far from the optimum); a 2-D Newton on (scale, b) along
    the class-mean difference lands near the optimum's scale in O(n) work per step.
    """
    y01 = (ys + 1) / 2
    a0 = s * (y01 / pos[:, None] - (1 - y01) / neg[:, None])
    u = (K @ a0[..., None])[..., 0]  # scores of the direction
    q = (a0 * u).sum(-1)  # its squared norm
    t = torch.zeros_like(pos)
    b = torch.log(pos / neg)
    for _ in range(iters):
        m = ys * (t[:, None] * u + b[:, None])
        p = torch.sigmoid(-m)
        g = -C * s * ys * p
        w = C * s * p * (1 - p)
        gt, gb = t * q + (g * u).sum(-1), g.sum(-1)
        htt, htb, hbb = q + (w * u * u).sum(-1), (w * u).sum(-1), w.sum(-1)
        det = (htt * hbb - htb**2).clamp_min(1e-300)
        dt, db = -(hbb * gt - htb * gb) / det, -(htt * gb - htb * gt) / det
        # cap the step in margin units so a nearly linear loss cannot throw it far off
        size = (dt.abs()[:, None] * u.abs() + db.abs()[:, None]).amax(-1)
        scale = (4.0 / size.clamp_min(1e-300)).clamp(max=1.0)
        t, b = t + scale * dt, b + scale * db
    return t[:, None] * a0, b


def fit_logistic_gram(
    K: Float[torch.Tensor, "b n n"],
    y: Float[torch.Tensor, "b n"],
    C: float,
    *,
    sample_weight: Float[torch.Tensor, "b n"] | None = None,
    tol: float = 1e-8,
    max_iter: int = 100,
) -> tuple[Float[torch.Tensor, "b n"], Float[torch.Tensor, " b"]]:
    """Kernel form: ``(α, b)`` with scores ``f = Kα + b`` and ``w = Xᵀα`` (K = XXᵀ, any X).

    ``y`` holds 0/1 labels. Stops when every problem's gradient norm (in w-space,
    ‖∇‖² = rᵀKr + (Σg)²) has fallen below ``tol`` × its starting value.
    """
    if not C > 0:
        raise ValueError(f"C={C}: the inverse regularisation strength must be positive")
    with _one_cpu_thread(K.device):
        return _newton(K.to(torch.float64), y, C, sample_weight, tol, max_iter)


def _newton(K, y, C, sample_weight, tol, max_iter):
    bsz, n, _ = K.shape
    dev = K.device
    y01 = _as_tensor(y, dev)
    s = torch.ones_like(y01) if sample_weight is None else _as_tensor(sample_weight, dev)
    if (s < 0).any():
        raise ValueError("sample weights must be non-negative")
    if bool(((y01 != 0) & (y01 != 1)).any()):
        raise ValueError("labels y must be 0 or 1")
    ys = 2 * y01 - 1
    pos, neg = (s * y01).sum(-1), (s * (1 - y01)).sum(-1)
    if bool(((pos <= 0) | (neg <= 0)).any()):
        raise ValueError("every problem needs at least one example of each class (with non-zero weight)")
    alpha, b = _start(K, ys, s, pos, neg, C)
    steps = _STEPS.to(dev)
    eye = torch.eye(n, dtype=torch.float64, device=dev)
    g0 = None
    for _ in range(max_iter):
        Ka = (K @ alpha[..., None])[..., 0]
        f = Ka + b[:, None]
        m = ys * f
        p = torch.sigmoid(-m)  # probability of the wrong class
        g = -C * s * ys * p  # d(data term)/df
        W = C * s * p * (1 - p)
        r = alpha + g
        Kr = (K @ r[..., None])[..., 0]
        gsum = g.sum(-1)
        gnorm = torch.sqrt((r * Kr).sum(-1).clamp_min(0) + gsum**2)
        if g0 is None:
            g0 = gnorm.clamp_min(1e-300)
        if bool((gnorm <= tol * g0).all()):
            break
        sw = W.sqrt()
        B = eye + sw[:, :, None] * K * sw[:, None, :]
        L, _ = torch.linalg.cholesky_ex(B)

        def solve_a(v: torch.Tensor) -> torch.Tensor:
            """(I + KW)⁻¹ v = v − K W½ B⁻¹ W½ v."""
            z = torch.cholesky_solve((sw * v)[..., None], L)[..., 0]
            return v - (K @ (sw * z)[..., None])[..., 0]

        u1 = solve_a(-Kr)
        u2 = solve_a(torch.ones_like(r))
        denom = (W * u2).sum(-1)
        db = (-gsum - (W * u1).sum(-1)) / torch.where(denom.abs() > 1e-300, denom, torch.ones_like(denom))
        df = u1 + u2 * db[:, None]
        da = -r - W * df
        # exact objective along the step: the quadratic term is a polynomial in t, f moves linearly
        Kda = (K @ da[..., None])[..., 0]
        q0, q1, q2 = (alpha * Ka).sum(-1), (alpha * Kda).sum(-1), (da * Kda).sum(-1)
        obj0 = 0.5 * q0 + C * (s * _softplus_neg(m)).sum(-1)
        t = steps[None, :]
        quad = 0.5 * (q0[:, None] + 2 * t * q1[:, None] + t**2 * q2[:, None])
        mt = ys[:, None, :] * (f[:, None, :] + t[..., None] * df[:, None, :])
        obj = quad + C * (s[:, None, :] * _softplus_neg(mt)).sum(-1)
        slope = (r * Kda).sum(-1) + gsum * db  # directional derivative ∇J·Δ (negative for descent)
        ok = obj <= obj0[:, None] + 1e-4 * t * slope[:, None]
        first = torch.where(ok.any(-1), ok.float().argmax(-1), torch.full_like(gsum, len(_STEPS) - 1, dtype=torch.long))
        tt = steps[first]
        alpha = alpha + tt[:, None] * da
        b = b + tt * db
    return alpha, b


def fit_logistic_batched(
    x: Float[torch.Tensor, "b n d"] | np.ndarray,
    y: Float[torch.Tensor, "b n"] | np.ndarray,
    C: float = 1.0,
    *,
    sample_weight: Float[torch.Tensor, "b n"] | np.ndarray | None = None,
    tol: float = 1e-8,
    max_iter: int = 100,
) -> tuple[Float[torch.Tensor, "b d"], Float[torch.Tensor, " b"]]:
    """Fit ``b`` independent L2 logistic regressions at once: ``(w (b, d), intercept (b,))``.

    ``x`` (tensor or array) decides the device; ``y`` holds 0/1 labels. Matches
    ``sklearn.linear_model.LogisticRegression(C=C).fit(x[i], y[i], sample_weight)``
    per problem (see the module docstring). Results are float64 tensors.
    """
    x = _as_tensor(x)
    if x.ndim != 3:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (problems, samples, features)")
    y = _as_tensor(y, x.device)
    if y.shape != x.shape[:2]:
        raise ValueError(f"y has shape {tuple(y.shape)}; expected {tuple(x.shape[:2])}")
    if sample_weight is not None:
        sample_weight = _as_tensor(sample_weight, x.device)
        if sample_weight.shape != y.shape:
            raise ValueError(f"sample_weight has shape {tuple(sample_weight.shape)}; expected {tuple(y.shape)}")
        mu = (sample_weight[..., None] * x).sum(1) / sample_weight.sum(1, keepdim=True).clamp_min(1e-300)
    else:
        mu = x.mean(1)
    xc = x - mu[:, None, :]
    K = xc @ xc.transpose(1, 2)
    alpha, bc = fit_logistic_gram(K, y, C, sample_weight=sample_weight, tol=tol, max_iter=max_iter)
    w = (xc.transpose(1, 2) @ alpha[..., None])[..., 0]
    return w, bc - (mu * w).sum(-1)
