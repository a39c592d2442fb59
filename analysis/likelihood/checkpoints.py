"""DPO checkpoints in the user's workspace: ``workspace_root()/checkpoints/<name>/``.

A checkpoint is a folder with ``model.safetensors`` (the trained copy's
state dict) and ``recipe.json`` (what produced it: model name, backend, the
DPO settings, the exact pair indices and seed). Both are written into a
hidden ``.<name>.partial-*`` folder that is renamed into place, so a reader
never sees half a checkpoint.

The state dict is the module :func:`analysis.likelihood.trainable_copy`
trains: the HF model under a TransformerBridge (``lm.model.original_model``),
or the whole HookedTransformer. Tied weights (Gemma ties ``lm_head`` to the
input embedding) are stored once; the alias is recorded in the safetensors
metadata and restored on load.

Footguns:
- Loading never unpickles anything: safetensors and JSON only.
- :func:`load_checkpoint_into` refuses a checkpoint whose recipe names a
  different model or backend than the module's ``LoadedModel`` (when given),
  and any key or shape mismatch (``strict``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from analysis.paths import workspace_root

WEIGHTS_FILE = "model.safetensors"
RECIPE_FILE = "recipe.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ALIASES_KEY = "repscope_aliases"


def checkpoints_root() -> Path:
    return workspace_root() / "checkpoints"


def check_name(name: str) -> str:
    """A checkpoint name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".partial", ".old")):
        raise ValueError(
            f"checkpoint name {name!r} is not valid; use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'dpo-no-never-seed0')"
        )
    return name


def check_name_free(name: str) -> str:
    """A valid name that no saved checkpoint uses yet (check before a long run, not after)."""
    check_name(name)
    if (checkpoints_root() / name).exists():
        raise FileExistsError(f"checkpoint {name!r} already exists in {checkpoints_root()}; pick another name or delete it first")
    return name


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: Path
    recipe: dict
    size_bytes: int
    created: float  # POSIX time of the recipe file

    @property
    def model(self) -> str:
        return str(self.recipe.get("model", ""))


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Unique tensors (safetensors refuses shared storage) and ``{alias: stored name}``."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t.contiguous().cpu()
    return tensors, aliases


def save_checkpoint(state_dict: Mapping[str, torch.Tensor] | torch.nn.Module, recipe: dict, name: str,
                    *, overwrite: bool = False) -> Path:
    """Write ``state_dict`` (or a module's) and ``recipe`` as checkpoint ``name``; returns its folder."""
    from safetensors.torch import save_file

    check_name(name)
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe must be a dict (JSON object), got {type(recipe).__name__}")
    recipe_text = json.dumps(recipe, indent=2, sort_keys=True)  # fail before writing anything
    state = state_dict.state_dict() if isinstance(state_dict, torch.nn.Module) else state_dict
    root = checkpoints_root()
    final = root / name
    if final.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {name!r} already exists in {root}; pick another name or delete it first")
    root.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedupe(state)
    tmp = root / f".{name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})
        (tmp / RECIPE_FILE).write_text(recipe_text, encoding="utf-8")
        old = None
        if final.exists():
            old = root / f".{name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _info(folder: Path) -> CheckpointInfo | None:
    weights, recipe = folder / WEIGHTS_FILE, folder / RECIPE_FILE
    if not (weights.is_file() and recipe.is_file()):
        return None
    try:
        doc = json.loads(recipe.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    return CheckpointInfo(folder.name, folder, doc, weights.stat().st_size, recipe.stat().st_mtime)


def list_checkpoints(model: str | None = None) -> list[CheckpointInfo]:
    """Complete checkpoints (newest first); only those of ``model`` when given."""
    root = checkpoints_root()
    if not root.is_dir():
        return []
    found = [i for f in root.iterdir() if f.is_dir() and not f.name.startswith(".") and (i := _info(f))]
    if model is not None:
        found = [i for i in found if i.model == model]
    return sorted(found, key=lambda i: (-i.created, i.name))


def get_checkpoint(name: str) -> CheckpointInfo:
    info = _info(checkpoints_root() / check_name(name))
    if info is None:
        known = [i.name for i in list_checkpoints()]
        raise FileNotFoundError(f"no checkpoint {name!r} in {checkpoints_root()}; saved checkpoints: {known or 'none'}")
    return info


def load_checkpoint(name: str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, recipe)`` of checkpoint ``name``, tied aliases restored (sharing one tensor)."""
    from safetensors import safe_open

    info = get_checkpoint(name)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(info.path / WEIGHTS_FILE), framework="pt", device=str(device)) as f:
        aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
        for key in f.keys():
            state[key] = f.get_tensor(key)
    for alias, target in aliases.items():
        state[alias] = state[target]
    return state, info.recipe


def load_checkpoint_into(module: torch.nn.Module, name: str, *, lm=None, strict: bool = True) -> dict:
    """Copy checkpoint ``name``'s weights into ``module`` (in place, no grad); returns its recipe.

    With ``lm`` (the ``LoadedModel`` the module was copied from), a recipe
    naming another model or backend is refused before any weight is touched.
    """
    info = get_checkpoint(name)
    if lm is not None:
        want = {"model": lm.name, "backend": lm.backend}
        got = {k: info.recipe.get(k) for k in want}
        if got != want:
            raise ValueError(f"checkpoint {name!r} was trained from {got}, not from the loaded {want}; load that model first")
    state, recipe = load_checkpoint(name, device=str(next(module.parameters()).device))
    own = module.state_dict()
    if strict:
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        bad = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
        if missing or extra or bad:
            raise ValueError(
                f"checkpoint {name!r} does not fit this model: {len(missing)} missing keys {missing[:3]}, "
                f"{len(extra)} unexpected {extra[:3]}, {len(bad)} shape mismatches {sorted(bad)[:3]}"
            )
    with torch.no_grad():
        for key, value in state.items():
            if key in own:
                own[key].copy_(value.to(own[key].dtype))
    return recipe


def checkpoint_model(lm, name: str):
    """A new ``LoadedModel`` with checkpoint ``name``'s weights: a deep copy of ``lm``'s model
    (taken under its lock, hooks cleared), so every analysis can run on the trained model."""
    from analysis.likelihood.training import clear_hooks, release_captures
    from analysis.models import LoadedModel

    get_checkpoint(name)
    with lm.locked() as model:
        release_captures(model)
        twin = copy.deepcopy(model)
    clear_hooks(twin)
    twin.eval()
    target = getattr(twin, "original_model", None) or twin
    recipe = load_checkpoint_into(target, name, lm=lm)
    for p in twin.parameters():
        p.requires_grad_(False)
    return LoadedModel(
        name=f"{lm.name}+{name}", model=twin, tokenizer=lm.tokenizer, device=lm.device, backend=lm.backend,
        spec=lm.spec, load_seconds=0.0,
    ), recipe


def delete_checkpoint(name: str) -> None:
    """Remove checkpoint ``name`` (renamed away first, so a reader never sees a half-deleted one)."""
    info = get_checkpoint(name)
    gone = info.path.with_name(f".{name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(info.path, gone)
    shutil.rmtree(gone, ignore_errors=True)

