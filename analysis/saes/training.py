"""Train a small TopK residual-stream SAE offline, measure it, save it in sae-lens format.

Corpus (reproducible, offline; written to ``corpus.json`` next to the SAE):

* every text of every shipped concept set, background included
  (``assets/concepts/*.yaml``, files in sorted order);
* text the model itself writes: each of :data:`SEED_PROMPTS` is continued
  ``n_samples`` times (temperature sampling, ``torch.manual_seed(seed + i)``
  before prompt i); the generated texts are stored verbatim, so the exact
  corpus survives a change of torch version.

A seeded permutation holds out ``held_out_fraction`` of the concept texts and of
the generated texts; quality is measured only on those.

Activations are ``resid_post[layer]`` at every real token except BOS (Gemma's
BOS residual norm is hundreds of times the others and would dominate the
loss). The SAE is TopK (Gao et al. 2024): ``z = TopK(ReLU((x - b_dec) W_enc + b_enc))``,
``x_hat = z W_dec + b_dec``, trained with Adam on MSE plus the AuxK loss that
revives dead latents, on inputs scaled to mean norm sqrt(d_in); the scale is
folded into the weights before saving, so the saved SAE takes raw residuals.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from jaxtyping import Float
from torch import Tensor

from analysis.activations import extract, resid_hook
from analysis.models import LoadedModel
from analysis.atomic import write_atomic
from analysis.paths import ASSETS, workspace_root

SAES_DIR = ASSETS / "saes"  # the shipped SAEs: read-only, never a default output


def default_out_dir(model_name: str, cfg: "SAETrainConfig") -> Path:
    """Where ``repscope train-sae`` writes without ``--out``: ``workspace_root()/saes/<model>-res<layer>-<n>k``."""
    return workspace_root() / "saes" / f"{model_name}-res{cfg.layer}-{cfg.d_sae // 1024}k"
CHECK_TEXTS = 12

# Short, topic-varied openings; the model continues each one.
SEED_PROMPTS = (
    "The weather this morning",
    "In the kitchen,",
    "My favourite restaurant",
    "The doctor said",
    "Yesterday at work,",
    "The history of the city",
    "She opened the letter and",
    "To install the software,",
    "The nurse walked into the room",
    "Our teacher explained",
    "The engineer checked the bridge",
    "The price of bread",
    "He was angry because",
    "It was a wonderful day",
    "The insurance company",
    "Dear Sir or Madam,",
    "lol that movie was",
    "The river runs through",
    "In 1850, the railway",
    "The recipe calls for",
    "After the meeting, the manager",
    "The hospital bill",
    "The waiter brought",
    "On the top shelf of the library",
    "The children played",
    "Scientists have discovered",
    "The hotel room was",
    "I can't believe",
    "The government announced",
    "A good way to learn a language",
    "The cat sat",
    "Once upon a time,",
)


@dataclass(frozen=True)
class SAETrainConfig:
    """Everything that determines the trained SAE (with the model and corpus)."""

    layer: int = 6
    d_sae: int = 2048
    k: int = 32
    steps: int = 2000
    batch_size: int = 512
    lr: float = 4e-4
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_steps: int = 200
    n_samples: int = 2
    gen_tokens: int = 32
    temperature: float = 1.0
    held_out_fraction: float = 0.1
    eval_texts: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae ({self.d_sae}), got {self.k}")
        for name in ("steps", "batch_size", "d_sae", "aux_k", "dead_steps", "eval_texts"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_samples < 0 or self.gen_tokens <= 0:
            raise ValueError("n_samples must be >= 0 and gen_tokens > 0")
        if not 0 < self.held_out_fraction < 0.5:
            raise ValueError(f"held_out_fraction must be in (0, 0.5), got {self.held_out_fraction}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("lr and temperature must be positive")


@dataclass(frozen=True)
class Corpus:
    train: tuple[str, ...]
    held_out: tuple[str, ...]
    generated: tuple[str, ...]
    concept_files: tuple[str, ...]
    generation: dict

    def quality_texts(self, n: int) -> list[str]:
        """The held-out texts quality is measured on: every ``len // n``-th, ``n`` at most."""
        step = max(1, len(self.held_out) // n)
        return list(self.held_out[::step][:n])

    def to_json(self) -> dict:
        return {
            "concept_files": list(self.concept_files),
            "generation": self.generation,
            "generated": list(self.generated),
            "held_out": list(self.held_out),
            "n_train_texts": len(self.train),
        }


def shipped_texts(folder: Path = ASSETS / "concepts") -> tuple[list[str], list[str]]:
    """All texts of all shipped concept sets (background included), in file order."""
    files = sorted(folder.glob("*.yaml"))
    texts: list[str] = []
    for f in files:
        texts.extend(str(t) for t in (yaml.safe_load(f.read_text()).get("texts") or []))
    return texts, [f.name for f in files]


@torch.inference_mode()
def generate_texts(lm: LoadedModel, prompts, n_samples: int, max_new_tokens: int,
                   temperature: float, seed: int) -> list[str]:
    """``n_samples`` sampled continuations of each prompt (one seeded, left-padded batch)."""
    batch = [p for p in prompts for _ in range(n_samples)]
    torch.manual_seed(seed)
    with lm.locked() as model:
        hf = getattr(model, "original_model", None)
        if hf is not None:  # TransformerBridge: HF generate has a KV cache and unembeds one position
            enc = lm.tokenizer(batch, return_tensors="pt", padding=True, padding_side="left")
            gen = hf.generate(enc["input_ids"].to(lm.device), attention_mask=enc["attention_mask"].to(lm.device),
                              do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, pad_token_id=lm.tokenizer.pad_token_id)
        else:  # HookedTransformer (tests): same-length batches per prompt
            gen = []
            for p in prompts:
                ids, _ = lm.tokenize([p] * n_samples)
                gen.extend(model.generate(ids, max_new_tokens=max_new_tokens, do_sample=True,
                                          temperature=temperature, stop_at_eos=False, verbose=False))
    out: list[str] = []
    for row in gen:
        text = " ".join(lm.tokenizer.decode(row, skip_special_tokens=True).split())
        if text and text not in out:
            out.append(text)
    return out


def split(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded (train, held_out) split of ``texts``."""
    order = np.random.default_rng(seed).permutation(len(texts))
    n_held = max(1, int(round(fraction * len(texts))))
    held = set(order[:n_held].tolist())
    return ([t for i, t in enumerate(texts) if i not in held],
            [t for i, t in enumerate(texts) if i in held])


def _generation_key(lm: LoadedModel, cfg: SAETrainConfig) -> dict:
    return {"model": lm.fingerprint, "prompts": list(SEED_PROMPTS), "n_samples": cfg.n_samples,
            "gen_tokens": cfg.gen_tokens, "temperature": cfg.temperature, "seed": cfg.seed}


def build_corpus(lm: LoadedModel, cfg: SAETrainConfig, progress=print, reuse: Path | None = None) -> Corpus:
    """The corpus; generated texts are taken from ``reuse`` (a corpus.json) when its settings match."""
    concept, files = shipped_texts()
    concept = list(dict.fromkeys(concept))
    old = json.loads(reuse.read_text()) if reuse is not None and reuse.exists() else {}
    if old.get("generation") == _generation_key(lm, cfg):
        generated = old["generated"]
        progress(f"reusing {len(generated)} generated texts from {reuse}")
    else:
        progress(f"generating {cfg.n_samples} x {len(SEED_PROMPTS)} continuations of {cfg.gen_tokens} tokens")
        generated = generate_texts(lm, SEED_PROMPTS, cfg.n_samples, cfg.gen_tokens, cfg.temperature,
                                   cfg.seed) if cfg.n_samples else []
    tr_c, ho_c = split(concept, cfg.held_out_fraction, cfg.seed)
    tr_g, ho_g = split(generated, cfg.held_out_fraction, cfg.seed + 1) if generated else ([], [])
    return Corpus(tuple(tr_c + tr_g), tuple(ho_c + ho_g), tuple(generated), tuple(files),
                  _generation_key(lm, cfg))


def token_activations(lm: LoadedModel, texts: list[str], layer: int,
                      **kw) -> Float[Tensor, "n_tokens d_model"]:
    """``resid_post[layer]`` at every real token of ``texts`` except each text's BOS."""
    acts = extract(lm, list(texts), [resid_hook(layer)], pooling="all", **kw)
    values = acts.values[resid_hook(layer)]
    keep = np.ones(len(values), dtype=bool)
    keep[acts.offsets[:-1]] = False
    return torch.from_numpy(values[keep])


# ---------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainReport:
    seconds: float
    n_tokens: int
    scale: float
    final_fvu_train: float
    dead_fraction: float


def _topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    vals, idx = pre.topk(k, dim=-1)
    return vals.relu(), idx


def _decode_sparse(vals: Tensor, idx: Tensor, W_dec: Tensor) -> Tensor:
    # Equal to dense ``z @ W_dec`` but touches only the k active rows (~60x cheaper for k=32).
    return torch.nn.functional.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")


def train_topk_sae(acts: Float[Tensor, "n d_in"], cfg: SAETrainConfig,
                   progress: Callable[[str], None] = print) -> tuple[dict[str, Tensor], TrainReport]:
    """Train on ``acts``; returns sae-lens TopK parameters for raw (unscaled) inputs."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = acts.float()
    n, d_in = x_all.shape
    scale = math.sqrt(d_in) / float(x_all.norm(dim=-1).mean())
    x_all = x_all * scale
    W_dec = torch.randn(cfg.d_sae, d_in, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = {
        "W_dec": W_dec.clone().requires_grad_(),
        "W_enc": W_dec.T.clone().contiguous().requires_grad_(),
        "b_enc": torch.zeros(cfg.d_sae, requires_grad=True),
        "b_dec": x_all.mean(0).clone().requires_grad_(),
    }
    opt = torch.optim.Adam(params.values(), lr=cfg.lr, betas=(0.9, 0.999))
    last_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    var = float(((x_all - x_all.mean(0)) ** 2).sum(-1).mean())
    fvu = float("nan")
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, 5 * (cfg.steps - step) / cfg.steps)  # linear decay over the last 20%
        for g in opt.param_groups:
            g["lr"] = lr
        x = x_all[torch.randint(0, n, (cfg.batch_size,), generator=gen)]
        pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        vals, idx = _topk(pre, cfg.k)
        x_hat = _decode_sparse(vals, idx, params["W_dec"]) + params["b_dec"]
        err = x - x_hat
        mse = (err ** 2).sum(-1).mean()
        fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
        fired[idx[vals > 0]] = True
        last_fired = torch.where(fired, torch.zeros_like(last_fired), last_fired + 1)
        dead = last_fired > cfg.dead_steps
        loss = mse / var
        if dead.any():
            # AuxK: the dead latents' top activations should explain the residual error.
            k_aux = min(cfg.aux_k, int(dead.sum()))
            a_vals, a_idx = _topk(pre.masked_fill(~dead, -torch.inf), k_aux)
            err_hat = _decode_sparse(a_vals, a_idx, params["W_dec"])
            loss = loss + cfg.aux_coef * ((err.detach() - err_hat) ** 2).sum(-1).mean() / var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Keep decoder rows unit norm: drop the gradient along each row, then renormalise.
        with torch.no_grad():
            Wd, g = params["W_dec"], params["W_dec"].grad
            g -= (g * Wd).sum(-1, keepdim=True) * Wd
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True)
        fvu = float(mse.detach()) / var
        if step % 250 == 0 or step == cfg.steps - 1:
            progress(f"step {step:5d}  fvu {fvu:.3f}  dead {float(dead.float().mean()):.3f}")
    with torch.no_grad():
        out = {
            "W_enc": params["W_enc"].detach() * scale,
            "b_enc": params["b_enc"].detach().clone(),
            "W_dec": params["W_dec"].detach() / scale,
            "b_dec": params["b_dec"].detach() / scale,
        }
    report = TrainReport(time.perf_counter() - start, n, scale, fvu,
                         float((last_fired > cfg.dead_steps).float().mean()))
    return out, report


def build_sae(state: dict[str, Tensor], k: int, hook_name: str, model_name: str, **metadata):
    """A sae-lens ``TopKSAE`` holding ``state`` (W_enc, b_enc, W_dec, b_dec)."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_sae, d_in = state["W_dec"].shape
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                        metadata=SAEMetadata(hook_name=hook_name, model_name=model_name,
                                             prepend_bos=True, **metadata))
    sae = TopKSAE(cfg)
    sae.load_state_dict({name: t.float().contiguous() for name, t in state.items()})
    return sae.eval()


def train_and_save(lm: LoadedModel, cfg: SAETrainConfig, out_dir: Path,
                   progress: Callable[[str], None] = print) -> dict:
    """The whole ``repscope train-sae`` run; returns the quality dict also written to disk."""
    from analysis.saes.quality import measure_quality

    if cfg.layer >= lm.n_layers:
        raise ValueError(f"layer {cfg.layer} is out of range: {lm.name} has layers 0..{lm.n_layers - 1}")
    t0 = time.perf_counter()
    corpus = build_corpus(lm, cfg, progress, reuse=out_dir / "corpus.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "corpus.json", json.dumps(corpus.to_json(), indent=1) + "\n")
    progress(f"corpus: {len(corpus.train)} train texts, {len(corpus.held_out)} held out "
             f"({len(corpus.generated)} generated) in {time.perf_counter() - t0:.0f}s")
    acts = token_activations(lm, list(corpus.train), cfg.layer)
    progress(f"{acts.shape[0]} training tokens")
    state, report = train_topk_sae(acts, cfg, progress)
    hook = resid_hook(cfg.layer)
    sae = build_sae(state, cfg.k, hook, lm.name, hook_layer=cfg.layer,
                    repscope_train_config=asdict(cfg),
                    training_corpus="assets/concepts/*.yaml texts + model-generated texts (corpus.json)")
    progress(f"trained in {report.seconds:.0f}s; measuring quality on held-out texts")
    texts = corpus.quality_texts(cfg.eval_texts)
    quality = measure_quality(lm, sae, texts, cfg.layer)
    # The first CHECK_TEXTS of them again, so a test can recompute exact numbers quickly.
    quality["check_subset"] = measure_quality(lm, sae, texts[:CHECK_TEXTS], cfg.layer)
    quality.update({"train_seconds": round(report.seconds, 1), "train_tokens": report.n_tokens,
                    "dead_fraction_train": round(report.dead_fraction, 4),
                    "total_seconds": round(time.perf_counter() - t0, 1)})
    sae.save_model(out_dir)
    write_atomic(out_dir / "quality.json", json.dumps(quality, indent=2) + "\n")
    write_atomic(out_dir / "README.md", readme(lm.name, cfg, corpus, quality))
    return quality


def readme(model_name: str, cfg: SAETrainConfig, corpus: Corpus, q: dict) -> str:
    """The README.md shipped next to the SAE: what it is, how it was made, how good it is."""
    args = (f"--layer {cfg.layer} --d-sae {cfg.d_sae} --k {cfg.k} --steps {cfg.steps} "
            f"--batch-size {cfg.batch_size} --lr {cfg.lr} --n-samples {cfg.n_samples} "
            f"--gen-tokens {cfg.gen_tokens} --seed {cfg.seed}")
    return f"""# TopK SAE: {model_name}, `{q['hook_name']}`, {cfg.d_sae} latents, k={cfg.k}

sae-lens format (`cfg.json` + `sae_weights.safetensors`, architecture `topk`, float32):
`sae_lens.SAE.load_from_disk(folder)` loads it; inputs are raw residuals (no normalisation).

Made with `repscope train-sae {args}` ({q.get('train_seconds', '?')} s of training,
{q.get('train_tokens', '?')} tokens, on a shared 2-core CPU).

## Corpus (all offline, reproducible)
- every text of the shipped concept sets, background included: {', '.join(corpus.concept_files)};
- {len(corpus.generated)} texts the model wrote itself: each of the {len(SEED_PROMPTS)} seed prompts in
  `analysis/sae_training.py` continued {cfg.n_samples} times, {cfg.gen_tokens} new tokens, temperature
  {cfg.temperature}, no top-k/top-p, `torch.manual_seed({cfg.seed})`, one left-padded batch. They are stored
  verbatim in `corpus.json` (`generated`), which a re-run reuses.
- A seeded split (seed {cfg.seed}) holds out {cfg.held_out_fraction:.0%} of each part (`corpus.json`, `held_out`).
  Tokens: `resid_post` at every real token except BOS (Gemma's BOS norm is huge).

## Quality on held-out text (`quality.json`, {q['n_texts']} texts, {q['n_tokens']} tokens)
| FVU | mean L0 | LM loss clean | SAE spliced | resid zeroed | loss recovered |
|---|---|---|---|---|---|
| {q['fvu']:.3f} | {q['mean_l0']:.1f} | {q['ce_clean']:.3f} | {q['ce_spliced']:.3f} | {q['ce_zero_ablated']:.3f} | {100 * q['loss_recovered']:.1f}% |

Spliced / zeroed: `resid_post[{cfg.layer}]` replaced at every position except BOS (analysis/sae_quality.py).
Small corpus: the latents describe these short sentences, not the model's full distribution.
"""
