"""The plain Hugging Face model that shares a TransformerBridge's tensors.

Generation on the bridge runs through this twin (HF's own ``generate`` loop,
KV cache included); steering hooks are added to it as well as to the bridge.
One twin per loaded model, built lazily under the model's lock.
"""

from __future__ import annotations

import weakref

import torch

from analysis.models import LoadedModel

_TWINS: "weakref.WeakKeyDictionary[LoadedModel, torch.nn.Module]" = weakref.WeakKeyDictionary()


def existing_twin(lm: LoadedModel):
    return _TWINS.get(lm)


def hf_twin(lm: LoadedModel):
    """The plain HF model sharing the bridge's tensors (built once per model, under the lock)."""
    if lm.backend != "bridge" or not hasattr(lm.model, "original_model"):
        raise ValueError(f"the 'hf' path needs a TransformerBridge model; {lm.name!r} is {lm.backend!r}")
    with lm.lock:
        if lm not in _TWINS:
            _TWINS[lm] = _build_twin(lm.model.original_model)
        return _TWINS[lm]


def _build_twin(wrapped):
    """Same architecture on the meta device, then every tensor replaced by the wrapped one."""
    from transformers import AutoModelForCausalLM

    cfg = wrapped.config
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(cfg, attn_implementation=cfg._attn_implementation)
    wanted = dict(twin.named_parameters(remove_duplicate=False)) | dict(twin.named_buffers(remove_duplicate=False))
    found = {}
    for kind in ("named_parameters", "named_buffers"):
        for name, tensor in getattr(wrapped, kind)(remove_duplicate=False):
            plain = name.replace("_original_component.", "")
            if plain in wanted:
                found[plain] = tensor
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise RuntimeError(f"cannot map the bridge's tensors onto a plain HF model; missing {missing[:4]}")
    for name, tensor in found.items():
        owner, _, leaf = name.rpartition(".")
        module = twin.get_submodule(owner)
        if leaf in module._parameters:
            module._parameters[leaf] = tensor
        else:
            module._buffers[leaf] = tensor
    for module in twin.modules():  # plain tensor attributes (e.g. rotary copies) left on meta
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                src = _find_attr(wrapped, module, attr, twin)
                setattr(module, attr, src)
    twin.eval()
    twin.generation_config = wrapped.generation_config
    return twin


def _find_attr(wrapped, module, attr, twin):
    path = next(n for n, m in twin.named_modules() if m is module)
    for name, m in wrapped.named_modules():
        if name.replace("_original_component.", "").replace("._original_component", "") == path:
            value = getattr(m, attr, None)
            if isinstance(value, torch.Tensor) and not value.is_meta:
                return value
    raise RuntimeError(f"cannot find tensor attribute {path}.{attr} on the bridge's model")
