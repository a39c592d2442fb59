"""Extraction through nnsight: local Hugging Face models (any accelerate placement, CPU
or disk offload included) and, with ``remote=True``, models on NDIF that no local
machine holds (optional extra ``remote``: ``pip install 'repscope[remote]'``).

RepScope hook names map to module paths of the HF model:

* ``blocks.L.hook_resid_post`` -> output of decoder layer L (``model.layers.L``,
  ``transformer.h.L``, ``gpt_neox.layers.L``: the first ModuleList as long as the
  model has layers);
* ``blocks.L.hook_resid_pre``  -> that layer's input (``hidden_states``);
* ``ln_final.hook_normalized`` -> output of the final norm.

Texts are tokenised as ``LoadedModel.tokenize`` does (right padding, the tokenizer's
BOS) and pooled by ``analysis.activations.pool``, so the result is the
:class:`ActivationSet` ``extract`` returns; analyses then run locally on it.
Remote runs need ``NDIF_API_KEY`` (or ``api_key=``) and the network; without either
they fail within seconds with :class:`NnsightError`.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlparse

import numpy as np

from analysis.activations import POOLINGS, ActivationSet, assemble, pool
from analysis.hub import connect_error
from analysis.progress import Progress, report

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm")
HOOK_FORMS = "blocks.L.hook_resid_post, blocks.L.hook_resid_pre, ln_final.hook_normalized"


class NnsightError(RuntimeError):
    """The nnsight backend cannot run (extra not installed, no key, offline, unknown hook)."""


def layers_path(hf_model) -> tuple[str, int]:
    """Dotted path of the decoder-layer ModuleList and its length."""
    import torch

    cfg = getattr(hf_model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for name, module in hf_model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return name, len(module)
    raise NnsightError(f"{type(hf_model).__name__}: no ModuleList of {n} decoder layers found")


def module_path(hook_name: str, hf_model) -> tuple[str, str]:
    """``(module path, "input" | "output")`` of a RepScope hook name in ``hf_model``."""
    layers, n = layers_path(hf_model)
    m = _HOOK_RE.match(hook_name)
    if m:
        layer = int(m.group(1))
        if not 0 <= layer < n:
            raise NnsightError(f"hook {hook_name!r}: layers are 0..{n - 1}")
        return f"{layers}.{layer}", "input" if m.group(2) == "pre" else "output"
    if hook_name == "ln_final.hook_normalized":
        names = dict(hf_model.named_modules())
        for path in FINAL_NORMS:
            if path in names:
                return path, "output"
        raise NnsightError(f"{type(hf_model).__name__}: no final norm among {FINAL_NORMS}")
    raise NnsightError(f"hook {hook_name!r}: the nnsight backend maps {HOOK_FORMS}")


def _order(hook_name: str, n_layers: int) -> tuple[int, int]:
    m = _HOOK_RE.match(hook_name)
    if m:  # nnsight wants values in execution order: a layer's input before its output
        return int(m.group(1)), 0 if m.group(2) == "pre" else 1
    return n_layers, 0


def check_remote(api_key: str | None = None, host: str | None = None, timeout: float = 3.0) -> tuple[str, str]:
    """``(key, host)`` for a remote run, or :class:`NnsightError` naming what is missing."""
    from nnsight import CONFIG

    key = api_key or os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY
    if not key:
        raise NnsightError(
            "remote=True needs an NDIF API key: set NDIF_API_KEY (get one at the NDIF website) "
            "or pass api_key=; without one, run the model locally (remote=False)"
        )
    host = host or os.environ.get("NDIF_HOST") or CONFIG.API.HOST
    url = urlparse(host if "://" in host else f"https://{host}")
    port = url.port or (443 if url.scheme == "https" else 80)
    err = connect_error(url.hostname, port, timeout)
    if err is not None:
        raise NnsightError(f"NDIF host {host} is unreachable ({err}); remote runs need the network")
    return key, host


def wrap(model: Any, tokenizer=None, **kwargs):
    """An nnsight ``TransformersModel`` around an HF model object, a folder or a hub id.

    ``kwargs`` go to ``from_pretrained`` (``device_map``, ``max_memory``, ``offload_folder``,
    ``dtype``) when ``model`` is a name; a hub id with ``remote=True`` loads only its config.
    """
    try:
        from nnsight import TransformersModel
    except ImportError:
        raise NnsightError("the nnsight backend needs nnsight: pip install 'repscope[remote]'") from None
    if isinstance(model, str):
        kwargs.setdefault("task", "text-generation")  # offline, transformers cannot infer it
    return TransformersModel(model, tokenizer=tokenizer, **kwargs)


def extract_nnsight(
    model: Any, texts: list[str], hook_names: list[str], *, pooling: str = "last", batch_size: int = 16,
    tokenizer=None, remote: bool = False, api_key: str | None = None, host: str | None = None,
    progress: Progress | None = None, **load_kwargs,
) -> ActivationSet:
    """Activations of ``texts`` at ``hook_names`` through an nnsight trace (see the module doc).

    ``model``: an nnsight model, an HF model object, a local folder or a hub id.
    """
    import torch

    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: valid poolings are {POOLINGS}")
    if not texts or not hook_names:
        raise ValueError("extract_nnsight needs texts and hook names")
    if remote:
        api_key, host = check_remote(api_key, host)
    nn_model = model if hasattr(model, "trace") else wrap(model, tokenizer, **load_kwargs)
    if remote and host:
        from nnsight import CONFIG

        CONFIG.API.HOST = host
    tok = tokenizer or nn_model.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    hf = nn_model._module if hasattr(nn_model, "_module") else nn_model
    _, n_layers = layers_path(hf)
    targets = {name: module_path(name, hf) for name in hook_names}
    ordered = sorted(hook_names, key=lambda h: _order(h, n_layers))
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    order = np.argsort(lengths, kind="stable")
    pooled: dict[str, list] = {name: [None] * len(texts) for name in hook_names}
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        idx = order[start: start + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, padding_side="right")
        saved = {}
        with torch.no_grad(), nn_model.trace(
            {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
            remote=remote,
        ):
            for name in ordered:
                path, side = targets[name]
                envoy = nn_model
                for part in path.split("."):
                    envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
                value = envoy.input if side == "input" else envoy.output
                saved[name] = (value[0] if isinstance(value, tuple) else value).save()
        for name in hook_names:
            out = pool(_value(saved[name]), enc["attention_mask"], pooling)
            for j, i in enumerate(idx):
                pooled[name][i] = out[j].cpu().numpy()
        n_tokens[idx] = enc["attention_mask"].sum(1).numpy()
        report(progress, (start + len(idx)) / len(texts), f"nnsight batch {start // batch_size + 1}")
    return assemble(hook_names, pooling, pooled, n_tokens)


def _value(saved):
    """The tensor behind a saved proxy (nnsight returns plain tensors after the trace)."""
    return getattr(saved, "value", saved).detach()
