"""Filtering preference pairs by CHES, as the paper does (Razin et al., §5 and §6).

Three modes, each returning the kept pair indices in INPUT order (so the
exported .jsonl keeps the input's order and layout):

* ``lowest`` (default, §6): keep the ``fraction`` of pairs with the LOWEST
  length-normalised CHES; the paper keeps 5 % (19 samples). ``n_keep =
  max(1, round(fraction * n))``, ties broken by input order.
* ``window`` (§5): a window of ``window`` consecutive pairs in the ascending
  order of raw CHES, centred at quantile ``quantile``: with the scores sorted
  ascending, ``idx = round(quantile * (n - 1))`` (Python's round, half to
  even), ``start = max(0, idx - window // 2)``, ``end = min(n, start + window)``
  (so a window near the top is shorter, not shifted), the authors' rule.
* ``percentile``: keep the pairs whose score is at or below the ``percentile``-th
  percentile (numpy's linear interpolation): a looser "drop the highest" cut,
  not the paper's.

Low CHES means the two responses' hidden representations are far apart
relative to y+, so training on the pair is unlikely to lower log p(y+); the
paper trains on the lowest-CHES pairs to avoid likelihood displacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.likelihood.preferences import PreferenceData
from analysis.recipes import check_config_keys

FILTER_MODES = ("lowest", "window", "percentile")
SCORES = ("ches", "ches_length_normalised")


@dataclass(frozen=True)
class FilterConfig:
    """Which filter and its parameter; ``score`` defaults to what the mode's paper section uses."""

    mode: str = "lowest"
    fraction: float = 0.05
    quantile: float = 0.5
    window: int = 19
    percentile: float = 90.0
    score: str = ""

    def __post_init__(self) -> None:
        if self.mode not in FILTER_MODES:
            raise ValueError(f"filter mode {self.mode!r}: valid modes are {FILTER_MODES}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1] (the paper keeps 0.05), got {self.fraction}")
        if not 0 <= self.quantile <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be a positive integer (pairs kept), got {self.window!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.score not in ("",) + SCORES:
            raise ValueError(f"score {self.score!r}: valid scores are {SCORES} (empty: the mode's default)")

    @property
    def score_name(self) -> str:
        """``lowest``: length-normalised CHES (§6); ``window``: raw CHES (§5); ``percentile``: raw CHES."""
        return self.score or ("ches_length_normalised" if self.mode == "lowest" else "ches")

    @classmethod
    def from_dict(cls, d: dict) -> "FilterConfig":
        check_config_keys(cls, d, "CHES filter")
        return cls(**d)

    def describe(self) -> str:
        label = {"ches": "CHES", "ches_length_normalised": "length-normalised CHES"}[self.score_name]
        if self.mode == "lowest":
            return f"the lowest {self.fraction:.0%} by {label}"
        if self.mode == "window":
            return f"a window of {self.window} pairs at the {self.quantile:g} quantile of {label}"
        return f"{label} at or below the {self.percentile:g}th percentile"


def _scores(scores, n: int | None = None) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or (n is not None and s.shape[0] != n):
        raise ValueError(f"{s.shape[0] if s.ndim else 0} scores for {n} pairs; give one score per pair in input order")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity; rescore the pairs")
    return s


def keep_lowest(scores, fraction: float) -> np.ndarray:
    """Indices (input order) of the ``max(1, round(fraction * n))`` lowest scores."""
    s = _scores(scores)
    n_keep = max(1, int(round(fraction * len(s))))
    return np.sort(np.argsort(s, kind="stable")[:n_keep])


def quantile_window(scores, quantile: float, window: int) -> np.ndarray:
    """Indices (input order) of the authors' window of ``window`` pairs at ``quantile`` (module docstring)."""
    s = _scores(scores)
    order = np.argsort(s, kind="stable")
    idx = int(round(quantile * (len(s) - 1)))
    start = max(0, idx - window // 2)
    end = min(len(s), start + window)
    return np.sort(order[start:end])


def percentile_cut(scores, pct: float) -> float:
    """The ``pct``-th percentile of ``scores`` (linear interpolation), the percentile filter's threshold."""
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    return float(np.percentile(_scores(scores), pct))


def below_percentile(scores, pct: float) -> np.ndarray:
    s = _scores(scores)
    return np.flatnonzero(s <= percentile_cut(s, pct))


def select_pairs(scores, cfg: FilterConfig) -> np.ndarray:
    """Kept indices in input order for ``cfg.mode`` (``scores`` per pair, in input order)."""
    if cfg.mode == "lowest":
        return keep_lowest(scores, cfg.fraction)
    if cfg.mode == "window":
        return quantile_window(scores, cfg.quantile, cfg.window)
    return below_percentile(scores, cfg.percentile)


def filter_pairs(data: PreferenceData, scores, cfg: FilterConfig = FilterConfig()) -> PreferenceData:
    """The kept pairs as a new :class:`PreferenceData` in the input layout and order.

    ``scores`` are per pair in INPUT order (e.g. ``PairScores.ches_ln`` for the
    default mode), not a sorted frame column.
    """
    return data.subset(select_pairs(_scores(scores, len(data)), cfg))


def filter_by_percentile(data: PreferenceData, scores, pct: float) -> PreferenceData:
    """Keep the pairs whose score is at or below the ``pct``-th percentile (input order kept).

    Not the paper's filter (it keeps the lowest 5 % by length-normalised CHES,
    see :func:`filter_pairs`); ``pct=90`` only drops roughly the top 10 %.
    """
    return filter_pairs(data, scores, FilterConfig(mode="percentile", percentile=pct))
