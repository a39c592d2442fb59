"""Figure recipes of the likelihood view (CHES ranking, single-token geometry, DPO runs).

A DPO recipe's config is ``{"source": set or path, "pairs": [indices], **DPOConfig.to_dict()}``:
the exact pairs, every setting and the seeds, so re-running it re-trains the
same runs and reproduces the figure's numbers (full batch is deterministic
on one machine; mini-batches are drawn from the seeds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.likelihood.ches import LikelihoodConfig, rank_pairs
from analysis.likelihood.dpo import run_dpo
from analysis.likelihood.dpo_config import DPOConfig
from analysis.likelihood.dpo_results import (
    discovery_frame,
    gainers_frame,
    history_frame,
    trajectory_frame,
)
from analysis.likelihood.figures import (
    ches_histogram_figure,
    ches_similarity_figure,
    dpo_curves_figure,
    dpo_gainers_figure,
    dpo_indicators_figure,
    dpo_rank_figure,
    token_geometry_figure,
)
from analysis.likelihood.geometry import single_token_geometry
from analysis.likelihood.preferences import (
    PreferenceData,
    load_preferences,
    load_shipped,
    shipped_sets,
)
from analysis.recipes import check_config_keys

DPO_KINDS = ("dpo_curves", "dpo_indicators", "dpo_gainers", "dpo_rank")


def _recipe_data(lm, config: dict) -> PreferenceData:
    source = config.get("source", "displacement_demo")
    if source in shipped_sets():
        return load_shipped(source, lm.tokenizer)
    return load_preferences(Path(source), lm.tokenizer)


def dpo_recipe_config(source: str, pairs, cfg: DPOConfig) -> dict:
    """The config a DPO figure's recipe stores (see the module docstring)."""
    return {"source": source, "pairs": [int(i) for i in pairs], **cfg.to_dict()}


def split_dpo_config(config: dict) -> tuple[str, list[int] | None, DPOConfig]:
    rest = {k: v for k, v in config.items() if k not in ("source", "pairs")}
    pairs = config.get("pairs")
    return config.get("source", "displacement_demo"), None if pairs is None else list(pairs), DPOConfig.from_dict(rest)


def dpo_figures(result) -> dict:
    """Every DPO figure of a result, with its data frame: ``{kind: (figure, frame)}``."""
    hist = history_frame(result)
    traj, gain = trajectory_frame(result), gainers_frame(result)
    return {
        "dpo_curves": (dpo_curves_figure(hist), hist),
        "dpo_indicators": (dpo_indicators_figure(hist), hist),
        "dpo_gainers": (dpo_gainers_figure(traj, gain), traj),
        "dpo_rank": (dpo_rank_figure(hist), hist),
    }


@dataclass(frozen=True)
class ChesRecipeConfig:
    """A CHES figure's recipe: the preference set, the score shown, and how responses are scored."""

    source: str = "displacement_demo"
    top_k: int = 10
    score: str = "ches"
    append_eos: bool = False
    similarity: str = "token_jaccard"

    def __post_init__(self) -> None:
        if not isinstance(self.append_eos, bool):
            raise ValueError(f"append_eos {self.append_eos!r}: give true or false")
        if self.similarity not in ("token_jaccard", "edit_distance"):
            raise ValueError(f"similarity {self.similarity!r}: valid are token_jaccard, edit_distance")
        LikelihoodConfig(top_k=int(self.top_k), append_eos=self.append_eos)  # validates top_k

    @classmethod
    def from_dict(cls, config: dict) -> "ChesRecipeConfig":
        check_config_keys(cls, config, "CHES recipe")
        return cls(**config)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GeometryRecipeConfig:
    """The single-token geometry figure's recipe: which preference set."""

    source: str = "displacement_demo"

    @classmethod
    def from_dict(cls, config: dict) -> "GeometryRecipeConfig":
        check_config_keys(cls, config, "token-geometry recipe")
        return cls(**config)


def _ches_recipe(kind: str):
    def build(lm, config: dict):
        rc = ChesRecipeConfig.from_dict(config)
        data = _recipe_data(lm, {"source": rc.source})
        frame = rank_pairs(lm, data, LikelihoodConfig(top_k=int(rc.top_k), append_eos=rc.append_eos))
        if kind == "ches_histogram":
            return ches_histogram_figure(frame, score=rc.score), frame
        return ches_similarity_figure(frame, score=rc.score, similarity=rc.similarity), frame
    return build


def _geometry_recipe(lm, config: dict):
    rc = GeometryRecipeConfig.from_dict(config)
    frame = single_token_geometry(lm, list(_recipe_data(lm, {"source": rc.source}).pairs))
    return token_geometry_figure(frame), frame


def _dpo_recipe(kind: str):
    def build(lm, config: dict):
        _, pairs, cfg = split_dpo_config(config)
        result = run_dpo(lm, _recipe_data(lm, config), cfg, pairs=pairs)
        return dpo_figures(result)[kind]
    return build


def _discovery_recipe(lm, config: dict):
    _, pairs, cfg = split_dpo_config(config)
    result = run_dpo(lm, _recipe_data(lm, config), cfg, pairs=pairs)
    fig, _ = dpo_figures(result)["dpo_gainers"]
    return fig, discovery_frame(result)


RECIPES = {
    "ches_histogram": _ches_recipe("ches_histogram"),
    "ches_vs_similarity": _ches_recipe("ches_vs_similarity"),
    "token_geometry": _geometry_recipe,
    **{kind: _dpo_recipe(kind) for kind in DPO_KINDS},
    "dpo_discovery": _discovery_recipe,
}
