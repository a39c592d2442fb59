"""Scoring passes with pairs as prompt trees and texts packed end to end (the HF twin's path).

A pair's two rows share their prompt. On a model that takes position ids and a
4D attention mask (the plain HF twin of a bridge model), one *segment* holds
the prompt once and both completions after it, ``[prompt, positive, negative]``:
the negative's tokens are masked off the positive's and numbered from the
prompt's end, as in their own row. So the prompt is computed once, and the
position that predicts both completions' first token is unembedded once.
Segments (pair trees and single texts) are packed end to end into rows of about
:data:`ROW_TOKENS` tokens, each attending only inside its own segment (and,
on sliding-window layers, only within the window of position ids), so passes
carry almost no padding.

Exact: every token sees exactly the tokens, at exactly the positions, that it
sees in its own right-padded row; only float32 rounding of differently shaped
matmuls differs (tested against the one-row-per-text path and plain HF).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ROW_TOKENS = 128  # packed row length (a longer segment gets a row of its own length)


@dataclass(frozen=True)
class Segment:
    """One cell's tokens in a packed row: a pair tree or one text.

    Tokens in ``[branch, len)`` do not see ``[fork, branch)`` (the negative
    completion does not see the positive one); ``fork == branch == len`` for a
    single text. ``scored``: per batch row, the segment offsets whose next-token
    log-probs it needs and those tokens.
    """

    cell: int
    ids: tuple[int, ...]
    pos: tuple[int, ...]
    fork: int
    branch: int
    scored: tuple[tuple[int, np.ndarray, np.ndarray], ...]  # (batch row, offsets, target ids)
    full: bool  # its rows need whole next-token distributions (KL, kept log-probs)
    readout: bool  # read resid_post at its last token

    def __len__(self) -> int:
        return len(self.ids)


def segments(batch, cells, items, positions) -> list[Segment]:
    """The (cell, row) ``items`` as segments: a pair tree where a cell scores both rows of a pair."""
    n, n2 = batch.n_pairs, 2 * batch.n_pairs
    rows_of: dict[int, set[int]] = {}
    for k, r in items:
        rows_of.setdefault(k, set()).add(r)
    out = []
    for k, rows in rows_of.items():
        c = cells[k]
        for r in sorted(rows):
            if r < n and r + n in rows:  # both rows of pair r: one tree
                p, a, b = int(batch.n_prompt[r]), batch.ids[r], batch.ids[r + n]
                if a[:p] != b[:p]:
                    raise ValueError(f"pair {r}: its two rows do not share the prompt's tokens")
                ids = tuple(a) + tuple(b[p:])
                pos = tuple(range(len(a))) + tuple(range(p, len(b)))
                neg_at = np.r_[p - 1, np.arange(len(a), len(ids) - 1)]
                scored = ((r, np.arange(p - 1, len(a) - 1), np.asarray(a[p:])),
                          (r + n, neg_at, np.asarray(b[p:])))
                out.append(Segment(k, ids, pos, p, len(a), scored, False, False))
            elif n <= r < n2 and r - n in rows:
                continue  # scored in its pair's tree
            else:
                ids = tuple(batch.ids[r])
                at = positions(batch, r)
                bg = r >= n2
                out.append(Segment(k, ids, tuple(range(len(ids))), len(ids), len(ids),
                                   ((r, at, np.asarray(ids)[at + 1]),), bg and (c.kl or c.keep_logp), bg and c.readout))
    return out


def passes(segs: list[Segment], pass_tokens: int, pass_positions: int) -> list[list[list[Segment]]]:
    """Segments in length order, cut into passes within the token and full-position budgets, each
    pass's segments packed into rows first-fit (longest first)."""
    out, cur, tokens, full = [], [], 0, 0
    for s in sorted(segs, key=len):
        f = sum(len(at) for _, at, _ in s.scored) if s.full else 0
        if cur and (tokens + len(s) > pass_tokens or full + f > pass_positions):
            out.append(_rows(cur))
            cur, tokens, full = [], 0, 0
        cur.append(s)
        tokens, full = tokens + len(s), full + f
    if cur:
        out.append(_rows(cur))
    return out


def _rows(segs: list[Segment]) -> list[list[Segment]]:
    cap = max(ROW_TOKENS, max(len(s) for s in segs))
    rows: list[list[Segment]] = []
    fill: list[int] = []
    for s in sorted(segs, key=len, reverse=True):
        j = next((j for j, used in enumerate(fill) if used + len(s) <= cap), None)
        if j is None:
            rows.append([s])
            fill.append(len(s))
        else:
            rows[j].append(s)
            fill[j] += len(s)
    return rows


@dataclass
class PackedPass:
    """One pass's tensors: ids, position ids, additive masks, and where each segment starts."""

    ids: torch.Tensor  # (rows, width)
    position_ids: torch.Tensor
    masks: dict[str, torch.Tensor]  # "full_attention" / "sliding_attention": (rows, 1, width, width)
    starts: list[list[int]]  # per row, per segment: its first column


def build(rows: list[list[Segment]], pad_id: int, window: int | None, dtype, device) -> PackedPass:
    width = max(sum(len(s) for s in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)  # segment number per column; -1 padding
    side = torch.zeros((len(rows), width), dtype=torch.long)  # 1 on the first completion, 2 on the second
    starts = []
    for i, row in enumerate(rows):
        col, row_starts = 0, []
        for j, s in enumerate(row):
            sl = slice(col, col + len(s))
            ids[i, sl] = torch.tensor(s.ids)
            pos[i, sl] = torch.tensor(s.pos)
            seg[i, sl] = j
            side[i, col + s.fork: col + s.branch] = 1
            side[i, col + s.branch: col + len(s)] = 2
            row_starts.append(col)
            col += len(s)
        starts.append(row_starts)
    q, k = torch.arange(width)[:, None], torch.arange(width)[None, :]
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    allowed = same & (k <= q) & ~((side[:, :, None] == 2) & (side[:, None, :] == 1))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding sees itself: no all-masked softmax row
    masks = {"full_attention": allowed}
    if window:
        masks["sliding_attention"] = allowed & ((pos[:, :, None] - pos[:, None, :] < window) | (seg[:, :, None] < 0))
    neg = torch.finfo(dtype).min
    masks = {name: torch.zeros(m.shape, dtype=dtype).masked_fill(~m, neg)[:, None].to(device) for name, m in masks.items()}
    return PackedPass(ids.to(device), pos.to(device), masks, starts)
