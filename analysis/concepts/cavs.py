"""Concept activation vectors (CAVs) with held-out accuracy and TCAV significance.

Follows Methods §1 (TCAV, Kim et al. 2018; BiasLens step 1):

* positives: a concept's texts; negatives: the shared background set, sampled
  (with ``seed``) to the concept's size so the classes are balanced;
* activation: ``resid_post[l]`` at the last real token (or the token mean);
* per layer a linear classifier is fitted by a fitter from ``FITTERS``:
  ``logistic`` (L2 logistic regression with scikit-learn's ``LogisticRegression(C)``
  objective, the paper's choice, solved for every layer, fold and random split
  at once by :mod:`analysis.concepts.logistic`) or ``mean_diff`` (mean positive −
  mean negative, threshold at the midpoint); CAV = weight vector / its norm;
* accuracy: mean held-out accuracy over ``StratifiedKFold(n_folds, shuffle,
  random_state=seed)``; for ``logistic`` it equals sklearn's ``cross_val_score``
  where sklearn converges (its default tol=1e-4 stops short on large-norm layers);
* significance: ``n_random`` fake concepts, each a random half of the background
  (same size as the concept) against the other half, scored the same way, give
  a null accuracy distribution per layer. ``p_value = (1 + #{null ≥ acc}) /
  (1 + n_random)``; a CAV is ``significant`` only when its accuracy is above
  every null run (the smallest p-value the run count allows).

Footguns: ``n_random`` bounds the attainable p-value (10 runs → p ≥ 0.091);
raise it for a finer test. The null depends only on the concept size, so
concepts of equal size share it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float

from analysis import vectors
from analysis.activations import extract, resid_hooks
from analysis.concepts.fitters import FITTERS, _logistic_cv, cv_accuracy, folds_for, unit
from analysis.concepts.pooled import RowPool
from analysis.concepts.sets import DEFAULT_BACKGROUND, ConceptSet, check_name
from analysis.progress import Progress, report
from analysis.recipes import check_config_keys
from analysis.sampling import rng as seeded_rng
from analysis.sampling import subsample

POOLINGS = ("last", "mean")


# ---------------------------------------------------------------- config/result

@dataclass(frozen=True)
class CavConfig:
    """What to fit. ``layers=None`` means every layer; ``max_texts`` caps each concept."""

    concepts: tuple[str, ...]
    layers: tuple[int, ...] | None = None
    pooling: str = "last"
    method: str = "logistic"
    n_folds: int = 5
    n_random: int = 10
    C: float = 1.0
    seed: int = 0
    max_texts: int | None = None
    background: str = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        if isinstance(self.concepts, str) or not self.concepts:
            raise ValueError("concepts must be a non-empty tuple of concept names, e.g. ('positive_sentiment',)")
        for name in self.concepts:
            check_name(name)
        if len(set(self.concepts)) != len(self.concepts):
            raise ValueError(f"concepts {self.concepts} contain duplicates; list each concept once")
        if self.layers is not None:
            if not self.layers or any(not isinstance(l, int) or l < 0 for l in self.layers):
                raise ValueError(f"layers {self.layers} must be non-negative integers, or None for all layers")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers {self.layers} contain duplicates")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: valid poolings are {POOLINGS}")
        if self.method not in FITTERS:
            raise ValueError(f"method {self.method!r}: valid methods are {tuple(FITTERS)}")
        if self.n_folds < 2:
            raise ValueError(f"n_folds={self.n_folds}: need at least 2 folds")
        if self.n_random < 1:
            raise ValueError(f"n_random={self.n_random}: need at least 1 random-split run for the TCAV null")
        if not self.C > 0:
            raise ValueError(f"C={self.C}: the inverse regularisation strength must be positive")
        if self.max_texts is not None and self.max_texts < self.n_folds:
            raise ValueError(f"max_texts={self.max_texts} must be at least n_folds={self.n_folds}, or None")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        d["layers"] = None if self.layers is None else list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CavConfig":
        check_config_keys(cls, d, "CAV")
        d = dict(d)
        d["concepts"] = tuple(d["concepts"])
        if d.get("layers") is not None:
            d["layers"] = tuple(int(l) for l in d["layers"])
        return cls(**d)


@dataclass(frozen=True)
class CavResult:
    """CAVs for ``concepts`` × ``layers``; arrays are indexed [concept, layer(, ...)].

    ``random_accuracy``: the null runs (C, L, n_random); ``random_mean/std/min/max``
    summarise it; ``n_texts``: positives (= sampled negatives) per concept.
    """

    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    vectors: Float[np.ndarray, "c l d"]
    accuracy: Float[np.ndarray, "c l"]
    accuracy_std: Float[np.ndarray, "c l"]
    random_accuracy: Float[np.ndarray, "c l r"]
    p_value: Float[np.ndarray, "c l"]
    significant: Bool[np.ndarray, "c l"]
    n_texts: np.ndarray
    config: dict = field(default_factory=dict)
    model: str = ""

    @property
    def random_mean(self) -> np.ndarray:
        return self.random_accuracy.mean(-1)

    @property
    def random_std(self) -> np.ndarray:
        return self.random_accuracy.std(-1)

    @property
    def random_min(self) -> np.ndarray:
        return self.random_accuracy.min(-1)

    @property
    def random_max(self) -> np.ndarray:
        return self.random_accuracy.max(-1)

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not fitted; fitted layers are {list(self.layers)}")
        return self.layers.index(layer)

    def concept_index(self, concept: str) -> int:
        if concept not in self.concepts:
            raise ValueError(f"concept {concept!r} was not fitted; fitted concepts are {list(self.concepts)}")
        return self.concepts.index(concept)

    def vector(self, concept: str, layer: int) -> Float[np.ndarray, " d"]:
        return self.vectors[self.concept_index(concept), self.layer_index(layer)]

    def best_layer(self, concept: str) -> int:
        return self.layers[int(np.argmax(self.accuracy[self.concept_index(concept)]))]

    def save(self, folder: str | Path) -> Path:
        """Write ``cavs.safetensors`` (arrays) and ``cavs.json`` (names, config) into ``folder``."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(getattr(self, k)) for k in _ARRAYS}, str(folder / "cavs.safetensors"))
        meta = {"format": "repscope-cavs", "version": 1, "concepts": list(self.concepts),
                "layers": list(self.layers), "config": self.config, "model": self.model}
        (folder / "cavs.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "CavResult":
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / "cavs.json").read_text())
            arrays = load_file(str(folder / "cavs.safetensors"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{folder}: not a saved CAV result (needs cavs.json + cavs.safetensors): {err}") from err
        if meta.get("format") != "repscope-cavs":
            raise ValueError(f"{folder}/cavs.json is not a RepScope CAV file")
        return cls(concepts=tuple(meta["concepts"]), layers=tuple(meta["layers"]),
                   config=meta["config"], model=meta["model"], **{k: arrays[k] for k in _ARRAYS})


_ARRAYS = ("vectors", "accuracy", "accuracy_std", "random_accuracy", "p_value", "significant", "n_texts")


# ---------------------------------------------------------------- fitting

def _null_draws(m: int, n: int, config: CavConfig) -> list[np.ndarray]:
    """Background indices of the ``n_random`` fake concepts: ``n`` vs ``n`` random halves."""
    if 2 * n > m:
        raise ValueError(f"random splits need 2×{n} background texts but there are {m}; set max_texts ≤ {m // 2}")
    rng = seeded_rng(config.seed, "null", n)
    return [rng.permutation(m)[: 2 * n] for _ in range(config.n_random)]


def null_accuracies(neg: Float[np.ndarray, "l m d"], n: int, config: CavConfig, *,
                    device: str | torch.device | None = None) -> Float[np.ndarray, "l r"]:
    """TCAV null: ``n_random`` random halves of the background (``n`` vs ``n``) per layer."""
    draws = _null_draws(neg.shape[1], n, config)
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    if config.method == "logistic":
        x = np.stack([neg[:, idx] for idx in draws])  # (r, l, 2n, d)
        acc = _logistic_cv(x.reshape(-1, 2 * n, neg.shape[2]), y, folds_for(y, config.n_folds, config.seed),
                           config.C, torch.device(device or "cpu"), n_full=0)[2]
        return acc.mean(-1).reshape(len(draws), neg.shape[0]).T
    out = np.zeros((neg.shape[0], config.n_random))
    for r, idx in enumerate(draws):
        for li in range(neg.shape[0]):
            out[li, r] = cv_accuracy(neg[li, idx], y, config.method, n_folds=config.n_folds, C=config.C, seed=config.seed)[0]
    return out


def fit_cavs_arrays(
    positives: dict[str, Float[np.ndarray, "l n d"]],
    negatives: Float[np.ndarray, "l m d"],
    config: CavConfig,
    layers: Sequence[int],
    *,
    progress: Progress | None = None,
    model: str = "",
    device: str | torch.device | None = None,
) -> CavResult:
    """Fit CAVs on pre-extracted activations (stacked over ``layers``); see module doc.

    ``logistic``: every layer, concept, fold and random split of one concept size
    is one batched solve (:mod:`analysis.concepts.logistic`) on ``device``
    (default CPU; pass the model's device to fit on the GPU).
    """
    names = list(config.concepts)
    missing = [c for c in names if c not in positives]
    if missing:
        raise ValueError(f"no activations for concepts {missing}")
    dev = torch.device(device or "cpu")
    n_l, m, d = negatives.shape
    vecs = np.zeros((len(names), n_l, d), np.float32)
    acc, acc_std = np.zeros((len(names), n_l)), np.zeros((len(names), n_l))
    rand = np.zeros((len(names), n_l, config.n_random))
    sizes = np.zeros(len(names), np.int64)
    picked: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # sampled (positive, background) rows
    for ci, name in enumerate(names):
        pos = positives[name]
        n = min(pos.shape[1], m, config.max_texts or pos.shape[1])
        if n < config.n_folds:
            raise ValueError(f"concept {name!r} has {n} texts; need at least n_folds={config.n_folds}")
        rng = seeded_rng(config.seed, "sample", name)
        pos_idx = np.sort(rng.choice(pos.shape[1], n, replace=False))
        neg_idx = np.sort(rng.choice(m, n, replace=False))
        picked[name] = (pos_idx, neg_idx)
        sizes[ci] = n
    if config.method == "logistic":
        pool = RowPool(negatives, {name: positives[name] for name in names}, dev)
    for k, n in enumerate(sorted(set(sizes.tolist()))):
        group = [ci for ci in range(len(names)) if sizes[ci] == n]
        y = np.r_[np.ones(n, int), np.zeros(n, int)]
        folds = folds_for(y, config.n_folds, config.seed)
        draws = _null_draws(m, n, config)
        if config.method == "logistic":
            # the concepts of this size and their shared null, all layers, as one batch; the
            # null's vectors are never used, so only its folds are fitted
            problems = [pool.rows(names[ci], picked[names[ci]]) for ci in group] + [pool.rows(None, idx) for idx in draws]
            v, fold_acc = pool.fit(problems, y, folds, config.C, n_full=len(group))
            vecs[group] = v
            acc[group], acc_std[group] = fold_acc[: len(group)].mean(-1), fold_acc[: len(group)].std(-1)
            rand[group] = fold_acc[len(group):].mean(-1).T
        else:
            for ci in group:
                pos_idx, neg_idx = picked[names[ci]]
                for li in range(n_l):
                    x = np.concatenate([positives[names[ci]][li, pos_idx], negatives[li, neg_idx]])
                    w, _ = FITTERS[config.method](x, y, C=config.C, seed=config.seed)
                    vecs[ci, li] = unit(w)
                    acc[ci, li], acc_std[ci, li] = cv_accuracy(x, y, config.method, n_folds=config.n_folds,
                                                               C=config.C, seed=config.seed)
            rand[group] = null_accuracies(negatives, n, config)
        report(progress, (k + 1) / len(set(sizes.tolist())), f"CAVs and random-split null, {n} texts per class")
    pval = (1 + (rand >= acc[..., None]).sum(-1)) / (1 + config.n_random)
    significant = acc > rand.max(-1)
    return CavResult(
        concepts=tuple(names), layers=tuple(int(l) for l in layers), vectors=vecs, accuracy=acc,
        accuracy_std=acc_std, random_accuracy=rand, p_value=pval, significant=significant,
        n_texts=sizes, config=config.to_dict(), model=model,
    )


def stacked_activations(lm, texts: Sequence[str], layers: Sequence[int], pooling: str, *,
                        use_cache: bool = True, progress: Callable[[float], None] | None = None) -> Float[np.ndarray, "l n d"]:
    """``resid_post`` of ``texts`` at ``layers`` in one extraction pass, stacked."""
    hooks = resid_hooks(lm, list(layers))
    acts = extract(lm, list(texts), hooks, pooling=pooling, use_cache=use_cache, progress=progress)
    return acts.layer_stack(hooks)


def resolve_layers(lm, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(lm.n_layers))
    bad = [l for l in layers if not 0 <= l < lm.n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range; {lm.name} has layers 0-{lm.n_layers - 1}")
    return sorted(layers)


def fit_cavs(
    lm,
    concept_sets: dict[str, ConceptSet] | Sequence[ConceptSet],
    background: Sequence[str],
    config: CavConfig,
    progress: Progress | None = None,
    *,
    use_cache: bool = True,
) -> CavResult:
    """Extract activations once per text set (all layers), then fit every CAV.

    With ``max_texts`` the texts are sampled before extraction (``max_texts`` per
    concept, ``2 × max_texts`` background), so the cap also bounds the model's work.
    """
    sets = concept_sets if isinstance(concept_sets, dict) else {s.name: s for s in concept_sets}
    missing = [c for c in config.concepts if c not in sets]
    if missing:
        raise ValueError(f"unknown concepts {missing}; available concepts are {sorted(sets)}")
    layers = resolve_layers(lm, config.layers)
    texts = {name: subsample(sets[name].texts, config.max_texts, config.seed, "texts", name) for name in config.concepts}
    # the null needs 2×n background texts; with max_texts only that many are extracted
    background = subsample(background, None if config.max_texts is None else 2 * config.max_texts, config.seed, "texts", "background")
    total = len(config.concepts) + 1

    def stage(i: int, what: str):
        return (lambda f: progress(0.5 * (i + f) / total, f"activations: {what}")) if progress else None

    negatives = stacked_activations(lm, background, layers, config.pooling, use_cache=use_cache, progress=stage(0, "background"))
    positives = {
        name: stacked_activations(lm, texts[name], layers, config.pooling, use_cache=use_cache, progress=stage(i + 1, name))
        for i, name in enumerate(config.concepts)
    }
    fit_progress = (lambda f, msg: progress(0.5 + 0.5 * f, msg)) if progress else None
    return fit_cavs_arrays(positives, negatives, config, layers, progress=fit_progress, model=lm.name,
                           device=_model_device(lm))


def _model_device(lm) -> torch.device:
    """CUDA when the model is on a GPU; else CPU (MPS has no float64, which the fits use)."""
    device = str(getattr(lm, "device", "cpu"))
    return torch.device(device if device.startswith("cuda") and torch.cuda.is_available() else "cpu")


def cosine_matrix(result: CavResult, layer: int) -> Float[np.ndarray, "c c"]:
    """Cosine similarity between the concepts' CAVs at ``layer`` (:func:`analysis.vectors.cosine_matrix`)."""
    return vectors.cosine_matrix(result.vectors[:, result.layer_index(layer)])


# ---------------------------------------------------------------- frames and recipes

def accuracy_frame(result: CavResult):
    """Long table: one row per (concept, layer) with accuracy, random band and significance."""
    import pandas as pd

    rows = []
    for ci, name in enumerate(result.concepts):
        for li, layer in enumerate(result.layers):
            rows.append({
                "concept": name, "layer": layer, "accuracy": result.accuracy[ci, li],
                "accuracy_std": result.accuracy_std[ci, li], "random_mean": result.random_mean[ci, li],
                "random_std": result.random_std[ci, li], "random_min": result.random_min[ci, li],
                "random_max": result.random_max[ci, li], "p_value": result.p_value[ci, li],
                "significant": bool(result.significant[ci, li]), "n_texts": int(result.n_texts[ci]),
            })
    return pd.DataFrame(rows)


def similarity_frame(result: CavResult, layer: int):
    import pandas as pd

    return pd.DataFrame(cosine_matrix(result, layer), index=list(result.concepts), columns=list(result.concepts))


def fit_from_config(lm, config: CavConfig, progress: Progress | None = None) -> CavResult:
    """Load the named concepts and background (shipped + workspace) and fit."""
    from analysis.concepts.sets import background_texts, load_concepts

    return fit_cavs(lm, load_concepts(), background_texts(config.background), config, progress)
