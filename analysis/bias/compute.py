"""Bias asymmetry between a target concept and two references (BiasLens, METHODS §2).

``Bias(t; r1, r2) = Align(C_t, C_r1) − Align(C_t, C_r2)`` with Align = cosine of
the two concept representations, per layer; positive means t leans to r1.
The summary is the mean over the layers where the CAV accuracies of t, r1
and r2 are all ≥ ``acc_threshold`` (or one chosen layer). ``signed=False``
takes |Bias| per layer before the summary.

Representations (``REPRESENTATIONS``, chosen by name):

* ``dense``: the CAV (``analysis.concepts.cavs``; ``cav_method`` logistic or mean_diff);
* ``sae-diff``: mean SAE code of the positives − mean code of the background,
  top-k latents by magnitude kept (others zero);
* ``sae-proj``: cosine of the CAV with every SAE decoder row, top-k kept.
  SAE representations exist only at layers with an SAE; other layers are NaN.

Uncertainty (every draw is seeded by ``seed``):

* bootstrap: each resample redraws every concept's texts *and* the background
  texts with replacement and re-fits the representation. ``bootstrap_fit``:
  ``mean_diff`` (default) re-fits the closed-form mean-difference CAV for all
  resamples in one tensor product; ``logistic`` re-fits sklearn's logistic
  regression warm-started from the full-data fit. Measured on Gemma-3-270M, the
  review preset (7 concepts × 18 layers, 1176 texts, 2 CPU cores under heavy shared
  load; ``bench/bench_bias.py``): 200 mean_diff resamples plus 200 null draws take
  15 s in all, while one warm-started logistic refit took ~6 s (lbfgs, 640 dims),
  i.e. about two days for the 25 200 refits, hence the default. When the bootstrap
  fitter differs from the point-estimate fitter, the CI is the resampled spread
  moved onto the point estimate: ``point + (q − median(resamples))`` — it measures how much Bias
  moves when the texts change, not the logistic-vs-mean-diff gap (which the
  result reports as ``summary_bootstrap_fit``). With ``cav_method=mean_diff``
  the interval is the plain percentile interval.
* permutation null: ``n_permutations`` fake (t, r1, r2) triples are disjoint
  random subsets of the background (each the size of its real concept, at
  most a quarter of the background), the rest of the background being their
  negatives, fitted with mean_diff; their Bias, summarised over the target's
  layers, gives the null band (central ``ci`` mass).

Footguns: ``layer_rule="threshold"`` with no qualifying layer gives a NaN
summary and a message in ``BiasResult.messages`` (the pure function raises).
Representations of texts come from the last token (``pooling="last"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

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
from analysis.concepts import DEFAULT_BACKGROUND, check_name
from analysis.recipes import check_config_keys
CAV_METHODS = ("logistic", "mean_diff")
BOOTSTRAP_FITS = ("mean_diff", "logistic")
MIN_BOOTSTRAP = 20
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class BiasConfig:
    """One bias analysis. ``max_texts``/``max_background`` cap the texts (first N) for quick runs."""

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
    n_permutations: int = 200
    seed: int = 0
    cav_method: str = "logistic"
    bootstrap_fit: str = "mean_diff"
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
            raise ValueError(f"n_bootstrap={self.n_bootstrap}: need at least {MIN_BOOTSTRAP} (METHODS §2 asks ≥ 200)")
        if self.n_permutations < 1:
            raise ValueError(f"n_permutations={self.n_permutations}: need at least 1")
        if self.cav_method not in CAV_METHODS:
            raise ValueError(f"cav_method {self.cav_method!r}: valid methods are {CAV_METHODS}")
        if self.bootstrap_fit not in BOOTSTRAP_FITS:
            raise ValueError(f"bootstrap_fit {self.bootstrap_fit!r}: valid fits are {BOOTSTRAP_FITS}")
        if not 0.5 <= self.ci < 1.0:
            raise ValueError(f"ci={self.ci}: the interval's mass must be in [0.5, 1), e.g. 0.95")
        for cap in ("max_texts", "max_background"):
            value = getattr(self, cap)
            if value is not None and value < 10:
                raise ValueError(f"{cap}={value}: use at least 10 texts, or None for all")

    @property
    def concepts(self) -> tuple[str, ...]:
        return (*self.targets, self.ref1, self.ref2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BiasConfig":
        check_config_keys(cls, d, "bias")
        d = dict(d)
        d["targets"] = tuple(d.get("targets") or ())
        return cls(**d)


# ---------------------------------------------------------------- result

@dataclass(frozen=True)
class BiasResult:
    """Arrays indexed [target, layer]; ``accuracy`` is [concept, layer] over ``concepts``.

    ``summary``/``ci_low``/``ci_high``/``perm_low``/``perm_high``: per target; NaN with a
    ``messages[target]`` when no layer qualified. ``boot``: (targets, n_bootstrap) summary
    resamples; ``perm``: (targets, n_permutations) null summaries.
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
    summary_bootstrap_fit: Float[np.ndarray, " t"]
    boot: Float[np.ndarray, "t b"]
    perm_low: Float[np.ndarray, " t"]
    perm_high: Float[np.ndarray, " t"]
    perm: Float[np.ndarray, "t p"]
    messages: dict[str, str] = field(default_factory=dict)
    shared: SharedLatents | None = None
    config: dict = field(default_factory=dict)
    model: str = ""

    def chosen_layers(self, target: str) -> list[int]:
        row = self.chosen[self.targets.index(target)]
        return [l for l, c in zip(self.layers, row) if c]


# ---------------------------------------------------------------- engine

def _triple_bias(stats: tuple[ConceptStats, ConceptStats, ConceptStats], config: BiasConfig,
                 sae: SaeView | None, sae_li: int | None, n_layers: int) -> np.ndarray:
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
    vectors: Float[np.ndarray, "c l d"],
    accuracy: Float[np.ndarray, "c l"],
    config: BiasConfig,
    layers,
    *,
    sae: SaeView | None = None,
    model: str = "",
) -> BiasResult:
    """Bias, bootstrap CIs and the permutation band from activations and fitted CAVs.

    ``vectors``/``accuracy`` are indexed by ``config.concepts`` (targets, ref1, ref2).
    """
    from analysis.bias.resampling import bootstrap_draws, mean_diff, null_draws

    names, layers = config.concepts, [int(l) for l in layers]
    n_l = len(layers)
    sae_li = layers.index(sae.layer) if sae is not None and sae.layer in layers else None
    needs_sae = config.representation in NEEDS_SAE
    if needs_sae and sae_li is None:
        raise ValueError(f"representation {config.representation!r} needs an SAE at one of layers {layers}; "
                         "none is available for this model: use 'dense'")
    available = np.ones(n_l, bool) if not needs_sae else np.arange(n_l) == sae_li
    codes = codes_bg = None
    if needs_sae:
        codes = {n: np.asarray(sae.encode(positives[n][sae_li]), np.float64) for n in names}
        codes_bg = np.asarray(sae.encode(negatives[sae_li]), np.float64)
    diffs = None if codes is None else {n: codes[n].mean(0) - codes_bg.mean(0) for n in names}
    point = {n: np.asarray(vectors[i], np.float64) for i, n in enumerate(names)}
    bias = _all_bias(point, diffs, config, sae, sae_li, n_l)
    shift = config.representation != "sae-diff" and config.cav_method != config.bootstrap_fit
    bias_fit = bias
    if shift:
        md = {n: mean_diff(positives[n], negatives) for n in names}
        bias_fit = _all_bias(md, diffs, config, sae, sae_li, n_l)
    boot_cavs, boot_diffs = bootstrap_draws(
        {n: positives[n] for n in names}, negatives, config.n_bootstrap, config.seed, fit=config.bootstrap_fit,
        codes=codes, codes_bg=codes_bg, warm=point if config.bootstrap_fit == "logistic" else None,
    )
    boot = _all_bias(boot_cavs, boot_diffs, config, sae, sae_li, n_l)  # (b, t, l)
    centre = bias if shift else None
    bias_low, bias_high = percentile_ci(np.moveaxis(boot, 0, -1), config.ci, centre=centre)

    sizes = {n: positives[n].shape[1] for n in names}
    nulls: dict[tuple, np.ndarray] = {}
    n_t = len(config.targets)
    out = {k: np.full(n_t, np.nan) for k in ("summary", "lo", "hi", "fit", "plo", "phi")}
    boot_summary = np.full((n_t, config.n_bootstrap), np.nan)
    perm_summary = np.full((n_t, config.n_permutations), np.nan)
    chosen = np.zeros((n_t, n_l), bool)
    messages = {}
    idx = {n: i for i, n in enumerate(names)}
    for ti, t in enumerate(config.targets):
        acc3 = accuracy[[idx[t], idx[config.ref1], idx[config.ref2]]]
        try:
            mask = choose_layers(acc3, layers, config.layer_rule, threshold=config.acc_threshold,
                                 layer=config.layer, available=available)
        except ValueError as err:
            messages[t] = f"{t}: {err}"
            continue
        chosen[ti] = mask
        key = (sizes[t], sizes[config.ref1], sizes[config.ref2])
        if key not in nulls:
            fake_cavs, fake_diffs = null_draws(negatives, key, config.n_permutations, config.seed, codes_bg=codes_bg)
            stats = tuple(ConceptStats(c, None if fake_diffs is None else fake_diffs[i]) for i, c in enumerate(fake_cavs))
            nulls[key] = _triple_bias(stats, config, sae, sae_li, n_l)
        out["summary"][ti] = summarise(bias[ti], mask)
        out["fit"][ti] = summarise(bias_fit[ti], mask)
        boot_summary[ti] = summarise(boot[:, ti], mask)
        perm_summary[ti] = summarise(nulls[key], mask)
        out["lo"][ti], out["hi"][ti] = percentile_ci(boot_summary[ti], config.ci, centre=out["summary"][ti] if shift else None)
        out["plo"][ti], out["phi"][ti] = percentile_ci(perm_summary[ti], config.ci)

    shared = None
    if sae_li is not None:  # with dense, the CAV's decoder projections show the latents
        rep = REPRESENTATIONS[config.representation if needs_sae else "sae-proj"]
        reps = {n: rep(ConceptStats(point[n][sae_li], None if diffs is None else diffs[n]), sae, config.top_k) for n in names}
        shared = shared_latents(reps, config.targets, (config.ref1, config.ref2), layers[sae_li])
    return BiasResult(
        targets=tuple(config.targets), refs=(config.ref1, config.ref2), layers=tuple(layers), concepts=tuple(names),
        bias=bias, bias_low=bias_low, bias_high=bias_high, accuracy=np.asarray(accuracy, np.float64), chosen=chosen,
        summary=out["summary"], ci_low=out["lo"], ci_high=out["hi"], summary_bootstrap_fit=out["fit"],
        boot=boot_summary, perm_low=out["plo"], perm_high=out["phi"], perm=perm_summary, messages=messages,
        shared=shared, config=config.to_dict(), model=model,
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


def compute_bias(lm, config: BiasConfig, progress: Progress | None = None) -> BiasResult:
    """Extract activations (disk-cached), fit CAVs (``analysis.concepts.cavs``), then :func:`bias_from_arrays`.

    Every layer is used; texts are the first ``max_texts`` of each concept and the
    first ``max_background`` background texts.
    """
    from analysis.concepts import CavConfig, fit_cavs_arrays, stacked_activations
    from analysis.concepts import background_texts, load_concepts

    report = progress or (lambda f, msg: None)
    sets = load_concepts()
    missing = [c for c in config.concepts if c not in sets]
    if missing:
        raise ValueError(f"unknown concepts {missing}; available concepts are {sorted(sets)}")
    layers = list(range(lm.n_layers))
    background = list(background_texts(config.background))[: config.max_background]
    texts = {n: list(sets[n].texts)[: config.max_texts] for n in config.concepts}
    total = len(texts) + 1

    def stage(i, what):
        return lambda f: report(0.6 * (i + f) / total, f"activations: {what}")

    negatives = stacked_activations(lm, background, layers, "last", progress=stage(0, "background"))
    positives = {n: stacked_activations(lm, t, layers, "last", progress=stage(i + 1, n)) for i, (n, t) in enumerate(texts.items())}
    report(0.6, "fitting CAVs")
    cav_config = CavConfig(concepts=config.concepts, method=config.cav_method, n_random=1, seed=config.seed)
    cavs = fit_cavs_arrays(positives, negatives, cav_config, layers,
                           progress=lambda f, msg: report(0.6 + 0.3 * f, msg), model=lm.name)
    sae = sae_view(lm)
    if config.representation in NEEDS_SAE and sae is None:
        raise ValueError(f"representation {config.representation!r} needs an SAE and {lm.name} has none shipped; use 'dense'")
    report(0.9, "bootstrap and permutation null")
    result = bias_from_arrays(positives, negatives, cavs.vectors, cavs.accuracy, config, layers, sae=sae, model=lm.name)
    report(1.0, "done")
    return result


# ---------------------------------------------------------------- presets and frames

@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    targets: tuple[str, ...]
    ref1: str
    ref2: str
    templates: str = "evaluative"


def load_presets() -> dict[str, Preset]:
    """The presets in ``assets/bias/presets.yaml``."""
    import yaml

    from analysis.paths import ASSETS

    raw = yaml.safe_load((ASSETS / "bias" / "presets.yaml").read_text())["presets"]
    return {k: Preset(name=k, title=v["title"], description=v["description"], targets=tuple(v["targets"]),
                      ref1=v["ref1"], ref2=v["ref2"], templates=v.get("templates", "evaluative")) for k, v in raw.items()}


def preset_config(name: str, **overrides) -> BiasConfig:
    """A :class:`BiasConfig` for a preset; ``overrides`` set any other field."""
    presets = load_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets are {sorted(presets)}")
    p = presets[name]
    return BiasConfig(targets=p.targets, ref1=p.ref1, ref2=p.ref2, **overrides)


def summary_frame(result: BiasResult):
    """One row per target: summary Bias, CI, permutation band, chosen layers, message."""
    import pandas as pd

    return pd.DataFrame([{
        "target": t, "ref1": result.refs[0], "ref2": result.refs[1], "bias": result.summary[i],
        "ci_low": result.ci_low[i], "ci_high": result.ci_high[i], "perm_low": result.perm_low[i],
        "perm_high": result.perm_high[i], "bias_bootstrap_fit": result.summary_bootstrap_fit[i],
        "layers": " ".join(map(str, result.chosen_layers(t))), "message": result.messages.get(t, ""),
    } for i, t in enumerate(result.targets)])


def layer_frame(result: BiasResult):
    """One row per (target, layer): Bias, its bootstrap CI, whether chosen, the three accuracies."""
    import pandas as pd

    idx = {c: i for i, c in enumerate(result.concepts)}
    rows = []
    for ti, t in enumerate(result.targets):
        for li, layer in enumerate(result.layers):
            rows.append({
                "target": t, "layer": layer, "bias": result.bias[ti, li], "ci_low": result.bias_low[ti, li],
                "ci_high": result.bias_high[ti, li], "chosen": bool(result.chosen[ti, li]),
                "acc_target": result.accuracy[idx[t], li], "acc_ref1": result.accuracy[idx[result.refs[0]], li],
                "acc_ref2": result.accuracy[idx[result.refs[1]], li],
            })
    return pd.DataFrame(rows)
