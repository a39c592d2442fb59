"""2-D projections (PCA, UMAP) of text activations, for the concept scatter.

``project(acts, method, seed)`` maps ``(n, d)`` to ``(n, 2)``. UMAP is seeded
(``random_state`` makes it deterministic and single-threaded) and its
``n_neighbors`` shrinks for small ``n`` so it stays below the sample count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from jaxtyping import Float

from analysis.concepts.sets import DEFAULT_BACKGROUND, check_name
from analysis.recipes import check_config_keys

METHODS = ("pca", "umap")
POOLINGS = ("last", "mean")


def project(acts: Float[np.ndarray, "n d"], method: str = "pca", seed: int = 0) -> Float[np.ndarray, "n 2"]:
    """Project rows of ``acts`` to two dimensions with PCA or UMAP."""
    if method not in METHODS:
        raise ValueError(f"projection method {method!r}: valid methods are {METHODS}")
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[0] < 3:
        raise ValueError(f"need an (n, d) array with n ≥ 3 rows to project, got shape {acts.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(acts)
    import umap

    n_neighbors = max(2, min(15, acts.shape[0] - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=seed, n_jobs=1,
                        init="random" if acts.shape[0] < 10 else "spectral")
    return np.asarray(reducer.fit_transform(acts), dtype=np.float64)


@dataclass(frozen=True)
class ProjectionConfig:
    """Which concepts to scatter at which layer; ``max_texts`` caps each set (background too)."""

    concepts: tuple[str, ...]
    layer: int
    method: str = "pca"
    pooling: str = "last"
    seed: int = 0
    max_texts: int | None = 100
    background: str = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        if isinstance(self.concepts, str) or not self.concepts:
            raise ValueError("concepts must be a non-empty tuple of concept names")
        for name in self.concepts:
            check_name(name)
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer {self.layer!r} must be a non-negative integer")
        if self.method not in METHODS:
            raise ValueError(f"projection method {self.method!r}: valid methods are {METHODS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: valid poolings are {POOLINGS}")
        if self.max_texts is not None and self.max_texts < 2:
            raise ValueError(f"max_texts={self.max_texts} must be at least 2, or None")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ProjectionConfig":
        check_config_keys(cls, d, "projection")
        return cls(**{**d, "concepts": tuple(d["concepts"]), "layer": int(d["layer"])})


@dataclass(frozen=True)
class ProjectionData:
    coords: Float[np.ndarray, "n 2"]
    labels: tuple[str, ...]
    texts: tuple[str, ...]
    method: str
    layer: int


def compute_projection(lm, concept_sets: dict, background: tuple[str, ...], config: ProjectionConfig, *,
                       extract_layers: Sequence[int] = ()) -> ProjectionData:
    """Activations of each concept's texts and the background at one layer, projected jointly.

    ``extract_layers``: more layers to extract in the same pass (disk-cached together). A page that
    lets the user switch the layer shown passes all of them, so the switch reads the cache and never
    runs the model again; the projection itself only uses ``config.layer``.
    """
    from analysis.concepts.cavs import resolve_layers, stacked_activations

    layers = resolve_layers(lm, sorted({config.layer, *extract_layers}))
    at = layers.index(config.layer)
    missing = [c for c in config.concepts if c not in concept_sets]
    if missing:
        raise ValueError(f"unknown concepts {missing}; available concepts are {sorted(concept_sets)}")
    groups = [(config.background, tuple(background))] + [(c, tuple(concept_sets[c].texts)) for c in config.concepts]
    rng = np.random.default_rng(config.seed)
    labels, texts, rows = [], [], []
    for label, group in groups:
        if config.max_texts is not None and len(group) > config.max_texts:
            group = tuple(group[i] for i in np.sort(rng.choice(len(group), config.max_texts, replace=False)))
        rows.append(stacked_activations(lm, group, layers, config.pooling)[at])
        labels += [label] * len(group)
        texts += list(group)
    coords = project(np.concatenate(rows), config.method, config.seed)
    return ProjectionData(coords, tuple(labels), tuple(texts), config.method, config.layer)


def projection_frame(data: ProjectionData):
    import pandas as pd

    return pd.DataFrame({"label": data.labels, "text": data.texts, "x": data.coords[:, 0], "y": data.coords[:, 1]})
