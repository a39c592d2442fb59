"""Steered forward passes that unembed only the positions a score needs, many steering settings per pass.

One batch (:class:`EvalBatch`) holds held-out pairs and a background sample,
tokenised once with :func:`analysis.logprobs.encode` (prompt with BOS,
completion without special tokens). A *cell* (:class:`Cell`) is one steering
setting: ``deltas[l]`` added to ``resid_post[l]`` at every position, on a
subset of the batch's rows. :func:`score_cells` scores many cells at once and
returns, per cell,

* the log-prob gap ``Σ log p(positive) − Σ log p(negative)`` per pair,
* the mean next-token NLL per background text,
* the mean KL(unsteered ‖ steered) of the next-token distribution per
  background text (when the unsteered log-probs are given),
* ``resid_post`` at a read-out layer, last real token of each background text.

How it is fast without changing what is computed:

* on the HF twin (the bridge backend), a pair's two rows are one prompt tree
  and texts are packed end to end (:mod:`analysis.steering.packing`): each
  prompt is computed once and passes carry almost no padding;
* otherwise every (cell, row) item is one row of some forward pass; the rows of all cells
  in a group are sorted by length and packed into passes of at most
  :data:`PASS_TOKENS` padded tokens and :data:`PASS_POSITIONS` unembedded
  positions (closing a pass rather than padding it by more than
  :data:`PAD_WASTE`), so little compute goes to padding and each pass is a
  few large matmuls instead of many small ones;
* the steering hook at layer l adds a per-row delta (zero for rows of cells
  that do not steer l; ``x + 0`` is exact), so cells with different layers and
  strengths share a pass;
* a hook on ``ln_final.hook_normalized`` keeps only the wanted positions, so
  the unembedding (262k wide on Gemma) runs on a few hundred rows instead of
  every padded position; only rows whose whole next-token distribution is
  needed (KL, kept log-probs) go on to the LM head, the others' target
  log-probs are unembedded in vocabulary chunks with a running logsumexp
  (:func:`analysis.logprobs.unembed_target_logprobs`: no (positions × vocab)
  logits in memory, and no full-vocabulary logsumexp over them). Footgun: the hook
  changes that tensor's shape to ``(1, N, d)``; the model's remaining ops
  (norm weight, unembed) are position-wise, which is what makes this exact.

Rows never attend to each other (causal attention, right padding), so a row's
numbers do not depend on its pass-mates except through float32 rounding of
differently shaped matmuls (≈1e-6 relative; exact in float64, tested).
:func:`score_batch` is the one-cell form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Float

from analysis.activations import resid_hook
from analysis.logprobs import encode, pad_right, target_logprobs, unembed_target_logprobs, unembedding
from analysis.models import LoadedModel
from analysis.steering import packing

FINAL_NORM = "ln_final.hook_normalized"
# One pass: at most this many padded tokens and unembedded positions. The positions bound the
# (positions x vocab) float32 logits (384 x 262,144 x 4 B = 0.4 GB on Gemma, twice with a log-softmax copy).
PASS_TOKENS = 2048
PASS_POSITIONS = 384
# ...and a pass of >= MIN_PASS_TOKENS real tokens is closed rather than padded by more than PAD_WASTE.
MIN_PASS_TOKENS = 256
PAD_WASTE = 0.125
USE_TWIN = True  # bridge backend: run scoring passes on the plain HF twin (see _selected_logits)
PACK = True  # on the twin: pair trees, texts packed end to end (analysis.steering.packing)


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


@dataclass(frozen=True)
class Cell:
    """One steering setting to score: ``deltas[l]`` (shape (d,)) added at layer ``l``, on ``rows`` (None: all).

    ``kl``: also the KL to the unsteered distribution on background rows (needs ``base_logp``);
    ``readout``: also ``resid_post[readout_layer]`` at each background row's last token;
    ``keep_logp``: keep the background rows' (positions, vocab) log-probs (for a later KL).
    """

    deltas: dict = field(default_factory=dict)
    rows: tuple[int, ...] | None = None
    kl: bool = False
    readout: bool = False
    keep_logp: bool = False


def _positions(batch: EvalBatch, row: int) -> np.ndarray:
    """Positions whose next token is scored: the completion's for pair rows, all for background rows."""
    if row < 2 * batch.n_pairs:
        start = int(batch.n_prompt[row]) - 1
        return np.arange(start, start + int(batch.n_response[row]))
    return np.arange(len(batch.ids[row]) - 1)


def _passes(batch: EvalBatch, items: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """(cell, row) items sorted by length, packed greedily into passes within the token/position budgets."""
    order = sorted(items, key=lambda it: (len(batch.ids[it[1]]), it))
    out, cur, width, n_pos, real = [], [], 0, 0, 0
    for it in order:
        w, p = len(batch.ids[it[1]]), len(_positions(batch, it[1]))
        padded = (len(cur) + 1) * max(width, w)
        # a longer row would pad the whole pass: start a new one once this one is worth a pass
        wasteful = real >= MIN_PASS_TOKENS and padded - (real + w) > PAD_WASTE * padded
        if cur and (padded > PASS_TOKENS or n_pos + p > PASS_POSITIONS or wasteful):
            out.append(cur)
            cur, width, n_pos, real = [], 0, 0, 0
        cur.append(it)
        width, n_pos, real = max(width, w), n_pos + p, real + w
    if cur:
        out.append(cur)
    return out


def _groups(batch: EvalBatch, cells: Sequence[Cell], group_tokens: int | None) -> list[list[int]]:
    """Consecutive cells whose rows add up to about ``group_tokens`` real tokens (None: one group)."""
    if group_tokens is None:
        return [list(range(len(cells)))]
    out, cur, n = [], [], 0
    for k, c in enumerate(cells):
        rows = range(batch.n_rows) if c.rows is None else c.rows
        t = sum(len(batch.ids[r]) for r in rows)
        if cur and n + t > group_tokens:
            out.append(cur)
            cur, n = [], 0
        cur.append(k)
        n += t
    if cur:
        out.append(cur)
    return out


@torch.inference_mode()
def score_cells(
    lm: LoadedModel, batch: EvalBatch, cells: Sequence[Cell], *, base_logp: list | None = None,
    readout_layer: int | None = None, group_tokens: int | None = None,
    before_group: Callable[[list[int]], None] | None = None,
    on_group: Callable[[list[int], list[BatchScores]], None] | None = None,
) -> list[BatchScores]:
    """Scores of every cell (see module doc), in passes that mix cells; rows not run are NaN.

    Cells are processed in groups (consecutive cells of about ``group_tokens`` real tokens; None:
    all in one group); ``before_group(cell_indices)`` is called before each group and
    ``on_group(cell_indices, scores)`` after it; either may raise (e.g.
    :class:`analysis.progress.Stopped`): the groups finished are complete. Takes
    ``lm.lock`` per pass; call with the model free.
    """
    n, nb = batch.n_pairs, batch.n_bg
    for c in cells:
        if c.kl and base_logp is None:
            raise ValueError("a cell asks for the KL but no base_logp (unsteered log-probs) was given")
        if c.readout and readout_layer is None:
            raise ValueError("a cell asks for a read-out but no readout_layer was given")
    results: list[BatchScores] = [None] * len(cells)  # type: ignore[list-item]
    for group in _groups(batch, cells, group_tokens):
        if before_group is not None:
            before_group(group)
        row_lp: dict[tuple[int, int], torch.Tensor] = {}
        kl: dict[tuple[int, int], float] = {}
        kept: dict[tuple[int, int], torch.Tensor] = {}
        readout: dict[tuple[int, int], np.ndarray] = {}
        items = [(k, r) for k in group for r in (range(batch.n_rows) if cells[k].rows is None
                                                 else sorted(set(int(x) for x in cells[k].rows)))]
        twin = _twin_for(lm)
        if twin is not None and PACK:
            for rows in packing.passes(packing.segments(batch, cells, items, _positions), PASS_TOKENS, PASS_POSITIONS):
                _packed_pass(lm, twin, batch, cells, rows, base_logp, readout_layer, row_lp, kl, kept, readout)
        else:
            for chunk in _passes(batch, items):
                _one_pass(lm, batch, cells, chunk, base_logp, readout_layer, row_lp, kl, kept, readout)
        for k in group:
            c = cells[k]
            gap = np.full(n, np.nan)
            for i in range(n):
                if (k, i) in row_lp and (k, i + n) in row_lp:
                    gap[i] = float(row_lp[k, i].double().sum() - row_lp[k, i + n].double().sum())
            bg_rows = range(2 * n, 2 * n + nb)
            nll = np.array([float(-row_lp[k, r].double().mean()) if (k, r) in row_lp else np.nan for r in bg_rows])
            out = None
            if c.readout:
                out = (np.stack([readout.get((k, r), np.full(lm.d_model, np.nan)) for r in bg_rows]) if nb
                       else np.zeros((0, lm.d_model)))
            results[k] = BatchScores(
                gap=gap, bg_nll=nll, bg_kl=np.array([kl.get((k, r), np.nan) for r in bg_rows]) if c.kl else None,
                readout=out, bg_logp=[kept.get((k, r)) for r in bg_rows] if c.keep_logp else None)
        if on_group is not None:
            on_group(group, results)
    return results


def _one_pass(lm, batch, cells, chunk, base_logp, readout_layer, row_lp, kl, kept, readout) -> None:
    """One right-padded row per (cell, row) item (the TransformerLens path)."""
    n2 = 2 * batch.n_pairs
    ids, mask = pad_right([batch.ids[r] for _, r in chunk], _pad_id(lm), lm.device)
    scored = [(j, k, r, _positions(batch, r)) for j, (k, r) in enumerate(chunk)]
    layers = sorted({int(l) for k, _ in chunk for l in cells[k].deltas})
    deltas = {}
    for l in layers:
        d = torch.zeros(len(chunk), lm.d_model, dtype=lm.dtype, device=lm.device)
        for j, (k, _) in enumerate(chunk):
            if l in cells[k].deltas:
                d[j] = torch.as_tensor(cells[k].deltas[l], dtype=lm.dtype, device=lm.device)
        deltas[l] = d[:, None, :]
    want = [j for j, (k, r) in enumerate(chunk) if cells[k].readout and r >= n2]
    last = mask.sum(1) - 1
    at = (readout_layer, torch.as_tensor(want, dtype=torch.long), last[want]) if want else None
    full = [r >= n2 and (cells[k].kl or cells[k].keep_logp) for k, r in chunk]
    scored = [(k, r, j, p, np.asarray(batch.ids[r])[p + 1], full[j]) for j, k, r, p in scored]
    read = _score(lm, ids, {"attention_mask": mask}, scored, cells, deltas, at, base_logp, n2, row_lp, kl, kept)
    for i, j in enumerate(want):
        k, r = chunk[j]
        readout[k, r] = read[i].float().cpu().numpy()


def _packed_pass(lm, twin, batch, cells, rows, base_logp, readout_layer, row_lp, kl, kept, readout) -> None:
    """One pass of packed rows of segments (:mod:`analysis.steering.packing`, the HF twin's path)."""
    n2 = 2 * batch.n_pairs
    types = set(getattr(twin.config, "layer_types", None) or ())
    window = getattr(twin.config, "sliding_window", None) if "sliding_attention" in types else None
    pp = packing.build(rows, _pad_id(lm), window, lm.dtype, lm.device)
    mask = pp.masks if types else pp.masks["full_attention"]  # models with layer types take one mask per type
    scored, reads = [], []
    layers = sorted({int(l) for row in rows for s in row for l in cells[s.cell].deltas})
    deltas = {l: torch.zeros(*pp.ids.shape, lm.d_model, dtype=lm.dtype, device=lm.device) for l in layers}
    for i, row in enumerate(rows):
        for s, col in zip(row, pp.starts[i]):
            for l, v in cells[s.cell].deltas.items():
                deltas[int(l)][i, col: col + len(s)] = torch.as_tensor(v, dtype=lm.dtype, device=lm.device)
            scored += [(s.cell, r, i, col + at, t, s.full) for r, at, t in s.scored]
            if s.readout:
                reads.append((s.cell, s.scored[0][0], i, col + len(s) - 1))
    at = None
    if reads:
        at = (readout_layer, torch.as_tensor([x[2] for x in reads]), torch.as_tensor([x[3] for x in reads]))
    read = _score(lm, pp.ids, {"attention_mask": mask, "position_ids": pp.position_ids}, scored, cells, deltas, at,
                  base_logp, n2, row_lp, kl, kept)
    for i, (k, r, _, _) in enumerate(reads):
        readout[k, r] = read[i].float().cpu().numpy()


def _score(lm, ids, inputs, scored, cells, deltas, at, base_logp, n2, row_lp, kl, kept):
    """Run one pass and record each scored row: ``scored`` holds (cell, batch row, pass row, columns,
    target ids, needs the whole distribution); the log-probs are of those targets at those columns.
    Returns the read-out residuals (``at``'s order) or None."""
    def sel(which: bool):
        picked = [(i, c, t) for _, _, i, c, t, f in scored if f == which]
        cat = lambda parts: torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0, np.int64),  # noqa: E731
                                            dtype=torch.long, device=ids.device)
        return (cat([np.full(len(c), i) for i, c, _ in picked]), cat([c for _, c, _ in picked]),
                cat([t for _, _, t in picked]))

    full, part = sel(True), sel(False)
    logits, lp_part, read = _selected_logits(lm, ids, inputs, full, part, deltas, at)
    lp_full = target_logprobs(logits, full[2])
    offsets = {True: 0, False: 0}
    for k, r, _, cols, _, f in scored:
        m, o = len(cols), offsets[f]
        offsets[f] += m
        row_lp[k, r] = (lp_full if f else lp_part)[o:o + m]
        c = cells[k]
        if f:
            lp = torch.log_softmax(logits[o:o + m].float(), -1)
            if c.keep_logp:
                kept[k, r] = lp
            if c.kl:
                p = base_logp[r - n2]
                kl[k, r] = float((p.exp() * (p - lp)).sum(-1).double().mean())
    return read


def score_batch(
    lm: LoadedModel, batch: EvalBatch, deltas: dict[int, torch.Tensor | np.ndarray] | None = None, *,
    rows: Sequence[int] | None = None, base_logp: list | None = None, keep_logp: bool = False,
    readout_layer: int | None = None,
) -> BatchScores:
    """One cell: ``deltas[l]`` of shape (d,) added at layer ``l`` on ``rows`` (None: all; others NaN).

    ``base_logp`` (from an earlier ``keep_logp=True`` call with no deltas) gives the KL.
    """
    cell = Cell(deltas=dict(deltas or {}), rows=None if rows is None else tuple(rows), kl=base_logp is not None,
                readout=readout_layer is not None, keep_logp=keep_logp)
    return score_cells(lm, batch, [cell], base_logp=base_logp, readout_layer=readout_layer)[0]


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


def torch_add(delta: torch.Tensor):
    """Forward hook for a plain HF decoder layer: its output is resid_post (a tensor or a tuple)."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + delta.to(output[0].device),) + tuple(output[1:])
        return output + delta.to(output.device)
    return hook


def _twin_for(lm):
    """The plain HF twin when the scoring pass can run on it (bridge backend, llama-style layout), else None."""
    if not USE_TWIN or lm.backend != "bridge" or not hasattr(lm.model, "original_model"):
        return None
    from analysis.steering.twin import hf_twin

    twin = hf_twin(lm)
    inner = getattr(twin, "model", None)
    return twin if hasattr(inner, "layers") and hasattr(inner, "norm") else None


def _selected_logits(lm, ids, inputs, full, part, deltas, readout=None):
    """With ``deltas[l]`` added to resid_post[l] (shape (rows, 1 or width, d)): the logits
    ``(N, vocab)`` at the positions ``full`` (row indices, column indices, targets), the log-probs
    of ``part``'s targets at its positions, and resid_post[layer] at ``readout = (layer, rows,
    columns)`` (None when not asked). ``inputs``: the forward's ``attention_mask`` (and, on the HF
    twin, ``position_ids``).

    On the bridge backend the pass runs on the plain HF twin (same tensors, HF's own forward; the
    bridge's per-module wrappers compute every RMSNorm twice, ~1.5x slower here), with torch hooks:
    an adder on each steered decoder layer, a capture at the read-out layer and a position selection
    on the final norm's output, so the LM head (and any logit soft-capping) runs on the ``full``
    rows only and the ``part`` rows are unembedded in vocabulary chunks
    (:func:`analysis.logprobs.unembed_target_logprobs`; a position listed twice is unembedded
    once). Otherwise TransformerLens hooks do the same on ``lm.model`` (2D mask only).
    """
    targets = part[2]
    captured = {}
    # the same position may be scored for two rows (a pair tree's shared prompt end): unembed it once
    flat = part[0] * ids.shape[1] + part[1]
    uniq, again = torch.unique(flat, return_inverse=True)

    def keep(h):  # the final norm's output: the full rows go on to the LM head, the part rows aside
        captured["part"] = h[(uniq // ids.shape[1]).to(h.device), (uniq % ids.shape[1]).to(h.device)]
        return h[full[0].to(h.device), full[1].to(h.device)][None]

    def part_logprobs():
        W, bias, cap = unembedding(lm.model)
        return unembed_target_logprobs(captured["part"], W, targets.to(W.device), bias=bias, softcap=cap,
                                       index=again.to(W.device))

    def read(x):
        _, r, c = readout
        captured["r"] = x[r.to(x.device), c.to(x.device)].detach()

    twin = _twin_for(lm)
    if twin is not None:
        layers = twin.model.layers
        with lm.lock:
            handles = []  # every hook is registered inside the try: none can outlive this block
            try:
                for l, d in deltas.items():
                    handles.append(layers[l].register_forward_hook(torch_add(d)))
                if readout is not None:
                    handles.append(layers[readout[0]].register_forward_hook(
                        lambda module, args, output: read(output[0] if isinstance(output, tuple) else output)))
                handles.append(twin.model.norm.register_forward_hook(lambda module, args, output: keep(output)))
                logits = twin(input_ids=ids, **inputs, use_cache=False).logits[0]
                return logits, part_logprobs(), captured.get("r")
            finally:
                for h in handles:
                    h.remove()
    mask = inputs["attention_mask"]
    hooks = [(resid_hook(l), _adder(d)) for l, d in deltas.items()]
    if readout is not None:
        hooks.append((resid_hook(readout[0]), lambda x, hook: read(x)))
    if FINAL_NORM in lm.model.hook_dict:
        with lm.hooked(hooks + [(FINAL_NORM, lambda h, hook: keep(h))]) as model:
            return model(ids, attention_mask=mask)[0], part_logprobs(), captured.get("r")
    with lm.hooked(hooks) as model:
        out = model(ids, attention_mask=mask)
    return out[full[0], full[1]], target_logprobs(out[part[0], part[1]], targets), captured.get("r")
