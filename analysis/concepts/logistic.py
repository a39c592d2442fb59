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

import ctypes
import functools
import os
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from jaxtyping import Float

ITERS = [0]  # problem-iterations run (a diagnostic for the bench)
CPU_CHUNK = 16  # problems per CPU solve: 16 Gram matrices of 200² float64 fit in L2/L3 cache
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
    """Batched LAPACK on CPU: one torch (and BLAS) thread per call is ~20x faster than two.

    torch splits the batch over OpenMP threads and each calls a threaded LAPACK;
    on a small shared machine that oversubscribes the cores and they spin. The
    CPU solves call SciPy's LAPACK (:func:`_spd_solve`), whose OpenBLAS has its
    own thread pool: it is held to one thread too.
    """
    if device.type != "cpu":
        yield
        return
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(old)


def _cholesky(B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factors of a batch of symmetric positive definite ``B`` (overwritten), and which failed.

    The factor is ``U`` with B = UᵀU in B's upper triangle (the lower one keeps
    B's entries). CPU: LAPACK potrf per matrix (:func:`_lapack`), which skips the
    full pass that ``torch.linalg.cholesky_ex`` spends zeroing the other triangle
    (on 160×160 blocks that pass costs as much as the factorisation) and releases
    the GIL, so the chunks run on all cores. Other devices: torch, batched.
    """
    if B.device.type != "cpu":
        L, info = torch.linalg.cholesky_ex(B)
        return L.mT, info != 0
    potrf = _lapack()
    Bn = B.numpy()
    n, info = ctypes.c_int(B.shape[1]), ctypes.c_int(0)
    failed = torch.zeros(len(Bn), dtype=torch.bool)
    for i in range(len(Bn)):
        # a C-order symmetric matrix is its own Fortran view, and Fortran's lower factor L is
        # the upper triangle U = Lᵀ in C order
        potrf(b"L", n, Bn[i].ctypes.data, n, info)
        failed[i] = info.value != 0
    return B, failed


def _cho_solve(U: torch.Tensor, failed: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """B⁻¹·rhs from :func:`_cholesky`'s factors (NaN where the factorisation failed).

    Two batched triangular solves (on the CPU 3× faster than potrs on 2 right-hand sides).
    """
    z = torch.linalg.solve_triangular(U, torch.linalg.solve_triangular(U.mT, rhs, upper=False), upper=True)
    return torch.where(failed[:, None, None], torch.full_like(z, float("nan")), z)


def _spd_solve(B: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """B⁻¹·rhs for a batch of symmetric positive definite B (B is overwritten; NaN where B is not PD)."""
    return _cho_solve(*_cholesky(B), rhs)


@functools.cache
def _lapack():
    """SciPy's LAPACK ``dpotrf`` called through ctypes.

    ``scipy.linalg.lapack``'s f2py wrappers hold the GIL while LAPACK runs, so
    two worker threads factorised one after the other (measured: 1.1× for two
    threads); a ctypes call releases it (1.8×). The function pointers come from
    ``scipy.linalg.cython_lapack``, SciPy's public Cython interface to the same
    library.
    """
    from scipy.linalg import cython_lapack

    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    pointer = ctypes.pythonapi.PyCapsule_GetPointer
    pointer.restype, pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]

    def fn(routine: str, *args):
        capsule = cython_lapack.__pyx_capi__[routine]
        return ctypes.CFUNCTYPE(None, *args)(pointer(capsule, name(capsule)))

    i, p, c = ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_char_p
    return fn("dpotrf", c, i, p, i, i)


def ridge_gram(K: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """K on the live rows (``live`` 1/0) plus λI, λ = 1e-6 of the live diagonal's mean: positive
    definite for a least-squares solve; a dead (weight-0 or padding) row gets λ alone, so its α is 0."""
    M = live[:, :, None] * K * live[:, None, :]
    lam = 1e-6 * torch.diagonal(M, dim1=1, dim2=2).sum(-1) / live.sum(-1)
    M.diagonal(dim1=1, dim2=2).add_(lam[:, None])
    return M


def _start(K, ys, s, pos, neg, C, iters: int = 30):
    """Starting point: the minimum-norm least-squares classifier's direction, with its scale
    and the intercept optimised.

    With n < d nearly every text ends up a support vector, and the direction of
    (K + λI)⁻¹(y − ȳ) (λ = 1e-6 of K's mean diagonal) lies close to the optimum's:
    Newton then needs ~8-10 steps where starting from w = 0 or the class-mean
    difference takes 15-50 on residual streams (measured on Gemma-3-270M). A 2-D
    Newton on (scale, b) along it costs O(n) per step.
    """
    live = (s > 0).double()
    M = ridge_gram(K, live)
    target = live * (ys - (s * ys).sum(-1, keepdim=True) / s.sum(-1, keepdim=True))
    # α = (K + λI)⁻¹ K (K + λI)⁻¹ t: on K's range ≈ K⁺t (eigenvalue σ ≫ λ: σ/(σ+λ)² ≈ 1/σ), on
    # its null space 0 where (K + λI)⁻¹ t alone has 1/λ (a rank-deficient K: fewer features
    # than rows, duplicated rows); those huge components leave w unchanged but swamp the
    # Newton steps' r = α + g in rounding
    factor = _cholesky(M)
    a0 = _cho_solve(*factor, target[..., None])
    a0 = _cho_solve(*factor, live[..., None] * (K @ a0))[..., 0] * live
    u = (K @ a0[..., None])[..., 0]  # scores of the direction
    q = (a0 * u).sum(-1)  # its squared norm
    b = torch.log(pos / neg)
    # coarse scale first (a log grid, one vectorised pass), so the Newton below starts near
    # its optimum instead of walking there in ~unit margin steps
    grid = 2.0 ** torch.arange(-6, 13, dtype=K.dtype, device=K.device) / u.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    m = ys[:, None, :] * (grid[..., None] * u[:, None, :] + b[:, None, None])
    obj = 0.5 * grid**2 * q[:, None] + C * (s[:, None, :] * _softplus_neg(m)).sum(-1)
    t = grid.gather(1, obj.argmin(-1, keepdim=True))[:, 0]
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
        if bool((size < 1e-3).all()):  # every margin moved < 1e-3: the 2-D Newton has converged
            break
    return t[:, None] * a0, b


def fit_logistic_gram(
    K: Float[torch.Tensor, "b n n"],
    y: Float[torch.Tensor, "b n"],
    C: float,
    *,
    sample_weight: Float[torch.Tensor, "b n"] | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Float[torch.Tensor, "b n"], Float[torch.Tensor, " b"]]:
    """Kernel form: ``(α, b)`` with scores ``f = Kα + b`` and ``w = Xᵀα`` (K = XXᵀ, any X).

    ``y`` holds 0/1 labels. A problem stops when its Newton decrement (the
    predicted decrease of the objective J, −∇J·Δ) falls below ``tol`` × J: with
    the default 1e-10 the objective is at its optimum to ~1e-10 relative and w to
    ~1e-5 (Newton's last step is quadratic, so it is usually far closer).
    ``init``: a warm start ``(α, b)`` (e.g. a fit at a nearby C);
    its α is zeroed on rows whose weight is 0.
    """
    if not C > 0:
        raise ValueError(f"C={C}: the inverse regularisation strength must be positive")
    K = K.to(torch.float64)
    return _solve_blocks(K.__getitem__, K.shape[0], K.device, y, C, sample_weight, tol, max_iter, init)


def _map_chunks(fn: Callable[[slice], object], bsz: int, device: torch.device) -> list:
    """``fn`` over slices of ``CPU_CHUNK`` problems, on all cores (torch and LAPACK release
    the GIL) with one BLAS thread each; a single call off the CPU or for a small batch."""
    if device.type != "cpu" or bsz <= CPU_CHUNK:
        with _one_cpu_thread(device):
            return [fn(slice(0, bsz))]
    parts = [slice(i, min(i + CPU_CHUNK, bsz)) for i in range(0, bsz, CPU_CHUNK)]
    from concurrent.futures import ThreadPoolExecutor

    with _one_cpu_thread(device), ThreadPoolExecutor(max(1, min(len(parts), os.cpu_count() or 1))) as pool:
        return list(pool.map(fn, parts))


def _solve_blocks(block: Callable[[slice], torch.Tensor], bsz: int, device: torch.device, y, C: float,
                  sample_weight, tol: float, max_iter: int, init=None):
    """:func:`_newton` over problems whose Gram matrices ``block(slice)`` gives (float64).

    On the CPU in chunks small enough to stay in cache (:func:`_map_chunks`),
    each chunk's matrices formed (e.g. gathered from a pool) inside its worker.
    ``init``: ``(α, b)`` for all problems, or ``init(slice, K)`` giving a chunk's
    warm start from its matrices, in its worker.
    """
    y = _as_tensor(y)
    if bsz == 0:
        return y.new_zeros(0, y.shape[-1]), y.new_zeros(0)
    y = y.expand(bsz, -1)
    sw = None if sample_weight is None else _as_tensor(sample_weight).expand(bsz, -1)

    def one(sl: slice):
        K = block(sl)
        part_init = None if init is None else init(sl, K) if callable(init) else (init[0][sl], init[1][sl])
        return _newton(K, y[sl], C, None if sw is None else sw[sl], tol, max_iter, part_init)

    out = _map_chunks(one, bsz, device)
    return torch.cat([a for a, _ in out]), torch.cat([b for _, b in out])


def _line_search(q0, q1, q2, f, df, ys, s, C, slope, obj0=None) -> torch.Tensor:
    """Per problem, the largest step in 1, ½, ¼, … with Armijo decrease of the exact objective.

    Along a step the penalty ½‖w + tΔw‖² = ½(q0 + 2t·q1 + t²·q2) and the scores
    move linearly (f + t·Δf), so every candidate costs O(n), not a matvec; the
    full step is tried first (Newton takes it on ~99 % of steps) and the shorter
    ones only when some problem rejects it. ``slope`` is ∇J·Δ (negative for a
    descent direction); ``obj0`` the objective at t = 0, if known.
    """
    if obj0 is None:
        obj0 = 0.5 * q0 + C * (s * _softplus_neg(ys * f)).sum(-1)

    def accepted(t):  # t: (1, k) candidates -> (b, k) Armijo test
        quad = 0.5 * (q0[:, None] + 2 * t * q1[:, None] + t**2 * q2[:, None])
        mt = ys[:, None, :] * (f[:, None, :] + t[..., None] * df[:, None, :])
        obj = quad + C * (s[:, None, :] * _softplus_neg(mt)).sum(-1)
        return obj <= obj0[:, None] + 1e-4 * t * slope[:, None]

    full = accepted(torch.ones(1, 1, dtype=f.dtype, device=f.device))[:, 0]
    if bool(full.all()):
        return torch.ones_like(q0)
    t = _STEPS.to(f.device)[None, :]
    ok = accepted(t)
    last = torch.full_like(q0, len(_STEPS) - 1, dtype=torch.long)
    return t[0][torch.where(ok.any(-1), ok.float().argmax(-1), last)]


def _labels_weights(y, sample_weight, shape, dev):
    y01 = _as_tensor(y, dev)
    s = torch.ones_like(y01) if sample_weight is None else _as_tensor(sample_weight, dev)
    if y01.shape != shape or s.shape != shape:
        raise ValueError(f"y and sample_weight must have shape {tuple(shape)}; got {tuple(y01.shape)}, {tuple(s.shape)}")
    if (s < 0).any():
        raise ValueError("sample weights must be non-negative")
    if bool(((y01 != 0) & (y01 != 1)).any()):
        raise ValueError("labels y must be 0 or 1")
    pos, neg = (s * y01).sum(-1), (s * (1 - y01)).sum(-1)
    if bool(((pos <= 0) | (neg <= 0)).any()):
        raise ValueError("every problem needs at least one example of each class (with non-zero weight)")
    return 2 * y01 - 1, s, pos, neg


def _newton_primal(xc, y, C, sample_weight, tol, max_iter):
    """Newton on (w, b) with the (d+1)-dim Hessian: the cheaper form when n > d."""
    bsz, n, d = xc.shape
    ys, s, pos, neg = _labels_weights(y, sample_weight, xc.shape[:2], xc.device)
    w = torch.zeros(bsz, d, dtype=torch.float64, device=xc.device)
    b = torch.log(pos / neg)
    xt = torch.cat([xc, torch.ones_like(xc[..., :1])], -1)
    penal = torch.ones(d + 1, dtype=torch.float64, device=xc.device)
    penal[-1] = 0
    g0 = None
    for _ in range(max_iter):
        f = (xc @ w[..., None])[..., 0] + b[:, None]
        p = torch.sigmoid(-ys * f)
        g = -C * s * ys * p
        W = C * s * p * (1 - p)
        grad = torch.cat([w, torch.zeros_like(b[:, None])], -1) + (xt.transpose(1, 2) @ g[..., None])[..., 0]
        gnorm = grad.norm(dim=-1)
        g0 = gnorm.clamp_min(1e-300) if g0 is None else g0
        if bool((gnorm <= tol * g0).all()):
            break
        H = torch.diag_embed(penal).expand(bsz, -1, -1) + xt.transpose(1, 2) @ (W[..., None] * xt)
        H = H + 1e-12 * torch.diagonal(H, dim1=1, dim2=2).amax(-1)[:, None, None] * torch.eye(d + 1, dtype=H.dtype, device=H.device)
        L, _ = torch.linalg.cholesky_ex(H)
        step = -torch.cholesky_solve(grad[..., None], L)[..., 0]
        dw, db = step[:, :d], step[:, d]
        df = (xc @ dw[..., None])[..., 0] + db[:, None]
        tt = _line_search((w * w).sum(-1), (w * dw).sum(-1), (dw * dw).sum(-1), f, df, ys, s, C, (grad * step).sum(-1))
        w, b = w + tt[:, None] * dw, b + tt * db
    return w, b


def _newton(K, y, C, sample_weight, tol, max_iter, init=None):
    """Damped Newton on (α, b); problems leave the batch as soon as they converge.

    Per step K is read twice: for K·g and for K·W½Z (both right-hand sides of
    the solve at once). K·Δα needs no product: Δf = K·Δα + Δb by definition, so
    K·Δα = Δf − Δb (exact up to the float64 solve's rounding), and K·α is carried
    from step to step (K·α ← K·α + t·K·Δα).
    """
    bsz, n, _ = K.shape
    dev = K.device
    ys, s, pos, neg = _labels_weights(y, sample_weight, K.shape[:2], dev)
    if init is None:
        alpha, b = _start(K, ys, s, pos, neg, C)
    else:
        alpha, b = (_as_tensor(v, dev).clone() for v in init)
        alpha = alpha * (s > 0)  # the representation lives on the rows of the problem
    act = torch.arange(bsz, device=dev)  # problems still iterating
    Ka_, ys_, s_, a_, b_ = K, ys, s, alpha, b
    Ka = (K @ alpha[..., None])[..., 0]
    for it in range(max_iter):
        ITERS[0] += len(act)
        f = Ka + b_[:, None]
        p = torch.sigmoid(-ys_ * f)  # probability of the wrong class
        g = -C * s_ * ys_ * p  # d(data term)/df
        W = C * s_ * p * (1 - p)
        r = a_ + g
        Kr = Ka + (Ka_ @ g[..., None])[..., 0]
        gsum = g.sum(-1)
        sw = W.sqrt()
        B = Ka_ * sw[:, :, None]
        B *= sw[:, None, :]
        B.diagonal(dim1=1, dim2=2).add_(1.0)
        # (I + KW)⁻¹ v = v − K W½ B⁻¹ W½ v, for v = −Kr and v = 1 in one solve
        rhs = torch.stack([-Kr, torch.ones_like(r)], -1)
        z = _spd_solve(B, sw[..., None] * rhs)
        del B
        u = rhs - Ka_ @ (sw[..., None] * z)
        u1, u2 = u[..., 0], u[..., 1]
        denom = (W * u2).sum(-1)
        db = (-gsum - (W * u1).sum(-1)) / torch.where(denom.abs() > 1e-300, denom, torch.ones_like(denom))
        df = u1 + u2 * db[:, None]
        da = -r - W * df
        Kda = df - db[:, None]  # Δf = K·Δα + Δb
        slope = (r * Kda).sum(-1) + gsum * db  # ∇J·Δ = −(Newton decrement)²
        aKa = (a_ * Ka).sum(-1)
        obj = 0.5 * aKa + C * (s_ * _softplus_neg(ys_ * f)).sum(-1)
        gnorm = torch.sqrt((r * Kr).sum(-1).clamp_min(0) + gsum**2)
        if it == 0:
            g0 = torch.zeros(bsz, dtype=torch.float64, device=dev)
            g0[act] = gnorm
        # small predicted decrease AND a gradient far below its start: an inaccurate
        # solve can make the first small while the second is not
        done = (-slope <= tol * obj) & (gnorm <= 1e-4 * g0[act])
        done |= ~torch.isfinite(slope)
        tt = _line_search(aKa, (a_ * Kda).sum(-1), (da * Kda).sum(-1), f, df, ys_, s_, C, slope, obj)
        tt = torch.where(done, torch.zeros_like(tt), tt)
        # Newton converges quadratically: after a FULL step whose predicted decrease is below
        # 0.1·√tol of the objective, the next one is ~tol (it would stop there) — stop after this
        # step instead of paying one more factorisation to confirm it
        done |= (tt == 1) & (-slope <= 0.1 * tol**0.5 * obj) & (gnorm <= 1e-2 * g0[act])
        a_ = a_ + tt[:, None] * da
        b_ = b_ + tt * db
        Ka = Ka + tt[:, None] * Kda
        alpha[act], b[act] = a_, b_
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = ~done
            act = act[keep]
            Ka_, ys_, s_ = K[act], ys[act], s[act]
            a_, b_, Ka = a_[keep], b_[keep], Ka[keep]
    return alpha, b


def fit_logistic_batched(
    x: Float[torch.Tensor, "b n d"] | np.ndarray,
    y: Float[torch.Tensor, "b n"] | np.ndarray,
    C: float = 1.0,
    *,
    sample_weight: Float[torch.Tensor, "b n"] | np.ndarray | None = None,
    tol: float = 1e-10,
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
    if not C > 0:
        raise ValueError(f"C={C}: the inverse regularisation strength must be positive")
    if x.shape[1] > x.shape[2]:  # more samples than features: the primal Hessian is the smaller one
        with _one_cpu_thread(x.device):
            w, bc = _newton_primal(xc, y, C, sample_weight, tol, max_iter)
    else:
        K = xc @ xc.transpose(1, 2)
        alpha, bc = fit_logistic_gram(K, y, C, sample_weight=sample_weight, tol=tol, max_iter=max_iter)
        w = (xc.transpose(1, 2) @ alpha[..., None])[..., 0]
    return w, bc - (mu * w).sum(-1)
