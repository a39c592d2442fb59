"""Bias asymmetry between a target concept and two references (BiasLens, Methods §2), with its tests.

``Bias(t; r1, r2) = Align(C_t, C_r1) − Align(C_t, C_r2)`` with Align = cosine of
the two concept representations, per layer; positive means t leans to r1.
The summary is the mean over the layers where the CAV accuracies of t, r1
and r2 are all ≥ ``acc_threshold`` (or one chosen layer). ``signed=False``
takes |Bias| per layer before the summary.

Representations (``REPRESENTATIONS``, chosen by name):

* ``dense``: the concept vector. ``cav_method="mean_diff"`` (default): mean of the
  concept's texts − the baseline origin, in raw or per-dimension z-scored
  activations (``standardise``); ``baseline`` "background" or "contrast"
  (``analysis.bias.significance``). ``"logistic"``: the logistic CAV (raw activations
  vs the background).
* ``sae-diff`` / ``sae-proj``: SAE codes / decoder projections, top-k kept, at the SAE layer.

Why mean_diff is the default: the null must use the point estimate's estimator,
and mean differences make every permutation and bootstrap draw closed-form (one
matrix product per layer), so 1,000 permutations of the review preset (5 targets
and a differential) take 0.9 s on 2 shared, loaded cores, while one logistic refit
takes 80–120 ms, i.e. 48–72 minutes for the 36,000 refits of 1,000 permutations
(``bench/bench_bias.py`` records both in the same run).

Uncertainty and tests (dense mean_diff; seeded by ``seed``; resampling units are
words with their template sentences, or single texts: ``analysis.bias.units``):

* bootstrap CI: every concept's units and the background's texts are redrawn;
* per-target p: units of r1 ∪ r2 re-partitioned ``n_permutations`` times; per layer,
  on the summary, Holm over targets, and Westfall–Young max-|T| over all cells;
* ``differential=(X, Y)``: Bias(X) − Bias(Y) with WEAT-style d, bootstrap CIs and a
  permutation p over re-partitions of X ∪ Y (per layer too, max-|T| over layers);
* minimum detectable effect (80 % power at α = 0.05) for every "no bias" reading.

With ``cav_method="logistic"`` the permutations refit logistic CAVs for the
references (``analysis.concepts.fit_logistic``): the same estimator, but slow.
For the SAE representations no permutation test is run (p is NaN, with a message).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from jaxtyping import Bool, Float

from analysis.bias.alignment import (
    LAYER_RULES,
    NEEDS_SAE,
    REPRESENTATIONS,
    ConceptStats,
    SaeView,
    SharedLatents,
    bias_values,
    choose_layers,
    percentile_ci,
    shared_latents,
    summarise,
)
from analysis.bias.differential import Differential, differential_test
from analysis.bias.significance import BASELINES
from analysis.concepts import DEFAULT_BACKGROUND, check_name
from analysis.progress import Progress, report, scaled
from analysis.recipes import check_config_keys
from analysis.sampling import subsample

CAV_METHODS = ("mean_diff", "logistic")
UNIT_RULES = ("auto", "text")
MIN_BOOTSTRAP = 20


@dataclass(frozen=True)
class BiasConfig:
    """One bias analysis. ``max_texts``/``max_background`` cap the texts (a seeded draw) for quick runs.

    ``differential``: two of ``targets`` to compare (WEAT's differential test), or None.
    ``units``: "auto" resamples a word's template sentences together (``analysis.bias.units``),
    "text" resamples single texts.
    """

    targets: tuple[str, ...]
    ref1: str
    ref2: str
    representation: str = "dense"
    top_k: int = 32
    signed: bool = True
    layer_rule: str = "threshold"
    acc_threshold: float = 0.9
    layer: int | None = None
    n_bootstrap: int = 200
    n_permutations: int = 1000
    seed: int = 0
    cav_method: str = "mean_diff"
    baseline: str = "background"
    standardise: bool = False
    differential: tuple[str, str] | None = None
    units: str = "auto"
    alpha: float = 0.05
    ci: float = 0.95
    max_texts: int | None = None
    max_background: int | None = None
    background: str = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        if isinstance(self.targets, str) or not self.targets:
            raise ValueError("targets must be a non-empty tuple of concept names, e.g. ('food_aspect',)")
        for name in (*self.targets, self.ref1, self.ref2):
            check_name(name)
        if self.ref1 == self.ref2:
            raise ValueError(f"ref1 and ref2 are both {self.ref1!r}; choose two different reference concepts")
        clash = sorted(set(self.targets) & {self.ref1, self.ref2})
        if clash or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct and differ from the references (repeated: {clash or 'targets'})")
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation {self.representation!r}: valid representations are {tuple(REPRESENTATIONS)}")
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: keep at least 1 SAE latent")
        if self.layer_rule not in LAYER_RULES:
            raise ValueError(f"layer_rule {self.layer_rule!r}: valid rules are {LAYER_RULES}")
        if self.layer_rule == "layer" and (self.layer is None or self.layer < 0):
            raise ValueError("layer_rule 'layer' needs a non-negative layer, e.g. layer=6")
        if not 0.0 < self.acc_threshold <= 1.0:
            raise ValueError(f"acc_threshold={self.acc_threshold}: must be in (0, 1], e.g. 0.9")
        if self.n_bootstrap < MIN_BOOTSTRAP:
            raise ValueError(f"n_bootstrap={self.n_bootstrap}: need at least {MIN_BOOTSTRAP} (Methods §2 asks ≥ 200)")
        if self.n_permutations < 19:
            raise ValueError(f"n_permutations={self.n_permutations}: need at least 19 (p resolution 1/(B+1) ≤ 0.05)")
        if self.cav_method not in CAV_METHODS:
            raise ValueError(f"cav_method {self.cav_method!r}: valid methods are {CAV_METHODS}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline {self.baseline!r}: valid baselines are {BASELINES}")
        if self.cav_method == "logistic" and (self.baseline != "background" or self.standardise):
            raise ValueError("cav_method 'logistic' fits raw activations against the background: use "
                             "baseline='background' and standardise=False, or cav_method='mean_diff'")
        if self.units not in UNIT_RULES:
            raise ValueError(f"units {self.units!r}: valid rules are {UNIT_RULES}")
        if self.differential is not None:
            pair = tuple(self.differential)
            if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(self.targets):
                raise ValueError(f"differential {self.differential!r}: give two different targets of {list(self.targets)}")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha={self.alpha}: the significance level must be in (0, 0.5), e.g. 0.05")
        if not 0.5 <= self.ci < 1.0:
            raise ValueError(f"ci={self.ci}: the interval's mass must be in [0.5, 1), e.g. 0.95")
        for cap in ("max_texts", "max_background"):
            value = getattr(self, cap)
            if value is not None and value < 10:
                raise ValueError(f"{cap}={value}: use at least 10 texts, or 0 for all of them")

    @property
    def concepts(self) -> tuple[str, ...]:
        return (*self.targets, self.ref1, self.ref2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["differential"] = None if self.differential is None else list(self.differential)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BiasConfig":
        check_config_keys(cls, d, "bias")
        d = dict(d)
        d["targets"] = tuple(d.get("targets") or ())
        if d.get("differential") is not None:
            d["differential"] = tuple(d["differential"])
        return cls(**d)


# ---------------------------------------------------------------- result

@dataclass(frozen=True)
class BiasResult:
    """Arrays indexed [target, layer]; ``accuracy`` is [concept, layer] over ``concepts``.

    ``summary``/``ci_low``/``ci_high``/``p_value``/``p_holm``/``minimum_detectable``: per target;
    NaN with a ``messages[target]`` when no layer qualified. ``boot``: (targets, n_bootstrap)
    summary resamples; ``perm``: (targets, n_permutations) null summaries (r1 ∪ r2 re-partitioned).
    ``layer_p``: per cell; ``layer_p_adjusted``: max-|T| over every (target, layer) cell.
    """

    targets: tuple[str, ...]
    refs: tuple[str, str]
    layers: tuple[int, ...]
    concepts: tuple[str, ...]
    bias: Float[np.ndarray, "t l"]
    bias_low: Float[np.ndarray, "t l"]
    bias_high: Float[np.ndarray, "t l"]
    accuracy: Float[np.ndarray, "c l"]
    chosen: Bool[np.ndarray, "t l"]
    summary: Float[np.ndarray, " t"]
    ci_low: Float[np.ndarray, " t"]
    ci_high: Float[np.ndarray, " t"]
    boot: Float[np.ndarray, "t b"]
    perm: Float[np.ndarray, "t p"]
    p_value: Float[np.ndarray, " t"]
    p_holm: Float[np.ndarray, " t"]
    minimum_detectable: Float[np.ndarray, " t"]
    layer_p: Float[np.ndarray, "t l"]
    layer_p_adjusted: Float[np.ndarray, "t l"]
    n_permutations: int = 0
    n_units: dict[str, int] = field(default_factory=dict)
    differential: Differential | None = None
    messages: dict[str, str] = field(default_factory=dict)
    shared: SharedLatents | None = None
    config: dict = field(default_factory=dict)
    model: str = ""

    def chosen_layers(self, target: str) -> list[int]:
        row = self.chosen[self.targets.index(target)]
        return [l for l, c in zip(self.layers, row) if c]

    @property
    def alpha(self) -> float:
        return float(self.config.get("alpha", 0.05))

    @property
    def surviving(self) -> Bool[np.ndarray, "t l"]:
        """Cells whose family-wise adjusted p is below alpha."""
        return np.nan_to_num(self.layer_p_adjusted, nan=1.0) < self.alpha

    def verdict(self, ti: int) -> str:
        """The target's test in words, e.g. "p = 0.003 (Holm over 5 targets: 0.015); 12 of 18 layers survive ..."."""
        from analysis.bias.reading import verdict

        return verdict(self, ti)


# ---------------------------------------------------------------- engine

def _triple_bias(stats, config: BiasConfig, sae: SaeView | None, sae_li: int | None, n_layers: int) -> np.ndarray:
    """Bias per layer ``(..., l)`` of one (t, r1, r2); NaN where the representation is missing."""
    if config.representation == "dense":
        return bias_values(*(s.cav for s in stats), signed=config.signed)
    rep = REPRESENTATIONS[config.representation]
    at = [rep(ConceptStats(s.cav[..., sae_li, :], s.code_diff), sae, config.top_k) for s in stats]
    out = np.full((*stats[0].cav.shape[:-2], n_layers), np.nan)
    out[..., sae_li] = bias_values(*at, signed=config.signed)
    return out


def _all_bias(cavs: dict, diffs: dict | None, config: BiasConfig, sae, sae_li, n_layers) -> np.ndarray:
    """``(..., targets, l)`` Bias for every target against (ref1, ref2)."""
    def stats(name):
        return ConceptStats(cavs[name], None if diffs is None else diffs[name])

    refs = (stats(config.ref1), stats(config.ref2))
    return np.stack([_triple_bias((stats(t), *refs), config, sae, sae_li, n_layers) for t in config.targets], -2)


def bias_from_arrays(
    positives: dict[str, Float[np.ndarray, "l n d"]],
    negatives: Float[np.ndarray, "l m d"],
    vectors: Float[np.ndarray, "c l d"] | None,
    accuracy: Float[np.ndarray, "c l"],
    config: BiasConfig,
    layers,
    *,
    sae: SaeView | None = None,
    model: str = "",
    units: dict[str, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> BiasResult:
    """Bias, bootstrap CIs, permutation tests and the differential from activations.

    ``vectors`` (logistic CAVs, indexed by ``config.concepts``) are used only with
    ``cav_method="logistic"``; ``accuracy`` drives the layer rule. ``units[c]``: the
    resampling unit of each text (default: every text its own unit).
    """
    from analysis.bias import significance as sig
    from analysis.bias.resampling import bootstrap_draws

    names, layers = config.concepts, [int(l) for l in layers]
    n_l, n_t = len(layers), len(config.targets)
    sae_li = layers.index(sae.layer) if sae is not None and sae.layer in layers else None
    needs_sae = config.representation in NEEDS_SAE
    if needs_sae and sae_li is None:
        raise ValueError(f"representation {config.representation!r} needs an SAE at one of layers {layers}; "
                         "none is available for this model: use 'dense'")
    available = np.ones(n_l, bool) if not needs_sae else np.arange(n_l) == sae_li
    space = sig.make_space({n: positives[n] for n in names}, negatives, baseline=config.baseline,
                           standardise=config.standardise, units=units)
    messages: dict[str, str] = {}
    codes = codes_bg = diffs = None
    if needs_sae:
        codes = {n: np.asarray(sae.encode(positives[n][sae_li]), np.float64) for n in names}
        codes_bg = np.asarray(sae.encode(negatives[sae_li]), np.float64)
        diffs = {n: codes[n].mean(0) - codes_bg.mean(0) for n in names}
    if config.cav_method == "logistic":
        if vectors is None:
            raise ValueError("cav_method 'logistic' needs the fitted CAV vectors")
        point = {n: np.asarray(vectors[i], np.float64) for i, n in enumerate(names)}
    else:
        point = {n: space.vector(n) for n in names}
    bias = _all_bias(point, diffs, config, sae, sae_li, n_l)

    report(progress, 0.1, "bootstrap")
    if needs_sae:
        boot_cavs, boot_diffs = bootstrap_draws({n: positives[n] for n in names}, negatives, config.n_bootstrap,
                                                config.seed, codes=codes, codes_bg=codes_bg)
        boot = _all_bias(boot_cavs, boot_diffs, config, sae, sae_li, n_l)
        unit_counts = None
    elif config.cav_method == "logistic":
        boot_cavs, _ = bootstrap_draws({n: positives[n] for n in names}, negatives, config.n_bootstrap, config.seed,
                                       fit="logistic", warm=point)
        boot, unit_counts = _all_bias(boot_cavs, None, config, sae, sae_li, n_l), None
    else:
        boot_cavs, unit_counts = sig.bootstrap_vectors(space, names, config.n_bootstrap, config.seed)
        boot = sig.bootstrap_bias(boot_cavs, config.targets, config.ref1, config.ref2, signed=config.signed)
    bias_low, bias_high = percentile_ci(np.moveaxis(boot, 0, -1), config.ci)

    report(progress, 0.5, "permutation tests")
    B = config.n_permutations
    null = np.full((B, n_t, n_l), np.nan)
    if needs_sae:
        messages["_tests"] = ("no permutation test for SAE representations (top-k is not linear in the texts); "
                              "use the dense representation for p-values")
    elif config.cav_method == "logistic":
        from analysis.bias.logistic_null import logistic_reference_null

        null = logistic_reference_null(positives, negatives, point, config, space.units,
                                       progress=scaled(progress, 0.5, 0.9))
    else:
        full = sig.reference_null(space, config.targets, config.ref1, config.ref2, B, config.seed, signed=config.signed)
        null = full[1:]
    layer_p = sig.p_two_sided(bias, null) if np.isfinite(null).all() else np.full((n_t, n_l), np.nan)
    layer_p_adjusted = sig.max_t_adjusted(bias, null, np.broadcast_to(available, bias.shape))

    idx = {n: i for i, n in enumerate(names)}
    out = {k: np.full(n_t, np.nan) for k in ("summary", "lo", "hi", "p", "mde")}
    boot_summary = np.full((n_t, config.n_bootstrap), np.nan)
    perm_summary = np.full((n_t, B), np.nan)
    chosen = np.zeros((n_t, n_l), bool)
    for ti, t in enumerate(config.targets):
        acc3 = accuracy[[idx[t], idx[config.ref1], idx[config.ref2]]]
        try:
            mask = choose_layers(acc3, layers, config.layer_rule, threshold=config.acc_threshold,
                                 layer=config.layer, available=available)
        except ValueError as err:  # still answer: every available layer, and say so
            if config.layer_rule != "threshold":
                messages[t] = f"{t}: {err}"
                continue
            mask = available.copy()
            messages[t] = f"{t}: {err}; summarised over every layer instead"
        chosen[ti] = mask
        out["summary"][ti] = summarise(bias[ti], mask)
        boot_summary[ti] = summarise(boot[:, ti], mask)
        out["lo"][ti], out["hi"][ti] = percentile_ci(boot_summary[ti], config.ci)
        perm_summary[ti] = summarise(null[:, ti], mask)
        if np.isfinite(perm_summary[ti]).all():
            out["p"][ti] = float(sig.p_two_sided(out["summary"][ti], perm_summary[ti]))
            out["mde"][ti] = sig.minimum_detectable(perm_summary[ti], config.alpha)

    differential = None
    if config.differential is not None and not needs_sae and config.cav_method == "mean_diff":
        report(progress, 0.8, "differential test")
        differential = differential_test(space, config, boot, boot_cavs, unit_counts, chosen, layers, messages)
    elif config.differential is not None:
        messages["_differential"] = "the differential test needs the dense representation with cav_method='mean_diff'"

    shared = None
    if sae_li is not None:  # with dense, the CAV's decoder projections show the latents
        rep = REPRESENTATIONS[config.representation if needs_sae else "sae-proj"]
        reps = {n: rep(ConceptStats(point[n][sae_li], None if diffs is None else diffs[n]), sae, config.top_k) for n in names}
        shared = shared_latents(reps, config.targets, (config.ref1, config.ref2), layers[sae_li])
    report(progress, 1.0, "done")
    return BiasResult(
        targets=tuple(config.targets), refs=(config.ref1, config.ref2), layers=tuple(layers), concepts=tuple(names),
        bias=bias, bias_low=bias_low, bias_high=bias_high, accuracy=np.asarray(accuracy, np.float64), chosen=chosen,
        summary=out["summary"], ci_low=out["lo"], ci_high=out["hi"], boot=boot_summary, perm=perm_summary,
        p_value=out["p"], p_holm=sig.holm(out["p"]), minimum_detectable=out["mde"], layer_p=layer_p,
        layer_p_adjusted=layer_p_adjusted, n_permutations=B,
        n_units={n: int(space.units[n].max()) + 1 for n in names}, differential=differential,
        messages=messages, shared=shared, config=config.to_dict(), model=model,
    )


# ---------------------------------------------------------------- on a model

def sae_view(lm, layer: int | None = None) -> SaeView | None:
    """The first shipped SAE for ``lm`` (``analysis.saes``) as a :class:`SaeView`; None if none is shipped."""
    from analysis import saes

    names = saes.shipped_for(lm.name, layer) or (saes.shipped_for(lm.spec.hf_id, layer) if lm.spec else [])
    if not names:
        return None
    loaded = saes.load_sae(names[0])
    if loaded.layer is None:
        return None
    w_dec = loaded.sae.W_dec.detach().float().cpu().numpy()
    return SaeView(layer=loaded.layer, W_dec=w_dec,
                   encode=lambda x: saes.encode(loaded.sae, np.asarray(x, np.float32)).cpu().numpy())


def bias_inputs(lm, config: BiasConfig, progress: Progress | None = None):
    """Activations (disk-cached) of every concept and the background, and the resampling units."""
    from analysis.bias.units import text_units
    from analysis.concepts import background_texts, load_concepts, stacked_activations

    sets = load_concepts()
    missing = [c for c in config.concepts if c not in sets]
    if missing:
        raise ValueError(f"unknown concepts {missing}; available concepts are {sorted(sets)}")
    layers = list(range(lm.n_layers))
    # One capping rule for every view (analysis.sampling): a seeded draw, salted by the set's name.
    background = subsample(list(background_texts(config.background)), config.max_background, config.seed,
                           "background")
    texts = {n: subsample(list(sets[n].texts), config.max_texts, config.seed, n) for n in config.concepts}
    total = len(texts) + 1

    def stage(i, what):
        return lambda f: report(progress, (i + f) / total, f"activations: {what}")

    negatives = stacked_activations(lm, background, layers, "last", progress=stage(0, "background"))
    positives = {n: stacked_activations(lm, t, layers, "last", progress=stage(i + 1, n)) for i, (n, t) in enumerate(texts.items())}
    units = text_units(texts) if config.units == "auto" else None
    return positives, negatives, units, layers


def compute_bias(lm, config: BiasConfig, progress: Progress | None = None) -> BiasResult:
    """Extract activations, fit CAVs for the accuracies (``analysis.concepts``), then :func:`bias_from_arrays`."""
    from analysis.concepts import CavConfig, fit_cavs_arrays

    if config.representation in NEEDS_SAE and sae_view(lm) is None:
        raise ValueError(f"representation {config.representation!r} needs an SAE and {lm.name} has none shipped; use 'dense'")
    positives, negatives, units, layers = bias_inputs(lm, config, scaled(progress, 0.0, 0.5))
    report(progress, 0.5, "fitting CAVs")
    cav_config = CavConfig(concepts=config.concepts, method=config.cav_method, n_random=1, seed=config.seed)
    cavs = fit_cavs_arrays(positives, negatives, cav_config, layers, progress=scaled(progress, 0.5, 0.7), model=lm.name)
    sae = sae_view(lm)
    return bias_from_arrays(positives, negatives, cavs.vectors, cavs.accuracy, config, layers, sae=sae, model=lm.name,
                            units=units, progress=scaled(progress, 0.7, 1.0))
