"""The per-target permutation null with logistic CAVs: the same estimator as a logistic point estimate.

Each re-partition of r1 ∪ r2 (units kept together, as in ``analysis.bias.significance``)
refits both references' logistic CAVs per layer (positives vs as many seeded
background texts), so it costs ``n_permutations × 2 × layers`` fits. They are
problems of one batched logistic solve (``analysis.concepts.fit_logistic_rows``):
1,000 permutations of the review preset are 36,000 fits, tens of seconds on 2 CPU
cores (``bench/bench_bias.py``: ``logistic_preset_warm_s``) where one sklearn fit each
took about an hour. Mean-difference vectors make the same test closed-form (~1 s);
that stays the default. Calibration and power: tests/test_bias_significance.py.
"""

from __future__ import annotations

import numpy as np

from analysis.progress import Progress, report
from analysis.sampling import rng as seeded_rng
from analysis.vectors import cosine

BLOCK = 50  # permutations per batched solve (2 × layers fits each)


def logistic_reference_null(positives, negatives, point: dict, config, units: dict, *,
                            progress: Progress | None = None) -> np.ndarray:
    """``(B, targets, layers)`` Bias(t) with logistic CAVs refitted on re-partitions of r1 ∪ r2.

    Every permutation's two reference fits at every layer are problems of one batched
    logistic solve (``analysis.concepts.fit_logistic_rows``, rows drawn from one pool per
    layer: r1 ∪ r2's texts and the background), in blocks of ``BLOCK`` permutations so
    progress is reported and Stop is honoured between blocks.
    """
    from analysis.bias.significance import split_weights
    from analysis.concepts import fit_logistic_rows

    r1, r2 = config.ref1, config.ref2
    pooled = np.concatenate([positives[r1], positives[r2]], 1)
    n_p = pooled.shape[1]
    pooled_units = np.r_[units[r1], units[r2] + int(units[r1].max()) + 1]
    w1, w2 = split_weights(pooled_units, int(units[r1].max()) + 1, config.n_permutations, config.seed, "refs", r1, r2)
    m, n_l = negatives.shape[1], pooled.shape[0]
    pool_x = np.concatenate([pooled, negatives], 1)  # (l, n_p + m, d)
    tv = np.stack([point[t] for t in config.targets])  # (t, l, d)
    B = config.n_permutations
    out = np.zeros((B, len(config.targets), n_l))
    gen = seeded_rng(config.seed, "bias-logistic-negatives")
    picks = []  # per (permutation, reference): the texts of that side and as many background texts
    for b in range(B):
        for w in (w1[b + 1], w2[b + 1]):
            sel = np.flatnonzero(w > 0)
            neg = np.sort(gen.choice(m, min(len(sel), m), replace=False))
            picks.append(np.r_[sel, n_p + neg])
    width = max(len(p) for p in picks)
    rows = np.zeros((len(picks), width), np.int64)
    live = np.zeros((len(picks), width))
    for i, p in enumerate(picks):
        rows[i, : len(p)], live[i, : len(p)] = p, 1
    y = (rows < n_p) * live
    for start in range(0, B, BLOCK):
        perms = np.arange(start, min(B, start + BLOCK))
        # problems ordered (permutation, reference, layer): pool = layer, rows = that side's pick
        layer = np.broadcast_to(np.arange(n_l), (len(perms), 2, n_l)).ravel()
        pick = np.repeat(2 * perms[:, None] + np.arange(2)[None, :], n_l, axis=1).ravel()
        cav, _ = fit_logistic_rows(pool_x, layer, rows[pick], y[pick], 1.0, sample_weight=live[pick])
        cav = cav.numpy().reshape(len(perms), 2, n_l, -1)
        out[perms] = cosine(tv[None], cav[:, 0, None]) - cosine(tv[None], cav[:, 1, None])
        report(progress, (perms[-1] + 1) / B, f"logistic permutation {perms[-1] + 1}/{B}")
    return out if config.signed else np.abs(out)
