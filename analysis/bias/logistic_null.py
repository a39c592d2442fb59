"""The per-target permutation null with logistic CAVs: the same estimator as a logistic point estimate.

Each re-partition of r1 ∪ r2 (units kept together, as in ``analysis.bias.significance``)
refits both references' logistic CAVs per layer (``analysis.concepts.fit_logistic``,
positives vs as many seeded background texts), so it costs
``n_permutations × 2 × layers`` fits: 80–120 ms each on 2 loaded cores for
Gemma-3-270M (``bench/bench_bias.py``), i.e. about an hour for 1,000 permutations. Mean-difference vectors make the same test closed-form; that is the default.
"""

from __future__ import annotations

import numpy as np

from analysis.progress import Progress, report
from analysis.sampling import rng as seeded_rng
from analysis.vectors import cosine


def logistic_reference_null(positives, negatives, point: dict, config, units: dict, *,
                            progress: Progress | None = None) -> np.ndarray:
    """``(B, targets, layers)`` Bias(t) with logistic CAVs refitted on re-partitions of r1 ∪ r2."""
    from threadpoolctl import threadpool_limits

    from analysis.bias.significance import split_weights
    from analysis.concepts import fit_logistic

    r1, r2 = config.ref1, config.ref2
    pooled = np.concatenate([positives[r1], positives[r2]], 1)
    pooled_units = np.r_[units[r1], units[r2] + int(units[r1].max()) + 1]
    w1, w2 = split_weights(pooled_units, int(units[r1].max()) + 1, config.n_permutations, config.seed, "refs", r1, r2)
    m, n_l = negatives.shape[1], pooled.shape[0]
    tv = np.stack([point[t] for t in config.targets])  # (t, l, d)
    out = np.zeros((config.n_permutations, len(config.targets), n_l))
    gen = seeded_rng(config.seed, "bias-logistic-negatives")
    with threadpool_limits(1):
        for b in range(config.n_permutations):
            cavs = []
            for w in (w1[b + 1], w2[b + 1]):
                sel = np.flatnonzero(w > 0)
                neg = np.sort(gen.choice(m, min(len(sel), m), replace=False))
                y = np.r_[np.ones(len(sel), int), np.zeros(len(neg), int)]
                cavs.append(np.stack([fit_logistic(np.concatenate([pooled[li, sel], negatives[li, neg]]), y,
                                                   C=1.0, seed=config.seed)[0] for li in range(n_l)]))
            out[b] = cosine(tv, cavs[0][None]) - cosine(tv, cavs[1][None])
            report(progress, (b + 1) / config.n_permutations, f"logistic permutation {b + 1}/{config.n_permutations}")
    return out if config.signed else np.abs(out)
