"""Steering vectors by contrastive activation addition (Methods §3, Backdoor Activation Attack).

Pipeline: :func:`compute_pair_activations` reads ``resid_post[l]`` of every
layer in one pass over the pairs' texts, at a position chosen by name
(:data:`POSITIONS`); the layer is chosen by the behavioural search
(:mod:`analysis.steering.search`, the default) or :func:`layer_search` scores each
candidate layer by a name from :data:`SCORES`; :class:`SteeringVector` holds v_l = mean(positive −
negative) for every layer plus the chosen layer; :func:`apply` adds α·v_l to
``resid_post[l]`` at every position inside a ``with`` block.

Footguns:
- "minus2" is token −2 of prompt+completion *including* the completion's
  final punctuation, as in the paper; short completions make it a
  completion token, empty ones (prompt-pair uploads) a prompt token.
- The "paper" score is not a divergence: the authors pass probabilities
  where ``kl_div`` expects log-probabilities, so it measures how concentrated
  M is. It is offered because it is what the paper's layer choice used;
  "exact" is the true JS divergence, "centred" the JS of z-scored activations.
- On Gemma-3 a few residual dimensions are huge, so softmax over the hidden
  dimension is one-hot on the same dimension for both texts from layer 1 on:
  "paper" and "exact" are flat there and would pick layer 0.
  :attr:`LayerSearch.degenerate` flags this. The default search is therefore
  behavioural on every model: distributional scores rank how differently the
  two texts' residuals are distributed at one token, which says nothing about
  whether adding their difference moves behaviour.
- ``apply`` holds ``lm.lock`` for the whole block: keep the block short.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float

from analysis.activations import extract, resid_hook, resid_hooks
from analysis.models import LoadedModel
from analysis.progress import report, scaled
from analysis.steering.pairs import Pair, PairSet
from analysis.steering.forward import torch_add
from analysis.steering.search import SearchConfig, behavioural_search, split_validation
from analysis.steering.twin import existing_twin

# ---------------------------------------------------------------- positions

PositionFn = Callable[[np.ndarray, int], np.ndarray]


def _minus2(seq: np.ndarray, n_prompt: int) -> np.ndarray:
    if seq.shape[0] < 2:
        raise ValueError("position 'minus2' needs texts of at least 2 tokens")
    return seq[-2]


def _last(seq: np.ndarray, n_prompt: int) -> np.ndarray:
    return seq[-1]


def _completion_mean(seq: np.ndarray, n_prompt: int) -> np.ndarray:
    if seq.shape[0] <= n_prompt:
        raise ValueError("position 'completion_mean' needs non-empty completions; use 'minus2' or 'last'")
    return seq[n_prompt:].mean(0)


POSITIONS: dict[str, PositionFn] = {"minus2": _minus2, "last": _last, "completion_mean": _completion_mean}

# ---------------------------------------------------------------- layer-search scores


def _log_softmax(x: np.ndarray) -> np.ndarray:
    # Gemma's residuals have a few huge dimensions: softmax is nearly one-hot, so
    # work in log space (0·log 0 would otherwise give NaN).
    x = x.astype(np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _js_terms(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    lp, ln = _log_softmax(pos), _log_softmax(neg)
    p, n = np.exp(lp), np.exp(ln)
    log_m = np.logaddexp(lp, ln) - np.log(2.0)
    return ((p * (lp - log_m)).sum(-1) + (n * (ln - log_m)).sum(-1)) / 2


def js_exact(pos: Float[np.ndarray, "n d"], neg: Float[np.ndarray, "n d"]) -> float:
    """Mean over pairs of JS(p, n) = (KL(p‖M) + KL(n‖M))/2, p/n = softmax over the hidden dim."""
    return float(_js_terms(pos, neg).mean())


def js_paper(pos: Float[np.ndarray, "n d"], neg: Float[np.ndarray, "n d"]) -> float:
    """The authors' ``attack.py`` score, verbatim: ``0.5·(kl_div(p, M) + kl_div(n, M))``, means over d then pairs.

    ``F.kl_div(input, target, reduction="none")`` is ``target·(log target − input)``; the authors pass
    probabilities p (not log p) as ``input``, so each term is mean_d M·(log M − p): it measures how
    concentrated M is, not a divergence (every term is ≤ 0; it is −1/d when p = n is one-hot). Terms with
    M = 0 are 0, as in torch (``xlogy``); log M is computed in log space, so nothing is NaN.
    """
    lp, ln = _log_softmax(pos), _log_softmax(neg)
    p, n = np.exp(lp), np.exp(ln)
    log_m = np.logaddexp(lp, ln) - np.log(2.0)
    m = np.exp(log_m)
    kl1 = (m * (log_m - p)).mean(-1)
    kl2 = (m * (log_m - n)).mean(-1)
    return float((0.5 * (kl1 + kl2)).mean(-1))


def standardise(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x − μ_d)/σ_d with μ, σ over the pooled positive and negative rows; constant dims become 0.

    Removes dimensions that are large but the same for every input (Gemma's massive
    activations), which otherwise make the softmax one-hot on them.
    """
    both = np.concatenate([pos, neg]).astype(np.float64)
    mu, sd = both.mean(0), both.std(0)
    scale = np.where(sd > 0, sd, 1.0)
    return (pos - mu) / scale * (sd > 0), (neg - mu) / scale * (sd > 0)


def js_centred(pos: Float[np.ndarray, "n d"], neg: Float[np.ndarray, "n d"]) -> float:
    """Exact JS after :func:`standardise` (per-dimension z-scores over this layer's pair activations)."""
    return js_exact(*standardise(pos, neg))


SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "paper": js_paper, "exact": js_exact, "centred": js_centred}
SCORE_TEXT = {
    "paper": "the authors' heuristic (attack.py): measures how concentrated M is, not a divergence",
    "exact": "Jensen-Shannon divergence of softmax over the hidden dimension",
    "centred": "Jensen-Shannon divergence after z-scoring each hidden dimension (massive dims removed)",
    "behavioural": "held-out steering gain within a background-loss budget (CAA-style sweep)",
}
SEARCHES = ("behavioural", "auto", *SCORES)


@dataclass(frozen=True)
class SteeringConfig:
    """How to build a vector: position, layer search, candidate layers (None: first half).

    ``score``: "behavioural" (default; steer and measure, :mod:`analysis.steering.search`),
    a distributional score from :data:`SCORES`, or "auto" (behavioural only when the
    "paper" score is degenerate). ``search`` configures the behavioural search.
    """

    position: str = "minus2"
    score: str = "behavioural"
    search_layers: tuple[int, ...] | None = None
    search: SearchConfig = SearchConfig()

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position {self.position!r}: valid positions are {tuple(POSITIONS)}")
        if self.score not in SEARCHES:
            raise ValueError(f"score {self.score!r}: valid scores are {SEARCHES}")
        if self.search_layers is not None and (not self.search_layers or min(self.search_layers) < 0):
            raise ValueError("search_layers must be non-empty layer indices >= 0, or None for the first half")
        if not isinstance(self.search, SearchConfig):
            raise ValueError("search must be a SearchConfig")

    def candidates(self, n_layers: int) -> tuple[int, ...]:
        if self.search_layers is None:
            return tuple(range(max(1, n_layers // 2)))
        bad = [l for l in self.search_layers if l >= n_layers]
        if bad:
            raise ValueError(f"search layers {bad} do not exist; the model has layers 0..{n_layers - 1}")
        return tuple(sorted(set(self.search_layers)))


# ---------------------------------------------------------------- activations


@dataclass(frozen=True)
class PairActivations:
    """``resid_post`` of every layer at the chosen position: ``(n_pairs, n_layers, d_model)`` each."""

    positive: np.ndarray
    negative: np.ndarray
    position: str

    @property
    def vectors(self) -> Float[np.ndarray, "n_layers d_model"]:
        """v_l = mean over pairs of (positive − negative), every layer."""
        return (self.positive - self.negative).mean(0)


def compute_pair_activations(
    lm: LoadedModel, pairs: Sequence[Pair], position: str = "minus2", *, progress=None,
) -> PairActivations:
    """One pass over all pairs' texts collecting ``resid_post`` at every layer."""
    if position not in POSITIONS:
        raise ValueError(f"position {position!r}: valid positions are {tuple(POSITIONS)}")
    if not pairs:
        raise ValueError("no pairs given: a steering vector needs at least one pair")
    pick = POSITIONS[position]
    texts = [p.positive_text for p in pairs] + [p.negative_text for p in pairs]
    n_prompt = [len(lm.tokenizer(p.prompt)["input_ids"]) for p in pairs] * 2
    hooks = resid_hooks(lm)
    acts = extract(lm, texts, hooks, pooling="all",
                   progress=(lambda f: progress(f, "reading activations of every layer")) if progress else None)
    out = np.stack([
        np.stack([pick(acts.text(h, i), n_prompt[i]) for h in hooks]) for i in range(len(texts))
    ]).astype(np.float32)
    n = len(pairs)
    return PairActivations(positive=out[:n], negative=out[n:], position=position)


@dataclass(frozen=True)
class LayerSearch:
    layers: np.ndarray
    scores: np.ndarray
    score: str

    @property
    def best(self) -> int:
        return int(self.layers[int(np.argmax(self.scores))])

    @property
    def degenerate(self) -> bool:
        """True when most candidate layers tie (the softmax saturated): the search says little."""
        if len(self.scores) < 3:
            return False
        scale = float(np.max(np.abs(self.scores))) or 1.0
        _, counts = np.unique(np.round(self.scores / scale, 6), return_counts=True)
        return bool(counts.max() > len(self.scores) / 2)

    def summary(self) -> dict:
        return {"rule": self.score, "rule_text": SCORE_TEXT[self.score], "layers": self.layers.tolist(),
                "scores": [float(x) for x in self.scores], "chosen_layer": self.best, "degenerate": self.degenerate}


def layer_search(acts: PairActivations, score: str = "paper", layers: Sequence[int] | None = None) -> LayerSearch:
    """Score each candidate layer (Methods §3); the best layer has the largest score."""
    if score not in SCORES:
        raise ValueError(f"score {score!r}: valid scores are {tuple(SCORES)}")
    cand = np.array(range(acts.positive.shape[1]) if layers is None else list(layers), dtype=np.int64)
    fn = SCORES[score]
    vals = np.array([fn(acts.positive[:, l], acts.negative[:, l]) for l in cand], dtype=np.float64)
    return LayerSearch(layers=cand, scores=vals, score=score)


# ---------------------------------------------------------------- the vector


@dataclass(frozen=True)
class SteeringVector:
    """v_l for every layer of ``model`` and the layer(s) applied by default.

    ``vectors``: ``(n_layers, d_model)`` float32. ``meta``: JSON-able facts
    (pair set, position, score, pair count, layer-search scores).
    """

    model: str
    vectors: np.ndarray
    layers: tuple[int, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be (n_layers, d_model); got shape {self.vectors.shape}")
        bad = [l for l in self.layers if not 0 <= l < self.vectors.shape[0]]
        if not self.layers or bad:
            raise ValueError(f"layers {list(self.layers)}: valid layers are 0..{self.vectors.shape[0] - 1}")

    @property
    def n_layers(self) -> int:
        return int(self.vectors.shape[0])

    def save(self, path: str | Path) -> Path:
        """One ``.safetensors`` file; model, layers and meta are JSON in its header."""
        from safetensors.numpy import save

        from analysis.atomic import write_atomic

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"repscope_steering": "1", "model": self.model,
                  "layers": json.dumps(list(self.layers)), "meta": json.dumps(self.meta, default=float)}
        # Durable and atomic (unique temp, fsync, rename; a symlink target is refused).
        return write_atomic(path, save({"vectors": np.ascontiguousarray(self.vectors, dtype=np.float32)},
                                       metadata=header))

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                header = f.metadata() or {}
                vectors = f.get_tensor("vectors")
        except Exception as err:  # noqa: BLE001 - any unreadable file gets one clear message
            raise ValueError(f"{path}: not a readable steering vector file ({err})") from err
        if header.get("repscope_steering") != "1":
            raise ValueError(f"{path}: not a RepScope steering vector (no 'repscope_steering' header)")
        return cls(model=header["model"], vectors=vectors, layers=tuple(json.loads(header["layers"])),
                   meta=json.loads(header.get("meta", "{}")))


def mean_residual_norm(acts: PairActivations) -> Float[np.ndarray, " n_layers"]:
    """Mean ‖resid_post[l]‖ over every positive and negative activation (at the vector's position)."""
    both = np.concatenate([acts.positive, acts.negative]).astype(np.float64)
    return np.linalg.norm(both, axis=-1).mean(0)


def build_steering_vector(
    lm: LoadedModel, pair_set: PairSet, config: SteeringConfig = SteeringConfig(), *,
    layer: int | None = None, background: Sequence[str] | None = None, progress=None,
):
    """Vectors for every layer from the training pairs, the layer search, and the chosen layer.

    Returns ``(vector, search, acts)``; ``search`` is a :class:`LayerSearch` or a
    :class:`~analysis.steering.search.BehaviouralSearch`. ``vector.meta`` holds every
    distributional score, ``degenerate`` (of the paper score) and the search's summary.
    ``progress(fraction, stage)``; the behavioural search may be stopped (:class:`Stopped`).
    """
    train = pair_set.train or pair_set.pairs
    acts = compute_pair_activations(lm, train, config.position, progress=scaled(progress, 0.0, 0.15))
    cand = config.candidates(lm.n_layers)
    dist = {s: layer_search(acts, s, cand) for s in SCORES}
    degenerate = dist["paper"].degenerate
    rule = config.score
    if rule == "auto":
        rule = "behavioural" if degenerate else "paper"
    if rule == "behavioural":
        if background is None:
            from analysis.concepts import background_texts

            background = background_texts()
        fit, val, in_sample = split_validation(len(train), config.search)
        fit_vectors = (acts.positive[fit] - acts.negative[fit]).mean(0)
        search = behavioural_search(
            lm, fit_vectors, mean_residual_norm(acts), [train[i] for i in val], list(background), cand,
            config.search, n_fit=len(fit), in_sample=in_sample, progress=scaled(progress, 0.15, 1.0))
    else:
        search = dist[rule]
    chosen = search.best if layer is None else int(layer)
    meta = {"pair_set": pair_set.name, "position": config.position, "score": config.score, "rule": rule,
            "n_pairs": len(train), "search_layers": list(cand), "best_layer": search.best,
            "degenerate": degenerate, "distributional": {s: r.scores.tolist() for s, r in dist.items()},
            "search": search.summary()}
    vec = SteeringVector(model=lm.name, vectors=acts.vectors, layers=(chosen,), meta=meta)
    report(progress, 1.0, "vector built")
    return vec, search, acts


# ---------------------------------------------------------------- applying it

@contextlib.contextmanager
def apply(
    lm: LoadedModel, vector: SteeringVector, alpha: float, layers: Sequence[int] | None = None,
) -> Iterator[LoadedModel]:
    """Add α·v_l to ``resid_post[l]`` at every position for the block's duration.

    Holds ``lm.lock`` throughout, so no other caller runs on the model while
    it is steered; hooks are removed on exit, also after an exception. Every
    position includes generated tokens under a KV cache, where each step's
    hook sees only the new token. α = 0 installs no hook (outputs are exact).
    """
    layers = tuple(vector.layers if layers is None else layers)
    if vector.vectors.shape[1] != lm.d_model or vector.n_layers != lm.n_layers:
        raise ValueError(
            f"the vector was built on {vector.model!r} ({vector.n_layers} layers x {vector.vectors.shape[1]}); "
            f"{lm.name!r} has {lm.n_layers} x {lm.d_model}. Rebuild it on this model."
        )
    bad = [l for l in layers if not 0 <= l < lm.n_layers]
    if bad:
        raise ValueError(f"layers {bad}: valid layers are 0..{lm.n_layers - 1}")
    deltas = {l: torch.as_tensor(float(alpha) * vector.vectors[l], device=lm.device, dtype=lm.dtype)
              for l in layers}

    def tl_hook(delta):
        # .to is a no-op on one device; with a device map the layer may sit elsewhere.
        return lambda resid, hook: resid + delta.to(resid.device)

    fwd = [] if alpha == 0 else [(resid_hook(l), tl_hook(deltas[l])) for l in layers]
    with lm.lock, lm.hooked(fwd):
        handles = []
        try:

            twin = existing_twin(lm)  # the plain HF view generation uses, if one was made
            if twin is not None and alpha != 0:
                for l in layers:
                    handles.append(twin.model.layers[l].register_forward_hook(torch_add(deltas[l])))
            yield lm
        finally:
            for h in handles:
                h.remove()
