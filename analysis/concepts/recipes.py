"""Figure recipes of the concepts view (CAV accuracy, similarity, projection)."""

from __future__ import annotations

from analysis.concepts.cavs import (
    CavConfig,
    accuracy_frame,
    fit_from_config,
    similarity_frame,
)
from analysis.concepts.figures import (
    accuracy_figure,
    projection_figure,
    similarity_figure,
)
from analysis.concepts.projection import (
    ProjectionConfig,
    compute_projection,
    projection_frame,
)
from analysis.concepts.sets import background_texts, load_concepts
from analysis.recipes import check_config_keys


def _accuracy_recipe(lm, config: dict):

    result = fit_from_config(lm, CavConfig.from_dict(config))
    return accuracy_figure(result), accuracy_frame(result)


def _similarity_recipe(lm, config: dict):

    check_config_keys(CavConfig, {k: v for k, v in config.items() if k != "layer"}, "cav_similarity recipe")
    config = dict(config)
    if "layer" not in config:
        raise ValueError("cav_similarity recipe needs a 'layer'")
    layer = int(config.pop("layer"))
    result = fit_from_config(lm, CavConfig.from_dict(config))
    frame = similarity_frame(result, layer)
    return similarity_figure(frame.to_numpy(), result.concepts, layer), frame.reset_index(names="concept")




def _projection_recipe(lm, config: dict):

    cfg = ProjectionConfig.from_dict(config)
    data = compute_projection(lm, load_concepts(), background_texts(cfg.background), cfg)
    fig = projection_figure(data.coords, data.labels, method=data.method, layer=data.layer,
                            texts=data.texts, background_label=cfg.background)
    return fig, projection_frame(data)


RECIPES = {
    "cav_accuracy": _accuracy_recipe,
    "cav_similarity": _similarity_recipe,
    "concept_projection": _projection_recipe,
}
