"""Test results in words a reader understands ("p = 0.003, survives correction over 18 layers")."""

from __future__ import annotations

import numpy as np


def p_text(p: float, n_permutations: int) -> str:
    """``p = 0.003``, or ``p ≤ 0.001 (1000 permutations)`` at the resolution 1/(B+1)."""
    if p is None or not np.isfinite(p):
        return "p n/a"
    floor = 1.0 / (n_permutations + 1)
    if p <= floor + 1e-12:
        return f"p ≤ {floor:.2g} ({n_permutations} permutations)"
    return f"p = {p:.3f}" if p >= 0.001 else f"p = {p:.1e}"


def decision(result, ti: int) -> str:
    """The permutation test's conclusion for target ``ti`` in two words: "significant" (Holm-corrected
    p below alpha), "not significant", or why there is none ("no test", "no qualifying layer")."""
    if not np.isfinite(result.summary[ti]):
        return "no qualifying layer"
    if not np.isfinite(result.p_value[ti]):
        return "no test"
    return "significant" if result.p_holm[ti] < result.alpha else "not significant"


def verdict(result, ti: int) -> str:
    """One line for target ``ti``: p, Holm, how many layers survive the family-wise correction, or the MDE."""
    t = result.targets[ti]
    if not np.isfinite(result.summary[ti]):
        return result.messages.get(t, "no qualifying layer")
    p, alpha = result.p_value[ti], result.alpha
    if not np.isfinite(p):
        return "no permutation test for this representation"
    n_t, n_l = len(result.targets), len(result.layers)
    words = p_text(p, result.n_permutations)
    if n_t > 1:
        words += f" (Holm over {n_t} targets: {p_text(result.p_holm[ti], result.n_permutations)[2:].strip('= ')})"
    n_surv = int(result.surviving[ti].sum())
    family = f"{n_l} layers" if n_t == 1 else f"{n_l} layers × {n_t} targets"
    if result.p_holm[ti] < alpha:
        return f"{words}: significant; {n_surv} of {n_l} layers survive correction over {family}"
    return (f"{words}: not significant (detectable |Bias| ≥ {result.minimum_detectable[ti]:.3f} at 80 % power); "
            f"{n_surv} of {n_l} layers survive correction")


def differential_verdict(diff, alpha: float = 0.05) -> str:
    """One line for the differential test."""
    x, y = diff.targets
    head = (f"Bias({x}) − Bias({y}) = {diff.effect:+.3f}, d = {diff.effect_size_d:+.2f} "
            f"[{diff.ci_low:+.2f}, {diff.ci_high:+.2f}], {p_text(diff.p_value, diff.n_permutations)}")
    n_surv = int(np.sum(np.nan_to_num(diff.layer_p_adjusted, nan=1.0) < alpha))
    n_l = len(diff.layer_p)
    if diff.p_value < alpha:
        return f"{head}: significant; {n_surv} of {n_l} layers survive correction over {n_l} layers"
    return (f"{head}: not significant (detectable |effect| ≥ {diff.minimum_detectable:.3f} at 80 % power); "
            f"{n_surv} of {n_l} layers survive correction")
