"""Figure recipes of the steering view (layer search, alpha sweep, CAV and SAE links)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from analysis.recipes import check_config_keys
from analysis.steering.evaluation import (
    DEFAULT_ALPHAS,
    compute_alpha_sweep,
    compute_cav_links,
    compute_sae_links,
)
from analysis.steering.figures import (
    alpha_sweep_figure,
    cav_links_figure,
    sae_links_figure,
    search_figure,
)
from analysis.steering.pairs import load_pair_set
from analysis.steering.vector import SteeringConfig, build_steering_vector


@dataclass(frozen=True)
class SteeringRecipeConfig:
    """What a steering figure's recipe stores: the pair set, the vector's settings, the layer, the α list."""

    pairs: str = "sentiment"
    position: str = "minus2"
    score: str = "behavioural"
    search_layers: tuple[int, ...] | None = None
    layer: int | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    sae: str | None = None

    def __post_init__(self) -> None:
        if self.search_layers is not None:
            object.__setattr__(self, "search_layers", tuple(int(l) for l in self.search_layers))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)):
            raise ValueError(f"layer {self.layer!r}: give an integer layer or leave it out")
        SteeringConfig(position=self.position, score=self.score, search_layers=self.search_layers)  # validates

    @classmethod
    def from_dict(cls, config: dict) -> "SteeringRecipeConfig":
        check_config_keys(cls, config, "steering recipe")
        return cls(**config)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alphas"] = list(self.alphas)
        d["search_layers"] = None if self.search_layers is None else list(self.search_layers)
        return d


def _vector_from_config(lm, config: dict, *, need_search: bool = False):
    """The vector of a recipe; with a pinned ``layer`` and no search figure wanted, the cheap score is run
    (the vectors are the same whatever the search: mean differences of every training pair)."""
    rc = SteeringRecipeConfig.from_dict(config)
    pair_set = load_pair_set(rc.pairs)
    score = "paper" if rc.layer is not None and not need_search else rc.score
    cfg = SteeringConfig(position=rc.position, score=score, search_layers=rc.search_layers)
    vec, search, _ = build_steering_vector(lm, pair_set, cfg, layer=rc.layer)
    return pair_set, vec, search


def _search_recipe(lm, config: dict):
    _, vec, search = _vector_from_config(lm, config, need_search=True)
    frame = pd.DataFrame({"layer": search.layers, "score": search.scores})
    return search_figure(search, chosen=vec.layers[0]), frame


def _sweep_recipe(lm, config: dict):
    pair_set, vec, _ = _vector_from_config(lm, config)
    sweep = compute_alpha_sweep(lm, vec, pair_set.test, SteeringRecipeConfig.from_dict(config).alphas)
    return alpha_sweep_figure(sweep), sweep.frame()


def _cav_recipe(lm, config: dict):
    _, vec, _ = _vector_from_config(lm, config)
    links = compute_cav_links(lm, vec)
    frame = pd.DataFrame(links.cosine, index=list(links.concepts), columns=list(links.layers))
    return cav_links_figure(links, layer=vec.layers[0]), frame.reset_index(names="concept")


def _sae_recipe(lm, config: dict):
    _, vec, _ = _vector_from_config(lm, config)
    links = compute_sae_links(lm, vec, sae_name=SteeringRecipeConfig.from_dict(config).sae)
    return sae_links_figure(links), pd.DataFrame({"latent": links.latents, "cosine": links.cosine})


RECIPES = {
    "steering_layer_search": _search_recipe,
    "steering_alpha_sweep": _sweep_recipe,
    "steering_cav_links": _cav_recipe,
    "steering_sae_links": _sae_recipe,
}
