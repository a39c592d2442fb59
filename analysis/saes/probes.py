"""SAE latents of concepts: mean-difference ranking, sparse probes, latent cards.

Texts are pooled to one code per text: ``max`` (default) or ``mean`` of the
latent codes over the text's tokens, BOS excluded (the SAEs here never saw
BOS). Max pooling suits sparse latents: a latent that fires on one word of a
sentence keeps its full value.

* Concept latents: diff_i = mean_pos(code_i) − mean_neg(code_i), positives the
  concept's texts, negatives the background set (Methods §1-2). Each latent is
  named by its id and the distinct tokens of the concept's texts on which its
  code peaks (:func:`latent_top_tokens`).
* Sparse probe: L2 logistic regression (class-balanced) on the top-k latents
  by |diff|, scored by stratified k-fold *balanced* accuracy (chance = 0.5
  whatever the class sizes: the background set is larger than a concept's)
  for k in 1..32. The latents are ranked on each
  training fold only, so the held-out fold never leaks into the choice.
* Latent card: the corpus texts where the latent peaks (with the token), the
  histogram of its non-zero per-token values, and the tokens its decoder row
  promotes: ``W_dec[i] @ W_U`` (no final norm: Gemma's RMSNorm rescales per
  token, the weight alone is not the map; this is the usual "logit lens on
  the decoder" and the ranking changes little). At middle layers this
  direct effect is often noise (the shipped layer-6 SAE's "food" latent
  promotes unrelated tokens); the top texts are the better description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from analysis.activations import extract
from analysis.concepts import fit_logistic_batched
from analysis.models import LoadedModel
from analysis.saes.loading import LoadedSAE, encode

POOLINGS = ("max", "mean")
PROBE_KS = (1, 2, 4, 8, 16, 32)


def check_compatible(lm: LoadedModel, loaded: LoadedSAE) -> None:
    if loaded.hook_name not in lm.model.hook_dict:
        raise ValueError(f"SAE {loaded.name!r} reads {loaded.hook_name!r}, which {lm.name} does not have")
    if loaded.d_in != lm.d_model:
        raise ValueError(f"SAE {loaded.name!r} has d_in={loaded.d_in} but {lm.name} has d_model={lm.d_model}; "
                         "pick an SAE trained on this model")


@dataclass(frozen=True)
class TokenCodes:
    """Per-token codes of texts (BOS dropped): text i is ``codes[offsets[i]:offsets[i+1]]``."""

    codes: Float[np.ndarray, "n_tokens d_sae"]
    offsets: np.ndarray
    token_ids: np.ndarray

    def pooled(self, pooling: str = "max") -> Float[np.ndarray, "n_texts d_sae"]:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: valid poolings are {POOLINGS}")
        red = np.maximum.reduceat if pooling == "max" else np.add.reduceat
        starts = self.offsets[:-1]
        counts = np.diff(self.offsets)
        out = red(self.codes, np.minimum(starts, len(self.codes) - 1), axis=0)
        out[counts == 0] = 0.0
        return out / np.maximum(counts, 1)[:, None] if pooling == "mean" else out

    def rows(self, texts: Sequence[int]) -> TokenCodes:
        """The codes of the texts at indices ``texts`` (in that order, repeats allowed), as if encoded alone."""
        idx = np.asarray(texts, dtype=np.int64)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)] or [np.zeros(0, np.int64)])
        offsets = np.r_[0, np.cumsum(ends - starts)].astype(np.int64)
        return TokenCodes(self.codes[take], offsets, self.token_ids[take])


def token_codes(lm: LoadedModel, loaded: LoadedSAE, texts: list[str]) -> TokenCodes:
    """Encode every non-BOS token of ``texts`` at the SAE's hook (activations disk-cached)."""
    check_compatible(lm, loaded)
    acts = extract(lm, list(texts), [loaded.hook_name], pooling="all")
    values, offs = acts.values[loaded.hook_name], acts.offsets
    keep = np.ones(len(values), dtype=bool)
    keep[offs[:-1]] = False
    ids = np.concatenate([lm.tokenize([t])[0][0].cpu().numpy() for t in texts])
    codes = encode(loaded.sae, torch.from_numpy(values[keep])).numpy()
    new_offsets = offs - np.arange(len(offs))  # one BOS fewer per text so far
    return TokenCodes(codes, new_offsets.astype(np.int64), ids[keep])


# ---------------------------------------------------------------- concept latents

@dataclass(frozen=True)
class ConceptLatents:
    concept: str
    pooling: str
    diff: Float[np.ndarray, "d_sae"]
    mean_pos: Float[np.ndarray, "d_sae"]
    mean_neg: Float[np.ndarray, "d_sae"]
    n_pos: int
    n_neg: int

    def top(self, n: int = 20) -> np.ndarray:
        """Latents with the largest positive difference (the concept's own latents)."""
        return np.argsort(-self.diff, kind="stable")[:n]

    def frame(self, n: int = 20, tokens: dict[int, tuple[str, ...]] | None = None) -> pd.DataFrame:
        """The top ``n`` latents; ``tokens`` (from :func:`latent_top_tokens`) adds a ``top_tokens`` column."""
        idx = self.top(n)
        frame = pd.DataFrame({"latent": idx, "diff": self.diff[idx], "mean_concept": self.mean_pos[idx],
                              "mean_background": self.mean_neg[idx]})
        if tokens is not None:
            frame["top_tokens"] = [" | ".join(tokens.get(int(i), ())) for i in idx]
        return frame


def compute_concept_latents(pos: np.ndarray, neg: np.ndarray, concept: str = "concept",
                            pooling: str = "max") -> ConceptLatents:
    """Per-latent mean pooled code, concept minus background."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1] or not len(pos) or not len(neg):
        raise ValueError(f"codes must be (n_texts, d_sae) with the same d_sae, got {pos.shape} and {neg.shape}")
    mp, mn = pos.mean(0), neg.mean(0)
    return ConceptLatents(concept, pooling, mp - mn, mp, mn, len(pos), len(neg))


def latent_top_tokens(codes: TokenCodes, latents, decode, n: int = 3) -> dict[int, tuple[str, ...]]:
    """For each latent, the ``n`` distinct tokens of ``codes`` with the highest code (only where it fires).

    ``decode`` maps a token id to its text (e.g. ``lambda i: tokenizer.decode([i])``). Distinct by
    token id, in order of the latent's peak value on that token; fewer than ``n`` if it fires on fewer.
    """
    out = {}
    for latent in latents:
        col = codes.codes[:, int(latent)]
        seen: list[int] = []
        for j in np.argsort(-col, kind="stable"):
            if col[j] <= 0 or len(seen) == n:
                break
            tid = int(codes.token_ids[j])
            if tid not in seen:
                seen.append(tid)
        out[int(latent)] = tuple(decode(t) for t in seen)
    return out


# ---------------------------------------------------------------- sparse probe

@dataclass(frozen=True)
class ProbeCurve:
    concept: str
    ks: np.ndarray
    accuracy: np.ndarray
    accuracy_std: np.ndarray
    chance: float
    folds: int
    latents: np.ndarray  # top max(ks) latents by |diff| on all texts (display only)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"k": self.ks, "balanced_accuracy": self.accuracy,
                             "balanced_accuracy_std": self.accuracy_std})


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both by the training rows' mean and population std, as sklearn's ``StandardScaler``.

    A (near-)constant training column gets scale 1, with sklearn's test for it:
    var ≤ n·ε·var + (n·mean·ε)² (the error bound of the two-pass variance).
    """
    mean = train.mean(0)
    var = train.var(0)
    eps = np.finfo(np.float64).eps
    n = len(train)
    scale = np.where(var <= n * eps * var + (n * mean * eps) ** 2, 1.0, np.sqrt(var))
    return (train - mean) / scale, (test - mean) / scale


def _probe_fits(X: np.ndarray, y: np.ndarray, ks: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]],
                C: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (k, fold) probe in one batched fit: ``(w (k, fold, max k), intercept (k, fold), accuracy (k, fold))``.

    ``w[j, f, :k]`` are the weights of fold ``f``'s top-``ks[j]`` latents in their
    ranking order, on standardised codes (``LogisticRegression.coef_`` of the pipeline).
    """
    # One problem per (k, fold), padded to the largest k and the largest training fold.
    # Padding columns are all zero: such a column contributes nothing to the loss, so
    # under the L2 penalty its weight is exactly 0 and the other weights are unchanged.
    # Padding rows have sample weight 0, i.e. they are absent from the objective.
    folds = len(splits)
    n_tr, n_te, k_max = max(len(tr) for tr, _ in splits), max(len(te) for _, te in splits), int(ks.max())
    b = len(ks) * folds
    x_tr, x_te = np.zeros((b, n_tr, k_max)), np.zeros((b, n_te, k_max))
    y_tr, s_tr = np.zeros((b, n_tr)), np.zeros((b, n_tr))
    for f, (tr, te) in enumerate(splits):
        yt = y[tr]
        diff = np.abs(X[tr][yt == 1].mean(0) - X[tr][yt == 0].mean(0))
        order = np.argsort(-diff, kind="stable")
        # class_weight="balanced": n / (2 · n_class) for every row of that class
        weight = np.where(yt == 1, len(yt) / (2 * yt.sum()), len(yt) / (2 * (len(yt) - yt.sum())))
        for j, k in enumerate(ks):
            i = j * folds + f
            x_tr[i, : len(tr), :k], x_te[i, : len(te), :k] = _standardise(X[tr][:, order[:k]], X[te][:, order[:k]])
            y_tr[i, : len(tr)], s_tr[i, : len(tr)] = yt, weight
    w, intercept = fit_logistic_batched(x_tr, y_tr, C, sample_weight=s_tr)
    w, intercept = w.cpu().numpy(), intercept.cpu().numpy()
    pred = np.einsum("bnd,bd->bn", x_te, w) + intercept[:, None] > 0
    acc = np.zeros((len(ks), folds))
    for f, (_, te) in enumerate(splits):
        yt = y[te] == 1
        for j in range(len(ks)):
            p = pred[j * folds + f, : len(te)]
            acc[j, f] = 0.5 * (p[yt].mean() + (~p[~yt]).mean())  # balanced accuracy
    return w.reshape(len(ks), folds, k_max), intercept.reshape(len(ks), folds), acc


def compute_sparse_probe(pos: np.ndarray, neg: np.ndarray, ks=PROBE_KS, folds: int = 5, seed: int = 0,
                         concept: str = "concept", C: float = 1.0) -> ProbeCurve:
    """Cross-validated balanced accuracy of logistic regression on the top-k latents, per k.

    Per fold: latents ranked by |diff| on the training rows, the top k
    standardised by the training rows (``StandardScaler``), and
    ``LogisticRegression(C, class_weight="balanced")`` fitted. All (k, fold)
    problems are solved in one call of the batched fitter
    (:func:`analysis.concepts.fit_logistic_batched`), exact for that objective.
    """
    from sklearn.model_selection import StratifiedKFold

    X = np.concatenate([pos, neg]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    folds = min(folds, len(pos), len(neg))
    if folds < 2:
        raise ValueError("a sparse probe needs at least 2 texts in each class")
    ks = np.array(sorted({min(int(k), X.shape[1]) for k in ks}))
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y))
    acc = _probe_fits(X, y, ks, splits, C)[2]
    full = np.abs(X[y == 1].mean(0) - X[y == 0].mean(0))
    return ProbeCurve(concept, ks, acc.mean(1), acc.std(1), 0.5, folds,
                      np.argsort(-full, kind="stable")[: ks.max()])


# ---------------------------------------------------------------- latent card

@dataclass(frozen=True)
class LatentCard:
    latent: int
    top_texts: pd.DataFrame  # text, max_activation, token
    activations: Float[np.ndarray, "n_active"]  # non-zero per-token values
    frac_active: float
    promoted_tokens: list[str]
    promoted_logits: Float[np.ndarray, "n"]


@torch.inference_mode()
def promoted_tokens(lm: LoadedModel, loaded: LoadedSAE, latent: int, n: int = 10) -> tuple[list[str], np.ndarray]:
    """Top-``n`` tokens of ``W_dec[latent] @ W_U`` (see module docstring)."""
    with lm.locked() as model:
        W_U = model.W_U
        row = loaded.sae.W_dec[latent].to(W_U.dtype).to(W_U.device)
        logits = (row @ W_U).float().cpu()
    vals, idx = logits.topk(n)
    return [lm.tokenizer.decode([int(i)]) for i in idx], vals.numpy()


def compute_latent_card(lm: LoadedModel, loaded: LoadedSAE, latent: int, texts: list[str],
                        n_top: int = 10, codes: TokenCodes | None = None) -> LatentCard:
    """Where ``latent`` fires in ``texts`` and what it writes; ``codes`` reuses an encoding."""
    if not 0 <= latent < loaded.d_sae:
        raise ValueError(f"latent {latent} is out of range: the SAE has latents 0..{loaded.d_sae - 1}")
    codes = codes or token_codes(lm, loaded, texts)
    col = codes.codes[:, latent]
    rows = []
    for i, text in enumerate(texts):
        a, b = codes.offsets[i], codes.offsets[i + 1]
        if b > a:
            j = int(np.argmax(col[a:b]))
            rows.append((text, float(col[a + j]), lm.tokenizer.decode([int(codes.token_ids[a + j])])))
    top = pd.DataFrame(rows, columns=["text", "max_activation", "token"])
    top = top.sort_values("max_activation", ascending=False, kind="stable").head(n_top).reset_index(drop=True)
    toks, logits = promoted_tokens(lm, loaded, latent)
    return LatentCard(latent, top, col[col > 0], float((col > 0).mean()) if len(col) else 0.0, toks, logits)


# ---------------------------------------------------------------- recipes
