"""Figure recipes of the steering view (layer search, alpha sweep, CAV and SAE links)."""

from __future__ import annotations

import pandas as pd

from analysis.steering.evaluation import DEFAULT_ALPHAS, compute_alpha_sweep, compute_cav_links, compute_sae_links
from analysis.steering.figures import alpha_sweep_figure, cav_links_figure, sae_links_figure, search_figure
from analysis.steering.pairs import load_pair_set
from analysis.steering.vector import SteeringConfig, build_steering_vector


def _vector_from_config(lm, config: dict, *, need_search: bool = False):
    """The vector of a recipe; with a pinned ``layer`` and no search figure wanted, the cheap score is run
    (the vectors are the same whatever the search: mean differences of every training pair)."""
    pair_set = load_pair_set(config.get("pairs", "sentiment"))
    score = config.get("score", "behavioural")
    if config.get("layer") is not None and not need_search:
        score = "paper"
    cfg = SteeringConfig(position=config.get("position", "minus2"), score=score,
                         search_layers=tuple(config["search_layers"]) if config.get("search_layers") else None)
    vec, search, _ = build_steering_vector(lm, pair_set, cfg, layer=config.get("layer"))
    return pair_set, vec, search


def _search_recipe(lm, config: dict):
    _, vec, search = _vector_from_config(lm, config, need_search=True)
    frame = pd.DataFrame({"layer": search.layers, "score": search.scores})
    return search_figure(search, chosen=vec.layers[0]), frame


def _sweep_recipe(lm, config: dict):
    pair_set, vec, _ = _vector_from_config(lm, config)
    sweep = compute_alpha_sweep(lm, vec, pair_set.test, config.get("alphas", DEFAULT_ALPHAS))
    return alpha_sweep_figure(sweep), sweep.frame()


def _cav_recipe(lm, config: dict):
    _, vec, _ = _vector_from_config(lm, config)
    links = compute_cav_links(lm, vec)
    frame = pd.DataFrame(links.cosine, index=list(links.concepts), columns=list(links.layers))
    return cav_links_figure(links, layer=vec.layers[0]), frame.reset_index(names="concept")


def _sae_recipe(lm, config: dict):
    _, vec, _ = _vector_from_config(lm, config)
    links = compute_sae_links(lm, vec, sae_name=config.get("sae"))
    return sae_links_figure(links), pd.DataFrame({"latent": links.latents, "cosine": links.cosine})


RECIPES = {
    "steering_layer_search": _search_recipe,
    "steering_alpha_sweep": _sweep_recipe,
    "steering_cav_links": _cav_recipe,
    "steering_sae_links": _sae_recipe,
}
