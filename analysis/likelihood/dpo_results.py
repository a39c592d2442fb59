"""Results of DPO runs (:func:`analysis.likelihood.run_dpo`) and their tables.

``DPOResult.runs`` holds one :class:`DPORun` per seed; the ``*_frame``
functions flatten them into the tables the figures and CSVs use, and
:func:`compare_indicators` scores models (shared or trained) on the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from analysis.likelihood.ches import LikelihoodConfig, LogitsFn, _pairs, response_stats
from analysis.likelihood.dpo_config import DPOConfig


@dataclass
class DPORun:
    """One seed's run: which pairs (indices into the data given to ``run_dpo``), rows per step."""

    seed: int
    pairs: list[int]
    history: list[dict] = field(default_factory=list)
    discovery: list[dict] = field(default_factory=list)
    final_p_change: np.ndarray | None = None
    final_logp_change: np.ndarray | None = None
    sft_loss: list[float] = field(default_factory=list)
    first_tokens: tuple[int, ...] = ()  # first token ids of the run's y+ and y- responses


@dataclass
class DPOResult:
    config: DPOConfig
    runs: list[DPORun] = field(default_factory=list)
    stopped_early: bool = False
    n_pairs: int = 0
    trajectories: list[dict] = field(default_factory=list)
    policy: LogitsFn | None = None  # the last run's trained copy as (ids, mask) -> logits, when kept
    module: torch.nn.Module | None = None  # ... and as a module (for save_checkpoint), when kept
    seconds_per_step: float = float("nan")
    tokenizer: Any = field(default=None, repr=False)
    _names: dict = field(default_factory=dict, repr=False)

    def token(self, i: int) -> str:
        """The decoded text of token id ``i`` (a leading space shows as a space)."""
        i = int(i)
        if i not in self._names:
            self._names[i] = self.tokenizer.decode([i]) if self.tokenizer is not None else str(i)
        return self._names[i]

    @property
    def partial(self) -> bool:
        return self.stopped_early

    @property
    def history(self) -> list[dict]:
        return [row for run in self.runs for row in run.history]


def history_frame(result: DPOResult) -> pd.DataFrame:
    """One row per run and step (``seed``, ``step``, ...)."""
    return pd.DataFrame(result.history)


def discovery_frame(result: DPOResult) -> pd.DataFrame:
    """Per run, step and ordering (``order`` = 'p' or 'logp'): the top tokens by gain since step 0."""
    return pd.DataFrame([row for run in result.runs for row in run.discovery])


def trajectory_frame(result: DPOResult) -> pd.DataFrame:
    """Per run, step and tracked token: mean probability at the first response position and its change."""
    return pd.DataFrame(result.trajectories)


def summary_frame(result: DPOResult, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Per step: mean, std, min and max over runs (seeds) of the numeric history columns."""
    hist = history_frame(result)
    if hist.empty:
        return hist
    skip = {"seed", "step", "seconds"}
    cols = [c for c in (columns or hist.columns) if c not in skip and pd.api.types.is_numeric_dtype(hist[c])]
    g = hist.groupby("step")[cols]
    out = pd.concat({"mean": g.mean(), "std": g.std(ddof=1), "min": g.min(), "max": g.max()}, axis=1)
    out.columns = [f"{c}_{stat}" for stat, c in out.columns]
    out.insert(0, "runs", hist.groupby("step")["seed"].nunique())
    return out.reset_index()


def gainers_frame(result: DPOResult, n: int | None = None) -> pd.DataFrame:
    """Tokens by mean probability gain at the last recorded step, over runs: mean ± std, log-prob gain,
    and in how many runs the token was among that run's top ``discover`` gainers."""
    runs = [r for r in result.runs if r.final_p_change is not None]
    if not runs:
        return pd.DataFrame(columns=["token_id", "token", "p_change_mean", "p_change_std", "logp_change_mean", "top_in_runs"])
    n = n or result.config.discover
    dp = np.stack([r.final_p_change for r in runs]).astype(np.float64)
    dl = np.stack([r.final_logp_change for r in runs]).astype(np.float64)
    mean = dp.mean(0)
    ids = np.argsort(-mean, kind="stable")[:n]
    k = result.config.discover
    tops = [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in dp]
    return pd.DataFrame({
        "token_id": ids,
        "token": [_token(result, i) for i in ids],
        "p_change_mean": mean[ids],
        "p_change_std": dp[:, ids].std(0, ddof=1) if len(runs) > 1 else np.zeros(len(ids)),
        "logp_change_mean": dl[:, ids].mean(0),
        "top_in_runs": [sum(int(i) in t for t in tops) for i in ids],
        "runs": len(runs),
    })


def _token(result: DPOResult, i: int) -> str:
    return result.token(i)


def compare_indicators(
    models: dict[str, LogitsFn], tokenizer, data, *, top_k: int = 10, batch_size: int = 8, device: str = "cpu",
) -> pd.DataFrame:
    """Per model and response: log p, mean M_k and H_k, for models sharing ``tokenizer``.

    ``models`` maps a label to ``(ids, mask) -> logits``: :func:`lm_logits_fn` for a
    shared model, ``DPOResult.policy`` for a trained copy.
    """
    if len(models) < 1:
        raise ValueError("give at least one model, e.g. {'before': lm_logits_fn(lm), 'after': result.policy}")
    pairs = _pairs(data)
    cfg = LikelihoodConfig(top_k=top_k, batch_size=batch_size)
    rows = []
    for label, fn in models.items():
        for side in ("chosen", "rejected"):
            st = response_stats(
                None, [p.prompt for p in pairs], [getattr(p, side) for p in pairs], cfg,
                logits_fn=fn, tokenizer=tokenizer, device=device,
            )
            for i in range(len(pairs)):
                rows.append({
                    "model": label, "response": side, "pair": i, "logp": st.logp[i],
                    "topk_mass": st.topk_mass[i], "topk_entropy": st.topk_entropy[i], "n_tokens": int(st.n_tokens[i]),
                })
    return pd.DataFrame(rows)

