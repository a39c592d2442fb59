"""Behavioural layer search (CAA practice, Rimsky et al. 2024 §3): steer each candidate layer, measure.

For each candidate layer l and strength s (in units of the layer's mean
residual norm, so layers are comparable), add ``α_l(s) · v_l`` with
``α_l(s) = s · mean‖resid_post[l]‖ / ‖v_l‖`` at every position and measure on
*validation* pairs (held out from the vector's fit pairs):

* gain(l, s) = mean gap(α) − mean gap(0), gap = log p(positive) − log p(negative);
* cost(l, s) = mean background NLL(α) − NLL(0), on a capped seeded sample of
  neutral text (paired: same texts at every cell), nats/token.

Rules (:data:`RULES`, chosen by name):

* ``budget`` (default): score_l = the gain at cost = ``loss_budget`` on the
  piecewise-linear (cost, gain) curve through (0, 0) in strength order (cells
  within budget count as they are; no extrapolation past the largest cost).
  "How far does this layer move the behaviour for a fixed amount of damage to
  language modelling." Interpolating matters: on Gemma-3-270M every measured
  cell exceeds 0.25 nats/token, and a plain "best cell within budget" rule
  then ties every layer at 0.
* ``ratio``: score_l = max_s gain / max(cost, ``ratio_floor``): gain per nat of
  damage; the floor keeps near-zero costs from dominating.

The chosen layer is the argmax (first on ties) and the chosen cell its best strength.

Why mean residual norm: every block of a pre-norm model reads x/‖x‖, so what a
perturbation does to the next block scales with its size relative to ‖x‖.

Footguns: the validation pairs are split from the training pairs (seeded); the
vector used in the search is fit on the remaining ones, so the search never
scores a vector on its own pairs (with < 4 training pairs it must, and says so:
``in_sample``). The final vector is refit on every training pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from analysis.models import LoadedModel
from analysis.progress import Stopped, report
from analysis.sampling import subsample_indices
from analysis.steering.forward import Cell, mean_sem, prepare_batch, score_batch, score_cells

# Cells of one strength round scored together, in groups of about this many real tokens: a Stop keeps
# the groups finished. Larger groups pack passes better; 8k tokens is the whole round on the shipped sets.
GROUP_TOKENS = 8192


def _budget(gain: np.ndarray, cost: np.ndarray, cfg: "SearchConfig") -> tuple[np.ndarray, np.ndarray]:
    """Gain at cost = budget on the piecewise-linear (cost, gain) curve through α = 0 (cost 0, gain 0).

    Points are taken in strength order; the score is the best gain among points within budget
    and the interpolated gain where a segment crosses the budget (never extrapolated). Returns
    per layer (score, strength) with the strength interpolated the same way.
    """
    strengths = np.asarray(cfg.strengths, dtype=np.float64)
    scores, where = np.full(gain.shape[0], -np.inf), np.full(gain.shape[0], np.nan)
    for i in range(gain.shape[0]):
        pts = [(0.0, 0.0, 0.0)] + [(float(cost[i, j]), float(gain[i, j]), float(strengths[j]))
                                   for j in range(len(strengths)) if np.isfinite(gain[i, j]) and np.isfinite(cost[i, j])]
        cands = [(g, st) for c, g, st in pts[1:] if c <= cfg.loss_budget]
        for (c0, g0, s0), (c1, g1, s1) in zip(pts, pts[1:]):
            if c0 <= cfg.loss_budget < c1:
                t = (cfg.loss_budget - c0) / (c1 - c0)
                cands.append((g0 + t * (g1 - g0), s0 + t * (s1 - s0)))
        if len(pts) > 1 and cands:
            scores[i], where[i] = max(cands)
    return scores, where


def _ratio(gain: np.ndarray, cost: np.ndarray, cfg: "SearchConfig") -> tuple[np.ndarray, np.ndarray]:
    """Best gain per nat/token of loss increase (cost floored at ``ratio_floor``) and its strength."""
    cells = gain / np.maximum(cost, cfg.ratio_floor)
    cells = np.where(np.isfinite(cells), cells, -np.inf)
    j = np.argmax(cells, 1)
    return cells[np.arange(len(j)), j], np.asarray(cfg.strengths, dtype=np.float64)[j]


RULES: dict[str, Callable[[np.ndarray, np.ndarray, "SearchConfig"], tuple[np.ndarray, np.ndarray]]] = {"budget": _budget, "ratio": _ratio}
RULE_TEXT = {
    "budget": "held-out gap gain at a fixed background-loss increase (the budget), interpolated along α",
    "ratio": "held-out gap gain per nat/token of background-loss increase (cost floored)",
}
DEFAULT_STRENGTHS = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class SearchConfig:
    """Behavioural search settings (see module doc); sample caps are seeded draws (``analysis.sampling``)."""

    rule: str = "budget"
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    loss_budget: float = 0.25
    ratio_floor: float = 0.05
    val_fraction: float = 0.25
    max_val_pairs: int = 16
    max_background: int = 8
    seed: int = 0
    # budget rule only: stop a layer's strengths at the first cell over budget. With the background loss
    # growing with strength (as it does), later cells cannot change the budget score, so it is the same
    # score for fewer forward passes; skipped cells stay NaN ("not measured") in the heatmaps.
    stop_over_budget: bool = True

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"search rule {self.rule!r}: valid rules are {tuple(RULES)}")
        if not self.strengths or any(not np.isfinite(s) or s == 0 for s in self.strengths):
            raise ValueError(f"strengths {self.strengths}: give non-zero finite numbers, e.g. (0.25, 0.5, 1.0)")
        if not self.loss_budget > 0 or not self.ratio_floor > 0:
            raise ValueError("loss_budget and ratio_floor must be > 0 (nats/token)")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction {self.val_fraction}: must be between 0 and 1")
        if self.max_val_pairs < 1 or self.max_background < 0:
            raise ValueError("max_val_pairs must be >= 1 and max_background >= 0")

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        from analysis.recipes import check_config_keys

        check_config_keys(cls, data, "behavioural search")
        data = dict(data)
        if "strengths" in data:
            data["strengths"] = tuple(float(s) for s in data["strengths"])
        return cls(**data)


@dataclass(frozen=True)
class BehaviouralSearch:
    """Gain and cost per (layer, strength); ``alphas`` are the raw multipliers of v_l used."""

    layers: np.ndarray  # (L,)
    strengths: np.ndarray  # (S,)
    alphas: np.ndarray  # (L, S)
    gain: np.ndarray  # (L, S)  NaN where not run (stopped)
    gain_sem: np.ndarray
    cost: np.ndarray  # (L, S)
    cost_sem: np.ndarray
    scores: np.ndarray  # (L,)
    rule: str
    config: SearchConfig
    residual_norm: np.ndarray  # (L,) mean ‖resid_post[l]‖
    vector_norm: np.ndarray  # (L,) ‖v_l‖ of the fit-pairs vector
    base_gap: float
    base_loss: float
    n_val: int
    n_fit: int
    n_background: int
    in_sample: bool
    stopped: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def score(self) -> str:
        return "behavioural"

    @property
    def best(self) -> int:
        finite = np.where(np.isfinite(self.scores), self.scores, -np.inf)
        return int(self.layers[int(np.argmax(finite))])

    @property
    def best_strength(self) -> float:
        """Strength of the chosen cell (interpolated for the budget rule)."""
        i = list(self.layers).index(self.best)
        return float(RULES[self.rule](self.gain, self.cost, self.config)[1][i])

    @property
    def best_alpha(self) -> float:
        """Raw multiplier of v at the chosen cell: strength × mean‖resid‖ / ‖v‖ of the chosen layer."""
        i = list(self.layers).index(self.best)
        per_unit = self.alphas[i, 0] / self.strengths[0] if self.strengths[0] else float("nan")
        return float(self.best_strength * per_unit)

    @property
    def degenerate(self) -> bool:
        return False

    def summary(self) -> dict:
        return {
            "rule": self.rule, "rule_text": RULE_TEXT[self.rule], "loss_budget": self.config.loss_budget,
            "layers": self.layers.tolist(), "strengths": self.strengths.tolist(),
            "scores": _clean(self.scores), "gain": _clean(self.gain), "gain_sem": _clean(self.gain_sem),
            "loss_cost": _clean(self.cost), "loss_cost_sem": _clean(self.cost_sem), "alphas": _clean(self.alphas),
            "residual_norm": _clean(self.residual_norm), "vector_norm": _clean(self.vector_norm),
            "chosen_layer": self.best, "chosen_strength": self.best_strength, "chosen_alpha": self.best_alpha,
            "base_gap": self.base_gap, "base_loss": self.base_loss, "n_val_pairs": self.n_val,
            "n_fit_pairs": self.n_fit, "n_background": self.n_background, "in_sample": self.in_sample,
            "stopped": self.stopped,
        }


def _clean(a) -> list:
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan).round(6).tolist()


def layer_scores(gain: np.ndarray, cost: np.ndarray, config: SearchConfig) -> np.ndarray:
    """score_l from the (L, S) gain and cost tables under ``config.rule``; NaN for layers not run."""
    scores = RULES[config.rule](gain, cost, config)[0]
    run = ~np.all(np.isnan(gain), 1)
    return np.where(run, scores, np.nan)


def split_validation(n_train: int, config: SearchConfig) -> tuple[np.ndarray, np.ndarray, bool]:
    """Seeded (fit, validation) indices of the training pairs; with < 4 pairs both are all of them."""
    if n_train < 4:
        idx = np.arange(n_train)
        return idx, idx[: config.max_val_pairs], True
    n_val = min(config.max_val_pairs, max(1, int(round(config.val_fraction * n_train))))
    val = subsample_indices(n_train, n_val, config.seed, "steering-validation")
    fit = np.setdiff1d(np.arange(n_train), val)
    return fit, val, False


def behavioural_search(
    lm: LoadedModel, vectors: np.ndarray, residual_norm: np.ndarray, val_pairs: Sequence,
    background: Sequence[str], layers: Sequence[int], config: SearchConfig = SearchConfig(), *,
    n_fit: int = 0, in_sample: bool = False, progress=None,
) -> BehaviouralSearch:
    """Sweep ``layers`` × ``config.strengths`` (see module doc). ``vectors``: (n_layers, d) fit on other pairs.

    Cells are scored one strength round at a time (every layer still in the search), many cells per
    forward pass (:func:`analysis.steering.forward.score_cells`). ``progress(fraction, stage)`` may raise
    :class:`analysis.progress.Stopped`: the cells finished so far are kept and ``stopped`` is True.
    """
    if not val_pairs:
        raise ValueError("the behavioural search needs at least one validation pair")
    layers = np.asarray(list(layers), dtype=np.int64)
    strengths = np.asarray(config.strengths, dtype=np.float64)
    bg = [background[i] for i in subsample_indices(len(background), config.max_background, config.seed,
                                                   "steering-background")]
    batch = prepare_batch(lm, val_pairs, bg)
    vnorm = np.linalg.norm(vectors[layers].astype(np.float64), axis=1)
    alphas = np.where(vnorm[:, None] > 0, strengths[None] * residual_norm[layers][:, None]
                      / np.where(vnorm > 0, vnorm, 1.0)[:, None], 0.0)
    shape = (len(layers), len(strengths))
    gain, gain_sem, cost, cost_sem = (np.full(shape, np.nan) for _ in range(4))
    total = 1 + gain.size
    stopped = False
    early = (config.rule == "budget" and config.stop_over_budget and bool(len(bg))
             and bool(np.all(strengths > 0)) and bool(np.all(np.diff(strengths) > 0)))
    done = [0]
    try:
        report(progress, 0.0, "behavioural search: unsteered baseline")
        base = score_batch(lm, batch)
        active = list(range(len(layers)))
        for j in range(len(strengths)):
            # one round per strength: every layer still within budget, many cells per pass
            cells = [Cell(deltas={int(layers[i]): alphas[i, j] * vectors[layers[i]]}) for i in active]

            def starting(group, j=j, active=tuple(active)):
                names = [str(int(layers[active[k]])) for k in group]
                report(progress, (1 + done[0]) / total, f"behavioural search: strength {strengths[j]:g}, "
                       + ("layer " if len(names) == 1 else "layers ") + ", ".join(names))

            def finished(group, scores, j=j, active=tuple(active)):
                for k in group:
                    i, s = active[k], scores[k]
                    gain[i, j], gain_sem[i, j] = mean_sem(s.gap - base.gap)
                    cost[i, j], cost_sem[i, j] = mean_sem(s.bg_nll - base.bg_nll) if len(bg) else (0.0, 0.0)
                done[0] += len(group)

            if cells:
                score_cells(lm, batch, cells, group_tokens=GROUP_TOKENS, before_group=starting, on_group=finished)
            if early:
                active = [i for i in active if not cost[i, j] > config.loss_budget]
        report(progress, 1.0, "behavioural search: done")
    except Stopped:
        stopped = True
        if not np.isfinite(gain).any():
            raise
    return BehaviouralSearch(
        layers=layers, strengths=strengths, alphas=alphas, gain=gain, gain_sem=gain_sem, cost=cost,
        cost_sem=cost_sem, scores=layer_scores(gain, cost, config), rule=config.rule, config=config,
        residual_norm=residual_norm[layers], vector_norm=vnorm, base_gap=float(base.gap.mean()),
        base_loss=float(base.bg_nll.mean()) if len(bg) else float("nan"), n_val=len(val_pairs), n_fit=n_fit,
        n_background=len(bg), in_sample=in_sample, stopped=stopped,
    )
