"""Text generation, steered or not, on the shared model (Methods §3 "Show").

Paths (chosen by name; "auto" picks the fast exact one for the backend):

* ``hf``: transformers ``generate`` (KV cache) on a *twin* of the bridge's
  Hugging Face model: a plain ``Gemma3ForCausalLM`` (etc.) whose parameters
  and buffers are the bridge's own tensors (no copy), without the bridge's
  per-module hook wrappers. Steering is a torch forward hook on the twin's
  decoder layer ``l``, whose output is ``resid_post[l]``. Bridge default.
* ``bridge``: ``TransformerBridge.generate`` with the TransformerLens hook.
* ``tl``: a KV-cached greedy/sampling loop over a ``HookedTransformer``
  (the tiny test models); the default for that backend.

The bench (``bench/bench_steering.py``) measures the paths; tests check that
steered outputs of ``hf`` and ``bridge`` agree token for token.

Footguns:
- Sampling draws from ``torch``'s global generator seeded with ``seed``
  inside ``fork_rng`` (the caller's RNG state is restored); the same seed
  gives the same text on the same path, not across paths.
- ``repetition_penalty`` follows transformers (CTRL, Keskar et al. 2019): a
  logit of a token already in prompt or output is divided by the penalty when
  positive, multiplied when negative. ``top_k``/``top_p`` filter before
  sampling (0 / 1.0: off); ``do_sample`` with ``top_k=1`` is greedy, which is
  how the authors' code decodes.
- :data:`PRESETS` ``"paper"`` is the Backdoor Activation Attack setting:
  α = −0.8 added twice (the code adds it in place and again in the hook's
  output), so the effective multiplier of v = clean − adversarial is −1.6;
  greedy, repetition penalty 1.5, up to 200 new tokens, float32.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from analysis.models import LoadedModel
from analysis.progress import Progress, report, scaled
from analysis.steering.twin import hf_twin
from analysis.steering.vector import apply

MAX_NEW_TOKENS = 200
PATHS = ("auto", "hf", "bridge", "tl")


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 40
    do_sample: bool = False
    seed: int = 0
    temperature: float = 1.0
    stop_at_eos: bool = True
    path: str = "auto"
    repetition_penalty: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty {self.repetition_penalty}: must be > 0 (1.0: off)")
        if self.top_k < 0:
            raise ValueError(f"top_k {self.top_k}: must be >= 0 (0: off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p}: must be in (0, 1] (1.0: off)")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens {self.max_new_tokens}: must be between 1 and {MAX_NEW_TOKENS}")
        if self.temperature <= 0:
            raise ValueError(f"temperature {self.temperature}: must be > 0 (use do_sample=False for greedy)")
        if self.path not in PATHS:
            raise ValueError(f"generation path {self.path!r}: valid paths are {PATHS}")


@dataclass(frozen=True)
class Preset:
    """A named generation setting: the effective α multiplier of v and the decoding config."""

    alpha: float
    config: GenerationConfig
    description: str


PRESETS = {
    "paper": Preset(alpha=-1.6, config=GenerationConfig(max_new_tokens=200, repetition_penalty=1.5),
                    description="Backdoor Activation Attack: v = clean − adversarial, α = −0.8 applied twice "
                                "(effective −1.6), greedy, repetition penalty 1.5, 200 new tokens"),
}


@dataclass(frozen=True)
class Steering:
    """What to add while generating: α·v_l at ``layers`` (None: the vector's own)."""

    vector: object  # analysis.steering.SteeringVector
    alpha: float
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str  # the new text only
    new_tokens: tuple[int, ...]
    seconds: float
    path: str

    @property
    def tokens_per_second(self) -> float:
        return len(self.new_tokens) / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------- generation


def resolve_path(lm: LoadedModel, path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"generation path {path!r}: valid paths are {PATHS}")
    if path == "auto":
        return "hf" if lm.backend == "bridge" else "tl"
    if path in ("hf", "bridge") and lm.backend != "bridge":
        raise ValueError(f"path {path!r} needs the bridge backend; {lm.name!r} uses {lm.backend!r} (use 'tl')")
    if path == "tl" and lm.backend == "bridge":
        raise ValueError("path 'tl' needs a HookedTransformer; for the bridge use 'hf' or 'bridge'")
    return path


def generate(
    lm: LoadedModel, prompt: str, config: GenerationConfig = GenerationConfig(), *,
    steering: Steering | None = None, progress: Progress | None = None,
) -> Generation:
    """Continue ``prompt``; with ``steering``, α·v is added at every position, generated ones too."""

    path = resolve_path(lm, config.path)
    if path == "hf":
        hf_twin(lm)  # before apply(), so apply() hooks the twin as well
    ids, _ = lm.tokenize([prompt])
    steer = (apply(lm, steering.vector, steering.alpha, steering.layers) if steering is not None
             else contextlib.nullcontext())
    with lm.lock, steer, torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        start = time.perf_counter()
        new = _RUNNERS[path](lm, ids, config, progress)
        seconds = time.perf_counter() - start
    text = lm.tokenizer.decode(new, skip_special_tokens=True)
    return Generation(prompt=prompt, text=text, new_tokens=tuple(new), seconds=seconds, path=path)


def generate_side_by_side(
    lm: LoadedModel, prompt: str, config: GenerationConfig, steering: Steering,
    progress: Progress | None = None,
) -> tuple[Generation, Generation]:
    """Unsteered and steered continuations with the same settings and seed."""
    plain = generate(lm, prompt, config, progress=scaled(progress, 0.0, 0.5))
    steered = generate(lm, prompt, config, steering=steering,
                       progress=scaled(progress, 0.5, 1.0))
    return plain, steered


def _eos_ids(lm) -> set[int]:
    eos = lm.tokenizer.eos_token_id
    return set() if eos is None else {int(eos)}


def _run_hf(lm, ids, config, progress) -> list[int]:
    from transformers import StoppingCriteria, StoppingCriteriaList

    n_prompt = ids.shape[1]

    class _Report(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if progress:
                done = int(input_ids.shape[1] - n_prompt)
                report(progress, done / config.max_new_tokens, f"token {done} of {config.max_new_tokens}")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    kwargs = dict(max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                  stopping_criteria=StoppingCriteriaList([_Report()]),
                  pad_token_id=lm.tokenizer.pad_token_id)
    if config.do_sample:
        kwargs.update(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    if config.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = config.repetition_penalty
    if not config.stop_at_eos:
        kwargs["min_new_tokens"] = config.max_new_tokens
    out = hf_twin(lm).generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return _trim_eos(lm, out[0, n_prompt:].tolist(), config)


def _run_bridge(lm, ids, config, progress) -> list[int]:
    if config.repetition_penalty != 1.0 or config.top_k or config.top_p < 1.0:
        raise ValueError("the 'bridge' path has no repetition penalty, top-k or top-p; use path 'hf'")
    kwargs = dict(max_new_tokens=config.max_new_tokens, do_sample=config.do_sample, use_past_kv_cache=True,
                  stop_at_eos=config.stop_at_eos, verbose=False, return_type="tokens")
    if config.do_sample:
        kwargs.update(temperature=config.temperature)
    out = lm.model.generate(ids, **kwargs)
    if progress:
        report(progress, 1.0, f"token {config.max_new_tokens} of {config.max_new_tokens}")
    return _trim_eos(lm, out[0, ids.shape[1]:].tolist(), config)


def _run_tl(lm, ids, config, progress) -> list[int]:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    model = lm.model
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, ids.shape[0])
    logits = model(ids, past_kv_cache=cache)
    new: list[int] = []
    seen = ids[0].tolist()
    for step in range(config.max_new_tokens):
        nxt = _pick(_penalise(logits[0, -1], seen, config.repetition_penalty), config)
        seen.append(nxt)
        new.append(nxt)
        if progress:
            report(progress, (step + 1) / config.max_new_tokens, f"token {step + 1} of {config.max_new_tokens}")
        if config.stop_at_eos and nxt in _eos_ids(lm):
            break
        if step + 1 < config.max_new_tokens:
            logits = model(torch.tensor([[nxt]], device=ids.device), past_kv_cache=cache)
    return new


def _penalise(logits: torch.Tensor, seen: Sequence[int], penalty: float) -> torch.Tensor:
    """transformers' repetition penalty: divide positive logits of seen tokens by it, multiply negative ones."""
    if penalty == 1.0:
        return logits
    logits = logits.float().clone()
    idx = torch.as_tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)
    picked = logits[idx]
    logits[idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def _pick(logits: torch.Tensor, config: GenerationConfig) -> int:
    if not config.do_sample:
        return int(logits.argmax())
    logits = logits.float() / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        order = torch.argsort(logits, descending=True)
        probs = torch.softmax(logits[order], -1)
        drop = probs.cumsum(-1) - probs >= config.top_p  # keep the smallest set whose mass reaches top_p
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, -1)
    return int(torch.multinomial(probs, 1))


def _trim_eos(lm, new: Sequence[int], config) -> list[int]:
    new = list(new)
    if config.stop_at_eos:
        eos = _eos_ids(lm) | {int(t) for t in _as_list(getattr(lm.tokenizer, "eos_token_id", None))}
        for i, t in enumerate(new):
            if t in eos:
                return new[: i + 1]
    return new


def _as_list(x) -> list:
    return [] if x is None else (list(x) if isinstance(x, (list, tuple)) else [x])


_RUNNERS = {"hf": _run_hf, "bridge": _run_bridge, "tl": _run_tl}
