"""Load sparse autoencoders (sae-lens objects) from four sources, and encode with them.

``load_sae(source)``:

* a shipped SAE by name (``assets/saes/<name>/``; :func:`shipped_saes` lists them);
* a local sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``);
* a sae-lens pretrained release ``release:sae_id`` (needs the hub the first
  time; offline it fails within seconds, naming the shipped SAEs).

``load_sae_upload(cfg_bytes, weights_bytes)`` loads an uploaded pair of those two
files. Every folder and upload is validated first: JSON config, safetensors
header, tensor shapes against ``d_in``/``d_sae``. Nothing is ever unpickled;
safetensors holds raw arrays only.
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from analysis.hub import is_cached, unreachable_reason
from analysis.models import CATALOGUE
from analysis.paths import ASSETS

SAES_DIR = ASSETS / "saes"
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
MAX_UPLOAD_BYTES = 500_000_000
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_DTYPES = {"F32", "F16", "BF16", "F64"}


class SAELoadError(ValueError):
    """An SAE could not be loaded; the message says why and what is valid."""


@dataclass(frozen=True, eq=False)
class LoadedSAE:
    """A sae-lens SAE plus where it came from and where it reads the model."""

    sae: Any
    name: str
    source: str  # shipped | folder | upload | pretrained
    hook_name: str
    layer: int | None
    model_name: str | None = None
    quality: dict | None = None
    readme: str = ""

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "architecture": self.sae.cfg.architecture(),
            "hook_name": self.hook_name, "layer": self.layer, "model": self.model_name,
            "d_in": self.d_in, "d_sae": self.d_sae, "k": getattr(self.sae.cfg, "k", None),
            "quality": self.quality,
        }


def shipped_saes() -> dict[str, dict]:
    """Shipped SAE name -> its cfg.json (metadata included)."""
    out = {}
    for cfg in sorted(SAES_DIR.glob(f"*/{CFG_FILE}")):
        try:
            out[cfg.parent.name] = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def shipped_for(model_name: str, layer: int | None = None) -> list[str]:
    """Shipped SAEs trained on ``model_name`` (at ``layer`` when given)."""
    names = []
    for name, cfg in shipped_saes().items():
        meta = cfg.get("metadata") or {}
        if meta.get("model_name") == model_name and (layer is None or _layer(meta.get("hook_name")) == layer):
            names.append(name)
    return names


def _layer(hook_name: str | None) -> int | None:
    m = _BLOCK_RE.match(hook_name or "")
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- validation

def validate_cfg(data: bytes) -> dict:
    """Parse and check a sae-lens cfg.json; returns the dict."""
    try:
        cfg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAELoadError(f"{CFG_FILE} is not valid UTF-8 JSON ({err}); upload the cfg.json sae-lens writes") from err
    if not isinstance(cfg, dict):
        raise SAELoadError(f"{CFG_FILE} must hold a JSON object with d_in, d_sae and architecture")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise SAELoadError(f"{CFG_FILE}: {key!r} must be a positive integer, got {cfg.get(key)!r}")
    from sae_lens.registry import SAE_CLASS_REGISTRY

    arch = cfg.get("architecture", "standard")
    if arch not in SAE_CLASS_REGISTRY:
        raise SAELoadError(f"{CFG_FILE}: architecture {arch!r} is unknown; valid: {sorted(SAE_CLASS_REGISTRY)}")
    return cfg


def safetensors_header(data: bytes, total_len: int | None = None) -> dict[str, dict]:
    """The tensor table of a safetensors file, checked against its length (no pickle, ever).

    ``data`` is the file, or only its start (8 + header bytes) with ``total_len`` its size.
    """
    total = len(data) if total_len is None else total_len
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise SAELoadError(f"{WEIGHTS_FILE} looks like a pickle / torch.save file; only safetensors is accepted "
                           "(save with sae-lens `save_model` or safetensors.torch.save_file)")
    if len(data) < 8:
        raise SAELoadError(f"{WEIGHTS_FILE} is {len(data)} bytes: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data), total) - 8 or n > 100_000_000:
        raise SAELoadError(f"{WEIGHTS_FILE}: header length {n} does not fit the file; not a safetensors file")
    try:
        header = json.loads(data[8: 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAELoadError(f"{WEIGHTS_FILE}: unreadable safetensors header ({err})") from err
    header.pop("__metadata__", None)
    body = total - 8 - n
    for name, info in header.items():
        try:
            start, end = info["data_offsets"]
            shape, dtype = list(info["shape"]), info["dtype"]
        except (KeyError, TypeError, ValueError) as err:
            raise SAELoadError(f"{WEIGHTS_FILE}: malformed entry for tensor {name!r}") from err
        if dtype not in _DTYPES:
            raise SAELoadError(f"{WEIGHTS_FILE}: tensor {name!r} has dtype {dtype}; valid: {sorted(_DTYPES)}")
        if not 0 <= start <= end <= body:
            raise SAELoadError(f"{WEIGHTS_FILE}: tensor {name!r} lies outside the file (truncated upload?)")
    return header


def check_shapes(cfg: dict, header: dict[str, dict]) -> None:
    """W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_dec (d_in,), b_enc (d_sae,) when present."""
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    expected = {"W_enc": [d_in, d_sae], "W_dec": [d_sae, d_in], "b_dec": [d_in], "b_enc": [d_sae]}
    missing = [k for k in ("W_enc", "W_dec", "b_dec") if k not in header]
    if missing:
        raise SAELoadError(f"{WEIGHTS_FILE} lacks {missing}; it has {sorted(header)[:8]}")
    for name, shape in expected.items():
        if name in header and list(header[name]["shape"]) != shape:
            raise SAELoadError(f"{WEIGHTS_FILE}: {name} has shape {header[name]['shape']}, but cfg.json "
                               f"(d_in={d_in}, d_sae={d_sae}) needs {shape}")


# ---------------------------------------------------------------- loading

def load_sae(source: str, device: str = "cpu") -> LoadedSAE:
    """A shipped name, a local folder, or ``release:sae_id`` (see module docstring)."""
    source = str(source).strip()
    shipped = shipped_saes()
    if source in shipped:
        return _load_folder(SAES_DIR / source, source, "shipped", device)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path, path.name, "folder", device)
    if ":" in source:
        return _load_pretrained(*source.split(":", 1), device=device)
    raise SAELoadError(f"no SAE {source!r}: give a shipped SAE ({', '.join(shipped) or 'none'}), "
                       f"a folder with {CFG_FILE} + {WEIGHTS_FILE}, or a sae-lens 'release:sae_id'")


def load_sae_upload(cfg_bytes: bytes, weights_bytes: bytes, name: str = "upload",
                    device: str = "cpu") -> LoadedSAE:
    """Validate an uploaded cfg.json + sae_weights.safetensors and load them."""
    if len(weights_bytes) > MAX_UPLOAD_BYTES:
        raise SAELoadError(f"{WEIGHTS_FILE} is {len(weights_bytes) / 1e6:.0f} MB; the limit is "
                           f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB (load large SAEs from a local folder)")
    cfg = validate_cfg(cfg_bytes)
    check_shapes(cfg, safetensors_header(weights_bytes))
    with tempfile.TemporaryDirectory(prefix="repscope-sae-") as tmp:
        Path(tmp, CFG_FILE).write_bytes(cfg_bytes)
        Path(tmp, WEIGHTS_FILE).write_bytes(weights_bytes)
        return _load_folder(Path(tmp), name, "upload", device)


def _load_folder(folder: Path, name: str, source: str, device: str) -> LoadedSAE:
    from sae_lens import SAE

    cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise SAELoadError(f"{folder} has no {p.name}; a sae-lens folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    cfg = validate_cfg(cfg_path.read_bytes())
    size = w_path.stat().st_size
    with w_path.open("rb") as f:  # only the header: local SAEs can be gigabytes
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        head += f.read(n) if n <= min(100_000_000, size - 8) else b""
    check_shapes(cfg, safetensors_header(head, size))
    try:
        sae = SAE.load_from_disk(str(folder), device=device)
    except Exception as err:  # noqa: BLE001 - any sae-lens failure becomes one clear message
        raise SAELoadError(f"sae-lens could not load {folder}: {type(err).__name__}: {err}") from err
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or ""
    quality = json.loads((folder / "quality.json").read_text()) if (folder / "quality.json").is_file() else None
    readme = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
    return LoadedSAE(sae.eval(), name, source, hook, _layer(hook), meta.get("model_name"), quality, readme)



def _release_entry(release: str) -> dict | None:
    """One release's entry of sae-lens' pretrained_saes.yaml.

    Only that block is parsed: the whole file takes ~10 s to parse on a busy
    CPU, and the offline failure must come within seconds.
    """
    import importlib.util

    import yaml

    # find_spec locates the package without importing it (importing sae-lens takes seconds).
    text = (Path(importlib.util.find_spec("sae_lens").origin).parent / "pretrained_saes.yaml").read_text()
    m = re.search(rf"^{re.escape(release)}:[ \t]*\n(?:(?:[ \t].*)?\n)*", text, re.M)
    return yaml.safe_load(m.group(0))[release] if m else None


def _load_pretrained(release: str, sae_id: str, device: str = "cpu") -> LoadedSAE:
    from sae_lens import SAE

    known = sorted({r for s in CATALOGUE.values() for r in s.sae_releases})
    entry = _release_entry(release)
    if entry is None:
        raise SAELoadError(f"unknown sae-lens release {release!r}; releases for catalogue models: {known}")
    paths = {str(s["id"]): str(s["path"]) for s in entry.get("saes") or []}
    if sae_id not in paths:
        ids = list(paths)
        raise SAELoadError(f"ID {sae_id!r} not found in release {release!r}; valid IDs include {ids[:8]}"
                           f"{' ...' if len(ids) > 8 else ''}")
    cached = is_cached(entry["repo_id"], f"{paths[sae_id]}/{CFG_FILE}")
    why = None if cached else unreachable_reason()
    if why:
        raise SAELoadError(f"cannot load SAE release {release!r} (id {sae_id!r}): the Hugging Face hub is "
                           f"unreachable: {why}. Shipped SAEs that work offline: "
                           f"{', '.join(shipped_saes()) or 'none'}; a local sae-lens folder or an upload also works.")
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as err:  # noqa: BLE001
        raise SAELoadError(f"sae-lens could not load {release}:{sae_id}: {type(err).__name__}: {err}") from err
    hook = sae.cfg.metadata.hook_name or ""
    return LoadedSAE(sae.eval(), f"{release}:{sae_id}", "pretrained", hook, _layer(hook), entry.get("model"))


# ---------------------------------------------------------------- encoding

@torch.inference_mode()
def encode(sae, acts: Float[Tensor, "... d_in"] | np.ndarray, chunk: int = 4096) -> Float[Tensor, "... d_sae"]:
    """Latent codes (float32) of activations, in chunks to bound memory."""
    x = torch.as_tensor(acts)
    flat = x.reshape(-1, x.shape[-1])
    out = [sae.encode(flat[i: i + chunk].to(sae.dtype)).float() for i in range(0, len(flat), chunk)]
    codes = torch.cat(out) if out else torch.zeros(0, sae.cfg.d_sae)
    return codes.reshape(*x.shape[:-1], -1)


@torch.inference_mode()
def decode(sae, codes: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
    return sae.decode(torch.as_tensor(codes).to(sae.dtype)).float()
