"""Evaluating a steering vector (Methods §3 "Show"): α sweep with null band and side effects, links.

* :func:`compute_alpha_sweep`: on held-out pairs, gap(α) = log p(positive
  completion | prompt) − log p(negative completion | prompt) (summed over the
  completion's tokens, :mod:`analysis.logprobs` convention), with α·v added at
  every position. Per α also:

  - a **null band**: the gap change of ``n_null`` random directions, each
    scaled to ‖v_l‖, at the same α (is the effect specific to v?);
  - **side effects** on a capped seeded sample of neutral background text
    (``analysis.sampling``): mean next-token loss and mean KL(unsteered ‖
    steered) of the next-token distribution, each ± s.e. over texts; and the
    shift of the background's projection onto each shipped concept's CAV at a
    read-out layer (off-target concepts), in units of the unsteered
    projections' standard deviation.
* :func:`compute_cav_links`: cosine of each layer's vector with the shipped
  concepts' CAVs (``analysis.concepts``).
* :func:`compute_sae_links`: cosine of the vector with each decoder row of a
  shipped SAE at its layer; the top latents.

Background loss is the mean over texts of each text's mean token NLL (so its
s.e. is over texts). Progress may raise :class:`analysis.progress.Stopped`;
the sweep then returns the α values finished (``stopped``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from analysis.models import LoadedModel
from analysis.progress import Stopped, report
from analysis.sampling import rng, subsample
from analysis.steering.forward import Cell, mean_sem, pair_rows, prepare_batch, score_batch, score_cells
from analysis.steering.pairs import Pair
from analysis.steering.vector import SteeringVector
from analysis.vectors import cosine, unit

DEFAULT_ALPHAS = (-2.0, -1.0, 0.0, 1.0, 2.0)
DEFAULT_BACKGROUND_CAP = 16
DEFAULT_NULL = 4


@dataclass(frozen=True)
class CavProbe:
    """Unit CAVs at one read-out layer, to measure off-target projection shifts."""

    concepts: tuple[str, ...]
    layer: int
    directions: np.ndarray  # (n_concepts, d), unit rows


@dataclass(frozen=True)
class AlphaSweep:
    alphas: np.ndarray  # (n_alpha,)
    gaps: np.ndarray  # (n_alpha, n_pairs)
    background_loss: np.ndarray  # (n_alpha,)
    layers: tuple[int, ...]
    background_loss_sem: np.ndarray = None
    kl: np.ndarray = None  # (n_alpha,) mean KL(unsteered ‖ steered), nats
    kl_sem: np.ndarray = None
    null_gain: np.ndarray = None  # (n_alpha, n_null): mean gap change of random directions
    cav_shift: np.ndarray = None  # (n_alpha, n_concepts), in unsteered-projection SDs
    cav_concepts: tuple[str, ...] = ()
    cav_layer: int | None = None
    n_background: int = 0
    stopped: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def gap_mean(self) -> np.ndarray:
        return self.gaps.mean(1)

    @property
    def gap_sem(self) -> np.ndarray:
        n = self.gaps.shape[1]
        return self.gaps.std(1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(len(self.alphas))

    @property
    def gain(self) -> np.ndarray:
        """gap(α) − gap(0), mean over pairs."""
        return self.gap_mean - self.gap_mean[int(np.argmin(np.abs(self.alphas)))]

    @property
    def null_band(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the random directions' gain per α: their 2.5 and 97.5 percentiles."""
        if self.null_gain is None or self.null_gain.shape[1] == 0:
            nan = np.full(len(self.alphas), np.nan)
            return nan, nan
        return np.percentile(self.null_gain, 2.5, axis=1), np.percentile(self.null_gain, 97.5, axis=1)

    def frame(self):
        import pandas as pd

        lo, hi = self.null_band
        data = {"alpha": self.alphas, "gap_mean": self.gap_mean, "gap_sem": self.gap_sem, "gain": self.gain,
                "null_low": lo, "null_high": hi, "background_loss": self.background_loss}
        if self.background_loss_sem is not None:
            data["background_loss_sem"] = self.background_loss_sem
        if self.kl is not None:
            data["kl"], data["kl_sem"] = self.kl, self.kl_sem
        if self.cav_shift is not None:
            for j, c in enumerate(self.cav_concepts):
                data[f"cav_shift:{c}"] = self.cav_shift[:, j]
        return pd.DataFrame(data)

    def summary(self) -> dict:
        lo, hi = self.null_band
        out = {k: [None if not np.isfinite(x) else round(float(x), 6) for x in v] for k, v in {
            "alpha": self.alphas, "gap_mean": self.gap_mean, "gap_sem": self.gap_sem, "gain": self.gain,
            "null_low": lo, "null_high": hi, "background_loss": self.background_loss,
            "background_loss_sem": _or_nan(self.background_loss_sem, self.alphas),
            "kl": _or_nan(self.kl, self.alphas), "kl_sem": _or_nan(self.kl_sem, self.alphas)}.items()}
        out["null_gain"] = None if self.null_gain is None else np.round(self.null_gain, 6).tolist()
        out["n_null"] = 0 if self.null_gain is None else int(self.null_gain.shape[1])
        out["n_background"] = self.n_background
        out["layers"] = list(self.layers)
        out["stopped"] = self.stopped
        if self.cav_shift is not None:
            out["cav_layer"] = self.cav_layer
            out["cav_shift_sd"] = {c: np.round(self.cav_shift[:, j], 4).tolist()
                                   for j, c in enumerate(self.cav_concepts)}
        return out


def _or_nan(x, like):
    return np.full(len(like), np.nan) if x is None else x


def random_directions(vector: SteeringVector, layers: Sequence[int], n: int, seed: int = 0) -> list[dict[int, np.ndarray]]:
    """``n`` seeded Gaussian directions per layer, each scaled to ‖v_l‖ (the null's "same size, no meaning")."""
    out = []
    for k in range(n):
        g = rng(seed, "steering-null", k)
        out.append({int(l): unit(g.standard_normal(vector.vectors.shape[1]))
                    * float(np.linalg.norm(vector.vectors[l].astype(np.float64))) for l in layers})
    return out


def compute_alpha_sweep(
    lm: LoadedModel, vector: SteeringVector, pairs: Sequence[Pair], alphas: Sequence[float] = DEFAULT_ALPHAS, *,
    layers: Sequence[int] | None = None, background: Sequence[str] | None = None,
    max_background: int | None = DEFAULT_BACKGROUND_CAP, n_null: int = DEFAULT_NULL, cavs: CavProbe | None = None,
    seed: int = 0, progress=None,
) -> AlphaSweep:
    """gap(α) on ``pairs``, the random-direction band and the side effects at each α (α = 0 always included).

    ``max_background`` caps the background sample (seeded; None: every text). ``progress(fraction, stage)``.
    """
    if not pairs:
        raise ValueError("no held-out pairs: the α sweep needs pairs with split 'test'")
    alphas = np.array(sorted(set(float(a) for a in alphas) | {0.0}), dtype=np.float64)
    layers = tuple(vector.layers if layers is None else layers)
    if background is None:
        from analysis.concepts import background_texts

        background = background_texts()
    bg = subsample(list(background), max_background, seed, "steering-background")
    batch = prepare_batch(lm, pairs, bg)
    readout = cavs.layer if cavs is not None and bg else None
    nulls = random_directions(vector, layers, n_null, seed) if n_null else []
    steps = len(alphas) * (1 + len(nulls))
    gaps, loss, loss_sem, kl, kl_sem, null_gain, shift = [], [], [], [], [], [], []
    done = 0
    stopped = False
    try:
        report(progress, 0.0, "α sweep: unsteered baseline")
        base = score_batch(lm, batch, keep_logp=True, readout_layer=readout)
        proj0 = base.readout @ cavs.directions.T if readout is not None else None
        sd0 = proj0.std(0, ddof=1) if proj0 is not None and len(bg) > 1 else None
        for a in alphas:
            report(progress, done / steps, f"α sweep: α = {a:g}" + (
                f" and {len(nulls)} random directions" if nulls and a != 0 else ""))
            if a == 0:
                s, row = base, [0.0] * len(nulls)
            else:
                # the vector and every null direction at this α, scored together (pair rows only for nulls)
                cells = [Cell(deltas={l: a * vector.vectors[l] for l in layers}, kl=True, readout=readout is not None)]
                cells += [Cell(deltas={l: a * d for l, d in direction.items()}, rows=tuple(pair_rows(batch)))
                          for direction in nulls]
                s, *null_scores = score_cells(lm, batch, cells, base_logp=base.bg_logp, readout_layer=readout)
                row = [float(np.mean(r.gap - base.gap)) for r in null_scores]
            done += 1 + len(nulls)
            gaps.append(s.gap)
            m, e = mean_sem(s.bg_nll)
            loss.append(m)
            loss_sem.append(e)
            k, ke = (0.0, 0.0) if a == 0 else mean_sem(s.bg_kl if s.bg_kl is not None else np.zeros(0))
            kl.append(k)
            kl_sem.append(ke)
            if proj0 is not None:
                d = (s.readout @ cavs.directions.T - proj0).mean(0)
                shift.append(d / np.where(sd0 > 0, sd0, 1.0) if sd0 is not None else d)
            null_gain.append(row)
        report(progress, 1.0, "α sweep: done")
    except Stopped:
        stopped = True
        if not gaps:
            raise
        alphas = alphas[:len(gaps)]
        null_gain = [r + [np.nan] * (len(nulls) - len(r)) for r in null_gain[:len(gaps)]]
    return AlphaSweep(
        alphas=alphas, gaps=np.stack(gaps), background_loss=np.array(loss), layers=layers,
        background_loss_sem=np.array(loss_sem), kl=np.array(kl), kl_sem=np.array(kl_sem),
        null_gain=np.array(null_gain, dtype=np.float64).reshape(len(gaps), len(nulls)),
        cav_shift=np.stack(shift) if shift else None, cav_concepts=cavs.concepts if shift else (),
        cav_layer=readout if shift else None, n_background=len(bg), stopped=stopped,
    )


def fit_cav_probe(lm: LoadedModel, *, layer: int | None = None, concepts: Sequence[str] | None = None,
                  max_texts: int = 32, progress=None) -> CavProbe:
    """Mean-difference CAVs of the shipped concepts at ``layer`` (default: the last), via ``analysis.concepts``."""
    from analysis.concepts import CavConfig, background_texts, fit_cavs, load_concepts

    layer = lm.n_layers - 1 if layer is None else int(layer)
    sets = load_concepts()
    names = tuple(concepts) if concepts else tuple(
        n for n, s in sets.items() if s.source == "shipped" and s.kind == "concept")
    result = fit_cavs(lm, sets, background_texts(), CavConfig(
        concepts=names, layers=(layer,), method="mean_diff", n_folds=2, n_random=1, max_texts=max_texts),
        progress=progress)
    return CavProbe(concepts=names, layer=layer, directions=unit(result.vectors[:, 0]))


# ---------------------------------------------------------------- links


@dataclass(frozen=True)
class CavLinks:
    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    cosine: np.ndarray  # (n_concepts, n_layers)


def compute_cav_links(lm: LoadedModel, vector: SteeringVector, *, concepts: Sequence[str] | None = None,
                      method: str = "mean_diff", progress=None) -> CavLinks:
    """Cosine of v_l with each shipped concept's CAV at every layer (CAVs from ``analysis.concepts.cavs``)."""
    from analysis.concepts import CavConfig, fit_cavs
    from analysis.concepts import background_texts, load_concepts

    sets = load_concepts()
    names = tuple(concepts) if concepts else tuple(
        n for n, s in sets.items() if s.source == "shipped" and s.kind == "concept")
    result = fit_cavs(lm, sets, background_texts(), CavConfig(concepts=names, method=method, n_folds=2, n_random=1),
                      progress=progress)
    cos = np.stack([[float(cosine(vector.vectors[l], result.vectors[c, i]))
                     for i, l in enumerate(result.layers)] for c in range(len(names))])
    return CavLinks(concepts=names, layers=tuple(result.layers), cosine=cos)


@dataclass(frozen=True)
class SaeLinks:
    sae: str
    layer: int
    latents: np.ndarray  # top latent ids by |cosine|
    cosine: np.ndarray  # their cosines with v_layer


def compute_sae_links(lm: LoadedModel, vector: SteeringVector, *, sae_name: str | None = None,
                      layer: int = 6, top_k: int = 15) -> SaeLinks:
    """The SAE latents whose decoder directions align most with v at the SAE's layer (sae-proj style)."""
    from analysis.saes import load_sae, shipped_for

    if sae_name is None:
        found = shipped_for(lm.name, layer=layer)
        if not found:
            raise ValueError(f"no shipped SAE for {lm.name!r} at layer {layer}; load one by name or folder")
        sae_name = found[0]
    sae = load_sae(sae_name)
    if sae.layer is None or sae.d_in != lm.d_model:
        raise ValueError(f"SAE {sae_name!r} reads {sae.hook_name!r} with d_in={sae.d_in}; it does not fit {lm.name!r}")
    w_dec = sae.sae.W_dec.detach().float().cpu().numpy()
    cos = cosine(vector.vectors[sae.layer][None], w_dec)
    top = np.argsort(-np.abs(cos))[:top_k]
    return SaeLinks(sae=sae_name, layer=int(sae.layer), latents=top, cosine=cos[top])


# ---------------------------------------------------------------- recipes
