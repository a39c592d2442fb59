"""ΔBias = Bias_B − Bias_A per target, a paired bootstrap CI and a state-swap permutation p.

Bias per state is ``analysis.bias``'s estimator (cosines of CAVs, Methods §2),
summarised over the layers that pass the accuracy rule **in both states** (so
the difference compares the same layers). Uncertainty and significance reuse
the bias package's resampling (``bootstrap_draws``, ``mean_diff``,
``weighted_means``, ``p_two_sided``):

* bootstrap: every concept's texts and the background are redrawn with the
  *same* draws in A and B (a text is the same text in both states), mean_diff
  CAVs refitted, ΔBias recomputed; with logistic point CAVs the interval is the
  resampled spread moved onto the point estimate, as in the bias view;
* permutation: the null is "the two states are exchangeable for each text":
  each draw swaps, text by text with probability ½, the A and B activations
  (concept and background texts alike) and recomputes ΔBias with mean_diff
  CAVs. The statistic is the mean_diff ΔBias, so observed and null values come
  from the same estimator (the bias view's rule); two-sided
  ``p = (1 + #{|Δ*| ≥ |Δ|}) / (1 + n_permutations)``.

Footgun: the null is exact when A and B are exchangeable given the text; a
state that only adds isotropic noise to every activation is not such a null
(the noisy state's cosines are smaller), so read p with the CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Bool, Float

from analysis.bias import (
    BiasConfig,
    bias_values,
    bootstrap_draws,
    choose_layers,
    mean_diff,
    p_two_sided,
    percentile_ci,
    summarise,
    weighted_means,
)
from analysis.sampling import rng


@dataclass(frozen=True)
class DeltaBias:
    """Arrays indexed [target, layer] or [target]; NaN and a message where no layer qualifies in both states."""

    targets: tuple[str, ...]
    refs: tuple[str, str]
    layers: tuple[int, ...]
    bias_a: Float[np.ndarray, "t l"]
    bias_b: Float[np.ndarray, "t l"]
    chosen: Bool[np.ndarray, "t l"]
    summary_a: Float[np.ndarray, " t"]
    summary_b: Float[np.ndarray, " t"]
    delta: Float[np.ndarray, " t"]
    ci_low: Float[np.ndarray, " t"]
    ci_high: Float[np.ndarray, " t"]
    p_value: Float[np.ndarray, " t"]
    boot: Float[np.ndarray, "t b"]
    null: Float[np.ndarray, "t p"]
    messages: dict[str, str] = field(default_factory=dict)

    def frame(self):
        import pandas as pd

        return pd.DataFrame([{
            "target": t, "ref1": self.refs[0], "ref2": self.refs[1], "bias_a": self.summary_a[i],
            "bias_b": self.summary_b[i], "delta": self.delta[i], "ci_low": self.ci_low[i], "ci_high": self.ci_high[i],
            "p_value": self.p_value[i], "layers": " ".join(str(l) for l, c in zip(self.layers, self.chosen[i]) if c),
            "message": self.messages.get(t, ""),
        } for i, t in enumerate(self.targets)])


def _bias(cavs: dict[str, np.ndarray], config: BiasConfig) -> np.ndarray:
    """``(..., targets, l)`` Bias of every target from CAVs ``(..., l, d)``."""
    r1, r2 = cavs[config.ref1], cavs[config.ref2]
    return np.stack([bias_values(cavs[t], r1, r2, signed=config.signed) for t in config.targets], -2)


def _swap_null(pos_a, neg_a, pos_b, neg_b, config: BiasConfig) -> dict[str, np.ndarray]:
    """Null ΔBias per layer ``(p, targets, l)``: A/B activations swapped text by text."""
    def means(x_a, x_b, salt):
        n = x_a.shape[1]
        swap = rng(config.seed, "compare-swap", salt).integers(0, 2, size=(config.n_permutations, n)) / n
        moved = weighted_means(swap, np.asarray(x_b, np.float64) - x_a)  # (p, l, d)
        mean_a, mean_b = x_a.mean(1, dtype=np.float64), x_b.mean(1, dtype=np.float64)
        return mean_a + moved, mean_b - moved

    bg_a, bg_b = means(neg_a, neg_b, "background")
    cav_a, cav_b = {}, {}
    for name in config.concepts:
        c_a, c_b = means(pos_a[name], pos_b[name], name)
        cav_a[name], cav_b[name] = c_a - bg_a, c_b - bg_b
    return _bias(cav_b, config) - _bias(cav_a, config)


def delta_bias_from_arrays(
    pos_a: dict[str, Float[np.ndarray, "l n d"]], neg_a: Float[np.ndarray, "l m d"],
    pos_b: dict[str, Float[np.ndarray, "l n d"]], neg_b: Float[np.ndarray, "l m d"],
    vectors_a: Float[np.ndarray, "c l d"], accuracy_a: Float[np.ndarray, "c l"],
    vectors_b: Float[np.ndarray, "c l d"], accuracy_b: Float[np.ndarray, "c l"],
    config: BiasConfig, layers,
) -> DeltaBias:
    """ΔBias from both states' activations and fitted CAVs (indexed by ``config.concepts``)."""
    names, layers = config.concepts, [int(l) for l in layers]
    md = {s: _bias({n: mean_diff(p[n], g) for n in names}, config) for s, (p, g) in
          {"a": (pos_a, neg_a), "b": (pos_b, neg_b)}.items()}
    if config.cav_method == "mean_diff":  # the bias view's default: the point estimate is the md one
        point_a, point_b = md["a"], md["b"]
    else:
        point_a = _bias({n: vectors_a[i] for i, n in enumerate(names)}, config)
        point_b = _bias({n: vectors_b[i] for i, n in enumerate(names)}, config)
    boot_a, _ = bootstrap_draws(pos_a, neg_a, config.n_bootstrap, config.seed)
    boot_b, _ = bootstrap_draws(pos_b, neg_b, config.n_bootstrap, config.seed)  # the same draws: paired
    boot = _bias(boot_b, config) - _bias(boot_a, config)  # (b, t, l)
    null = _swap_null(pos_a, neg_a, pos_b, neg_b, config)  # (p, t, l)
    shift = config.cav_method != "mean_diff"
    n_t = len(config.targets)
    out = {k: np.full(n_t, np.nan) for k in ("sa", "sb", "d", "lo", "hi", "p")}
    boots = np.full((n_t, config.n_bootstrap), np.nan)
    nulls = np.full((n_t, config.n_permutations), np.nan)
    chosen = np.zeros((n_t, len(layers)), bool)
    messages = {}
    idx = {n: i for i, n in enumerate(names)}
    for ti, t in enumerate(config.targets):
        rows = [idx[t], idx[config.ref1], idx[config.ref2]]
        try:
            mask = np.ones(len(layers), bool)
            for acc, state in ((accuracy_a, "A"), (accuracy_b, "B")):
                try:
                    mask &= choose_layers(np.asarray(acc)[rows], layers, config.layer_rule,
                                          threshold=config.acc_threshold, layer=config.layer)
                except ValueError as err:
                    raise ValueError(f"state {state}: {err}") from None
            if not mask.any():
                raise ValueError("no layer passes the accuracy rule in both states; lower acc_threshold")
        except ValueError as err:
            messages[t] = f"{t}: {err}"
            continue
        chosen[ti] = mask
        out["sa"][ti], out["sb"][ti] = summarise(point_a[ti], mask), summarise(point_b[ti], mask)
        out["d"][ti] = out["sb"][ti] - out["sa"][ti]
        boots[ti] = summarise(boot[:, ti], mask)
        lo, hi = percentile_ci(boots[ti], config.ci, centre=out["d"][ti] if shift else None)
        out["lo"][ti], out["hi"][ti] = lo, hi
        observed = summarise(md["b"][ti] - md["a"][ti], mask)
        nulls[ti] = summarise(null[:, ti], mask)
        out["p"][ti] = p_two_sided(observed, nulls[ti])
    return DeltaBias(
        targets=tuple(config.targets), refs=(config.ref1, config.ref2), layers=tuple(layers),
        bias_a=point_a, bias_b=point_b, chosen=chosen, summary_a=out["sa"], summary_b=out["sb"], delta=out["d"],
        ci_low=out["lo"], ci_high=out["hi"], p_value=out["p"], boot=boots, null=nulls, messages=messages,
    )
