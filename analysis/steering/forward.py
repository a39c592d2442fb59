"""Steered forward passes that unembed only the positions a score needs.

One batch (:class:`EvalBatch`) holds held-out pairs and a background sample,
tokenised once with :func:`analysis.logprobs.encode` (prompt with BOS,
completion without special tokens) and right-padded together. Each call of
:func:`score_batch` runs one forward pass with ``deltas`` added to
``resid_post[l]`` at every position of every row, and returns

* the log-prob gap ``Σ log p(positive) − Σ log p(negative)`` per pair,
* the mean next-token NLL per background text,
* the mean KL(unsteered ‖ steered) of the next-token distribution per
  background text (when the unsteered log-probs are given),
* ``resid_post`` at a read-out layer, last real token of each background text.

A hook on ``ln_final.hook_normalized`` keeps only the wanted positions, so
the unembedding (262k wide on Gemma) runs on a few hundred rows instead of
every padded position. Footgun: the hook changes that tensor's shape to
``(1, N, d)``; the model's remaining ops (norm weight, unembed) are
position-wise, which is what makes this exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float

from analysis.activations import resid_hook
from analysis.logprobs import encode, pad_right, target_logprobs
from analysis.models import LoadedModel

FINAL_NORM = "ln_final.hook_normalized"
MAX_ROWS = 32  # rows per forward: bounds the (positions x vocab) logits of one pass


@dataclass(frozen=True)
class EvalBatch:
    """Token ids of ``2·n_pairs`` pair rows (positive texts, then negative) and ``n_bg`` background rows."""

    ids: tuple[tuple[int, ...], ...]
    n_pairs: int
    n_bg: int
    n_prompt: np.ndarray  # per pair row: where the completion starts
    n_response: np.ndarray

    @property
    def n_rows(self) -> int:
        return 2 * self.n_pairs + self.n_bg

    @property
    def n_tokens(self) -> int:
        return sum(len(s) for s in self.ids)


def prepare_batch(lm: LoadedModel, pairs: Sequence, background: Sequence[str] = ()) -> EvalBatch:
    """Tokenise ``pairs`` (objects with prompt/positive/negative) and background texts once."""
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.positive for p in pairs] + [p.negative for p in pairs]
    ids: list[tuple[int, ...]] = []
    n_x, n_y = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if pairs:
        enc = encode(lm.tokenizer, prompts, responses)
        ids, n_x, n_y = list(enc.ids), enc.n_prompt, enc.n_response
    for text in background:
        row = tuple(lm.tokenizer(text)["input_ids"])
        if len(row) < 2:
            raise ValueError(f"background text {text!r} has fewer than 2 tokens; it predicts nothing")
        ids.append(row)
    return EvalBatch(tuple(ids), len(pairs), len(background), np.asarray(n_x), np.asarray(n_y))


@dataclass
class BatchScores:
    gap: Float[np.ndarray, " n_pairs"]
    bg_nll: Float[np.ndarray, " n_bg"]
    bg_kl: Float[np.ndarray, " n_bg"] | None
    readout: Float[np.ndarray, "n_bg d"] | None
    bg_logp: list | None = None  # per background row: (positions, vocab) log-probs, when kept


def _positions(batch: EvalBatch, row: int) -> np.ndarray:
    """Positions whose next token is scored: the completion's for pair rows, all for background rows."""
    if row < 2 * batch.n_pairs:
        start = int(batch.n_prompt[row]) - 1
        return np.arange(start, start + int(batch.n_response[row]))
    return np.arange(len(batch.ids[row]) - 1)


@torch.inference_mode()
def score_batch(
    lm: LoadedModel, batch: EvalBatch, deltas: dict[int, torch.Tensor | np.ndarray] | None = None, *,
    rows: Sequence[int] | None = None, base_logp: list | None = None, keep_logp: bool = False,
    readout_layer: int | None = None,
) -> BatchScores:
    """One steered pass per chunk of ``MAX_ROWS`` rows; ``deltas[l]`` of shape (d,) is added at layer ``l``.

    ``rows`` restricts the pass to a subset of rows (e.g. pair rows only for a null direction);
    scores of rows not run are NaN. ``base_logp`` (from an earlier ``keep_logp=True`` call with no
    deltas) gives the KL. Call with the model free: takes ``lm.lock`` per chunk.
    """
    wanted = list(range(batch.n_rows)) if rows is None else sorted(set(int(r) for r in rows))
    tensors = {int(l): torch.as_tensor(d, dtype=lm.dtype, device=lm.device) for l, d in (deltas or {}).items()}
    row_lp: dict[int, torch.Tensor] = {}
    bg_lp: dict[int, torch.Tensor] = {}
    readout: dict[int, np.ndarray] = {}
    for start in range(0, len(wanted), MAX_ROWS):
        chunk = wanted[start:start + MAX_ROWS]
        ids, mask = pad_right([batch.ids[r] for r in chunk], _pad_id(lm), lm.device)
        pos = [_positions(batch, r) for r in chunk]
        sel_r = torch.as_tensor(np.concatenate([np.full(len(p), j) for j, p in enumerate(pos)]), device=lm.device)
        sel_c = torch.as_tensor(np.concatenate(pos), device=lm.device)
        targets = ids[sel_r, sel_c + 1]
        hooks = [(resid_hook(l), _adder(d)) for l, d in tensors.items()]
        captured = {}
        if readout_layer is not None:
            last = mask.sum(1) - 1
            hooks.append((resid_hook(readout_layer),
                          lambda x, hook: captured.__setitem__("r", x[torch.arange(x.shape[0]), last].detach())))
        logits = _selected_logits(lm, ids, mask, sel_r, sel_c, hooks)
        lp_t = target_logprobs(logits, targets)
        need_full = keep_logp or base_logp is not None
        full = torch.log_softmax(logits.float(), -1) if need_full else None
        offset = 0
        for j, r in enumerate(chunk):
            k = len(pos[j])
            row_lp[r] = lp_t[offset:offset + k]
            if r >= 2 * batch.n_pairs and need_full:
                bg_lp[r] = full[offset:offset + k]
            if "r" in captured and r >= 2 * batch.n_pairs:
                readout[r] = captured["r"][j].float().cpu().numpy()
            offset += k
    n, nb = batch.n_pairs, batch.n_bg
    gap = np.full(n, np.nan)
    for i in range(n):
        if i in row_lp and i + n in row_lp:
            gap[i] = float(row_lp[i].double().sum() - row_lp[i + n].double().sum())
    bg_rows = range(2 * n, 2 * n + nb)
    nll = np.array([float(-row_lp[r].double().mean()) if r in row_lp else np.nan for r in bg_rows])
    kl = None
    if base_logp is not None:
        kl = np.full(nb, np.nan)
        for b, r in enumerate(bg_rows):
            if r in bg_lp:
                p = base_logp[b]
                kl[b] = float((p.exp() * (p - bg_lp[r])).sum(-1).double().mean())
    out = None
    if readout_layer is not None:
        out = np.stack([readout.get(r, np.full(lm.d_model, np.nan)) for r in bg_rows]) if nb else np.zeros((0, lm.d_model))
    keep = [bg_lp.get(r) for r in bg_rows] if keep_logp else None
    return BatchScores(gap=gap, bg_nll=nll, bg_kl=kl, readout=out, bg_logp=keep)


def mean_sem(x) -> tuple[float, float]:
    """Mean and standard error (ddof 1) of ``x``; s.e. 0 for one value, both NaN for none."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    return float(x.mean()), (float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0)


def pair_rows(batch: EvalBatch) -> list[int]:
    return list(range(2 * batch.n_pairs))


def _pad_id(lm) -> int:
    pad = lm.tokenizer.pad_token_id
    return int(pad if pad is not None else lm.tokenizer.eos_token_id or 0)


def _adder(delta: torch.Tensor):
    # With a model split over devices, the layer's residual may not sit on lm.device.
    return lambda resid, hook: resid + delta.to(resid.device)


def _selected_logits(lm, ids, mask, sel_r, sel_c, hooks) -> torch.Tensor:
    """Logits ``(N, vocab)`` at (sel_r[i], sel_c[i]) under ``hooks``."""
    if FINAL_NORM in lm.model.hook_dict:
        keep = (FINAL_NORM, lambda h, hook: h[sel_r, sel_c][None])
        with lm.hooked(hooks + [keep]) as model:
            return model(ids, attention_mask=mask)[0]
    with lm.hooked(hooks) as model:
        return model(ids, attention_mask=mask)[sel_r, sel_c]
