"""Unembedding geometry of single-token preference pairs (Razin et al., the single-token analysis).

For a one-token response, the only position that predicts y+ is the same as
the one that predicts y- (the last prompt token), so S+ = S- and CHES is 0
for every such pair. What decides then is the geometry of the two output
embeddings W+ = W_U[y+] and W- = W_U[y-] (rows of the unembedding, d_model wide):

* ``inner`` = <W+, W->, against ``norm_plus_sq`` = ||W+||^2;
* ``proj_coeff`` = <W+, W->/||W+||, the length of W-'s projection on W+'s
  direction; ``gap`` = ||W+|| - proj_coeff (the authors' column);
* ``orth_norm`` = ||W- - (proj_coeff/||W+||) W+||, the part of W- orthogonal to W+;
* ``norm_plus``, ``norm_minus``, ``cosine``.

The hidden state h at that position moves along W+ - W- under DPO, so
log p(y+) changes to first order by <W+ - W-, W+> - (mass-weighted mean of
<W+ - W-, W_z>): p(y+) can FALL when <W+, W-> > ||W+||^2 (``proj_coeff >
||W+||``, i.e. ``gap < 0``, flagged ``may_displace``), and the tokens z that
gain the most mass are those with a large <W_z, W+ - W-> (``pushed_tokens``).
The bias of the unembedding (zero on Gemma) is ignored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from analysis.likelihood.preferences import PreferencePair


def unembedding(lm) -> Float[torch.Tensor, "vocab d_model"]:
    """The output embedding rows W_U[v] of ``lm`` (detached, on its device)."""
    model = lm.model
    hf = getattr(model, "original_model", None)
    if hf is not None:
        return hf.get_output_embeddings().weight.detach()
    return model.W_U.detach().T


def token_geometry(W, plus, minus) -> dict[str, np.ndarray]:
    """The module docstring's quantities per (y+, y-) token-id pair, in float64."""
    W = torch.as_tensor(W)
    wp = W[torch.as_tensor(np.asarray(plus), dtype=torch.long)].double()
    wm = W[torch.as_tensor(np.asarray(minus), dtype=torch.long)].double()
    inner = (wp * wm).sum(-1)
    norm_plus = wp.norm(dim=-1)
    norm_minus = wm.norm(dim=-1)
    proj = inner / norm_plus
    orth = (wm - (proj / norm_plus)[:, None] * wp).norm(dim=-1)
    out = {
        "inner": inner, "norm_plus_sq": norm_plus ** 2, "proj_coeff": proj, "gap": norm_plus - proj,
        "orth_norm": orth, "norm_plus": norm_plus, "norm_minus": norm_minus, "cosine": inner / (norm_plus * norm_minus),
    }
    return {k: v.cpu().numpy() for k, v in out.items()}


def pushed_tokens(W, plus: int, minus: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` token ids with the largest <W_z, W+ - W-> (the theory's candidates to gain mass) and the values."""
    W = torch.as_tensor(W)
    # In W's own dtype: a float64 copy of a 262k x 640 unembedding would cost 1.3 GB per call.
    score = (W @ (W[int(plus)] - W[int(minus)])).double()
    top = torch.topk(score, min(k, W.shape[0]))
    return top.indices.cpu().numpy(), top.values.cpu().numpy()


def single_token_geometry(lm, pairs: list[PreferencePair], *, pushed: int = 5) -> pd.DataFrame:
    """One row per pair: first response tokens, whether both responses are one token, the geometry,
    ``may_displace`` (<W+, W-> > ||W+||^2) and the ``pushed`` tokens with the largest <W_z, W+ - W->."""
    tok = lm.tokenizer
    rows = []
    for i, p in enumerate(pairs):
        a = tok(p.chosen, add_special_tokens=False)["input_ids"]
        b = tok(p.rejected, add_special_tokens=False)["input_ids"]
        rows.append((i, a, b))
    W = unembedding(lm)
    geo = token_geometry(W, [a[0] for _, a, _ in rows], [b[0] for _, _, b in rows])
    frame = pd.DataFrame({
        "pair": [i for i, _, _ in rows],
        "chosen": [p.chosen for p in pairs],
        "rejected": [p.rejected for p in pairs],
        "single_token": [len(a) == 1 and len(b) == 1 for _, a, b in rows],
        "first_tokens_equal": [a[0] == b[0] for _, a, b in rows],
        **geo,
    })
    frame["may_displace"] = frame["inner"] > frame["norm_plus_sq"]
    names = []
    for _, a, b in rows:
        if a[0] == b[0]:
            names.append("")
            continue
        ids, _ = pushed_tokens(W, a[0], b[0], pushed)
        names.append(", ".join(repr(tok.decode([int(t)])) for t in ids))
    frame["pushed_tokens"] = names
    return frame
