"""Concept alignment for Bias (Methods §2): cosine Align, per-layer Bias, layer rules,
concept representations (dense / sae-diff / sae-proj) and the SAE latents they share.

Pure functions on arrays; ``analysis.bias.compute`` runs them on a model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from jaxtyping import Bool, Float

from analysis.vectors import cosine, unit

LAYER_RULES = ("threshold", "layer")


# ---------------------------------------------------------------- pure math

def align(a: Float[np.ndarray, "... d"], b: Float[np.ndarray, "... d"]) -> Float[np.ndarray, "..."]:
    """Cosine similarity along the last axis (``analysis.vectors.cosine``: 0 where either vector is zero)."""
    return cosine(a, b)


def bias_values(t, r1, r2, *, signed: bool = True) -> np.ndarray:
    """Align(t, r1) − Align(t, r2) over the last axis (|·| when ``signed`` is False)."""
    b = align(t, r1) - align(t, r2)
    return b if signed else np.abs(b)


def qualifying_layers(acc: Float[np.ndarray, "3 l"], threshold: float) -> Bool[np.ndarray, " l"]:
    """Layers where every one of the three concepts' CAV accuracies is ≥ ``threshold``."""
    return np.all(np.asarray(acc) >= threshold, axis=0)


def choose_layers(acc: Float[np.ndarray, "3 l"], layers, rule: str, *, threshold: float = 0.9,
                  layer: int | None = None, available: np.ndarray | None = None) -> Bool[np.ndarray, " l"]:
    """The layer mask of a layer rule; ValueError (saying why) when no layer qualifies.

    ``available``: layers where the representation exists (SAE layers); others never qualify.
    """
    layers = list(layers)
    avail = np.ones(len(layers), bool) if available is None else np.asarray(available, bool)
    if rule == "layer":
        if layer not in layers or not avail[layers.index(layer)]:
            valid = [l for l, a in zip(layers, avail) if a]
            raise ValueError(f"layer {layer} is not available; valid layers are {valid}")
        mask = np.zeros(len(layers), bool)
        mask[layers.index(layer)] = True
        return mask
    if rule != "threshold":
        raise ValueError(f"layer rule {rule!r}: valid rules are {LAYER_RULES}")
    mask = qualifying_layers(acc, threshold) & avail
    if not mask.any():
        worst = np.where(avail, np.min(acc, axis=0), -np.inf)
        best = int(np.argmax(worst))
        raise ValueError(
            f"no layer has CAV accuracy ≥ {threshold} for all three concepts (best: {worst[best]:.2f} at "
            f"layer {layers[best]}); lower acc_threshold or use the 'layer' rule"
        )
    return mask


def summarise(bias: Float[np.ndarray, "... l"], mask: Bool[np.ndarray, " l"]) -> np.ndarray:
    """Mean of per-layer Bias over the chosen layers."""
    return np.asarray(bias)[..., np.asarray(mask, bool)].mean(-1)


def keep_top_k(v: Float[np.ndarray, "... k"], k: int) -> np.ndarray:
    """Zero all but the ``k`` largest-magnitude entries along the last axis (ties: lowest index)."""
    v = np.asarray(v, np.float64)
    if k >= v.shape[-1]:
        return v.copy()
    idx = np.argsort(-np.abs(v), axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(v)
    np.put_along_axis(out, idx, np.take_along_axis(v, idx, -1), -1)
    return out


def percentile_ci(samples: Float[np.ndarray, "... b"], mass: float, *, centre=None) -> tuple[np.ndarray, np.ndarray]:
    """Central percentile interval; with ``centre``, moved so the resamples' median sits on it."""
    q = 100 * (1 - mass) / 2
    with warnings.catch_warnings():  # layers without the representation are all-NaN: NaN out
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(samples, [q, 100 - q], axis=-1)
        med = np.nanmedian(samples, axis=-1)
    if centre is not None:
        lo, hi = centre + lo - med, centre + hi - med
    return lo, hi


# ---------------------------------------------------------------- representations

@dataclass(frozen=True)
class SaeView:
    """What the SAE representations need: the layer, an encoder and unit-free decoder rows."""

    layer: int
    encode: Callable[[np.ndarray], np.ndarray]
    W_dec: Float[np.ndarray, "k d"]


@dataclass(frozen=True)
class ConceptStats:
    """A concept's estimate at one layer, possibly batched over resamples ``b``.

    ``cav``: (..., d) CAV direction; ``code_diff``: (..., k) mean SAE code of positives
    − background (None without an SAE).
    """

    cav: np.ndarray
    code_diff: np.ndarray | None = None


def _dense(s: ConceptStats, sae: SaeView | None, top_k: int) -> np.ndarray:
    return s.cav


def _sae_diff(s: ConceptStats, sae: SaeView | None, top_k: int) -> np.ndarray:
    if s.code_diff is None:
        raise ValueError("representation 'sae-diff' needs SAE codes; this layer has no SAE")
    return keep_top_k(s.code_diff, top_k)


def _sae_proj(s: ConceptStats, sae: SaeView | None, top_k: int) -> np.ndarray:
    if sae is None:
        raise ValueError("representation 'sae-proj' needs an SAE; this layer has no SAE")
    dec, cav = unit(sae.W_dec), unit(s.cav)
    return keep_top_k(cav @ dec.T, top_k)


REPRESENTATIONS: dict[str, Callable[[ConceptStats, SaeView | None, int], np.ndarray]] = {
    "dense": _dense, "sae-diff": _sae_diff, "sae-proj": _sae_proj,
}
NEEDS_SAE = ("sae-diff", "sae-proj")


# ---------------------------------------------------------------- shared latents

@dataclass(frozen=True)
class SharedLatents:
    """The SAE latents carrying each concept (nonzero after top-k) and the overlaps.

    ``latents[c]``: latent ids sorted by |value|; ``values[c]``: their values;
    ``overlap[(t, r)]``: ids in both t's and r's top-k.
    """

    layer: int
    latents: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    overlap: dict[tuple[str, str], np.ndarray]

    def to_frame(self):
        import pandas as pd

        rows = []
        for concept, ids in self.latents.items():
            partners = {r for (t, r) in self.overlap if t == concept} | {t for (t, r) in self.overlap if r == concept}
            for rank, (latent, value) in enumerate(zip(ids, self.values[concept])):
                shared = sorted(p for p in partners if latent in self.overlap.get((concept, p), self.overlap.get((p, concept), ())))
                rows.append({"layer": self.layer, "concept": concept, "rank": rank, "latent": int(latent),
                             "value": float(value), "shared_with": ", ".join(shared)})
        return pd.DataFrame(rows, columns=["layer", "concept", "rank", "latent", "value", "shared_with"])


def shared_latents(reps: dict[str, Float[np.ndarray, " k"]], targets, refs, layer: int) -> SharedLatents:
    """Latents with a nonzero (top-k) value per concept and the target ∩ reference overlaps."""
    latents, values = {}, {}
    for name, v in reps.items():
        v = np.asarray(v)
        ids = np.flatnonzero(v)
        ids = ids[np.argsort(-np.abs(v[ids]), kind="stable")]
        latents[name], values[name] = ids, v[ids]
    overlap = {(t, r): np.intersect1d(latents[t], latents[r]) for t in targets for r in refs}
    return SharedLatents(layer=layer, latents=latents, values=values, overlap=overlap)


