"""WEAT's differential test on concept vectors: Bias(X) − Bias(Y), effect size d, CIs, permutation p.

d = (Bias(X) − Bias(Y)) / sd over the units of X ∪ Y of each unit's own association
s(w) = Bias of the unit's mean vector (WEAT's denominator; its sign is the effect's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.bias import significance as sig
from analysis.bias.alignment import percentile_ci


@dataclass(frozen=True)
class Differential:
    """WEAT-style differential Bias(X) − Bias(Y) over the layers both targets qualify at.

    ``effect_size_d``: effect / sd of the units' own associations over X ∪ Y; ``ci_low``/``ci_high``:
    its bootstrap CI (``effect_ci_*``: the effect's). ``layer_*``: per layer, with max-|T| over layers.
    """

    targets: tuple[str, str]
    effect: float
    effect_size_d: float
    ci_low: float
    ci_high: float
    effect_ci_low: float
    effect_ci_high: float
    p_value: float
    n_permutations: int
    layers: tuple[int, ...]
    minimum_detectable: float
    layer_effect: np.ndarray
    layer_p: np.ndarray
    layer_p_adjusted: np.ndarray
    null: np.ndarray

    def to_json(self) -> dict:
        def num(v):
            return None if v is None or v != v else float(v)

        return {"targets": list(self.targets), "effect": num(self.effect), "effect_size_d": num(self.effect_size_d),
                "ci_low": num(self.ci_low), "ci_high": num(self.ci_high), "p_value": num(self.p_value),
                "n_permutations": int(self.n_permutations), "p_resolution": 1.0 / (self.n_permutations + 1),
                "effect_ci_low": num(self.effect_ci_low), "effect_ci_high": num(self.effect_ci_high),
                "ci_of": "effect_size_d", "layers": list(self.layers),
                "minimum_detectable_effect": num(self.minimum_detectable),
                "layer_effect": [num(v) for v in self.layer_effect], "layer_p": [num(v) for v in self.layer_p],
                "layer_p_adjusted": [num(v) for v in self.layer_p_adjusted]}



def differential_test(space, config, boot, boot_cavs, unit_counts, chosen, layers, messages) -> Differential | None:
    """Bias(X) − Bias(Y) for ``config.differential``: permutation p over X ∪ Y, d and bootstrap CIs.

    Layers: those where both targets qualify (else where either does, else all layers, with a message). ``boot`` (b, t, l) bootstrap
    Bias, ``boot_cavs``/``unit_counts`` from :func:`analysis.bias.significance.bootstrap_vectors`;
    d's denominator weights the units by their bootstrap counts (origin held at its full-data value).
    """

    x, y = config.differential
    xi, yi = config.targets.index(x), config.targets.index(y)
    mask = chosen[xi] & chosen[yi]
    if not mask.any():
        mask = chosen[xi] | chosen[yi]
    if not mask.any():  # still answer the question asked: over every layer, and say so
        mask = np.ones(len(layers), bool)
        messages["_differential"] = f"no layer qualifies for {x} or {y}: the differential is summarised over all layers"
    full = sig.differential_null(space, x, y, config.ref1, config.ref2, config.n_permutations, config.seed,
                                 signed=config.signed)
    observed, null = full[0], full[1:]
    effect = float(observed[mask].mean())
    null_summary = null[:, mask].mean(1)
    r1v, r2v = space.vector(config.ref1), space.vector(config.ref2)
    sx, sy = (sig.unit_scores(space, c, r1v, r2v, mask) for c in (x, y))
    d = sig.effect_size(effect, sx, sy)
    boot_effect = boot[:, xi][:, mask].mean(-1) - boot[:, yi][:, mask].mean(-1)
    bx, by = (sig.unit_scores(space, c, boot_cavs[config.ref1], boot_cavs[config.ref2], mask) for c in (x, y))
    sd_b = sig.weighted_sd(np.concatenate([bx, by], 1), np.concatenate([unit_counts[x], unit_counts[y]], 1))
    d_b = boot_effect / np.where(sd_b > 0, sd_b, np.nan)
    lo, hi = percentile_ci(d_b, config.ci)
    elo, ehi = percentile_ci(boot_effect, config.ci)
    return Differential(
        targets=(x, y), effect=effect, effect_size_d=d, ci_low=float(lo), ci_high=float(hi),
        effect_ci_low=float(elo), effect_ci_high=float(ehi),
        p_value=float(sig.p_two_sided(effect, null_summary)), n_permutations=config.n_permutations,
        layers=tuple(l for l, m in zip(layers, mask) if m),
        minimum_detectable=sig.minimum_detectable(null_summary, config.alpha), layer_effect=observed,
        layer_p=sig.p_two_sided(observed, null), layer_p_adjusted=sig.max_t_adjusted(observed, null), null=null_summary,
    )
