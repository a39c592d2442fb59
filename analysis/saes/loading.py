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
        except (OSError, ValueError):
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

_MAX_HEADER_BYTES = 100_000_000
_MAX_DEPTH = 8  # cfg.json nests metadata -> train config; a safetensors header is 3 deep
_BOOL_KEYS = ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm")
_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_K_ARCHITECTURES = ("topk", "abstopk")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json(raw: bytes, what: str):
    """JSON of ``raw`` raising only SAELoadError (depth bounded before parsing, no recursion errors)."""
    from analysis.uploads import UploadError, loads_json

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SAELoadError(f"{what} is not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    try:
        return loads_json(text, what, max_depth=_MAX_DEPTH)
    except UploadError as err:
        raise SAELoadError(str(err)) from None


def validate_cfg(data: bytes) -> dict:
    """Parse and check a sae-lens cfg.json; returns the dict. Raises only SAELoadError."""
    cfg = _json(bytes(data), CFG_FILE)
    if not isinstance(cfg, dict):
        raise SAELoadError(f"{CFG_FILE} must hold a JSON object with d_in, d_sae and architecture, "
                           f"not a JSON {type(cfg).__name__}; upload the cfg.json sae-lens writes")
    for key in ("d_in", "d_sae"):
        if not _is_int(cfg.get(key)) or not 0 < cfg[key] <= 2**24:
            raise SAELoadError(f"{CFG_FILE}: {key!r} must be a positive integer (at most 2**24), got {cfg.get(key)!r}")
    arch = cfg.get("architecture", "standard")
    if not isinstance(arch, str):
        raise SAELoadError(f"{CFG_FILE}: 'architecture' must be a string such as 'topk', got {arch!r}")
    from sae_lens.registry import SAE_CLASS_REGISTRY

    if arch not in SAE_CLASS_REGISTRY:
        raise SAELoadError(f"{CFG_FILE}: architecture {arch!r} is unknown; valid: {sorted(SAE_CLASS_REGISTRY)}")
    if arch in _K_ARCHITECTURES or "k" in cfg:
        k = cfg.get("k")
        if not _is_int(k) or not 1 <= k <= cfg["d_sae"]:
            raise SAELoadError(f"{CFG_FILE}: 'k' (active latents per token) must be an integer in "
                               f"1..d_sae={cfg['d_sae']}, got {k!r}")
    for key in _BOOL_KEYS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise SAELoadError(f"{CFG_FILE}: {key!r} must be true or false, got {cfg[key]!r}")
    dtype = cfg.get("dtype", "float32")
    if not isinstance(dtype, str) or dtype.removeprefix("torch.") not in _DTYPE_NAMES:
        raise SAELoadError(f"{CFG_FILE}: 'dtype' must be one of {list(_DTYPE_NAMES)}, got {dtype!r}")
    if "device" in cfg and not isinstance(cfg["device"], str):
        raise SAELoadError(f"{CFG_FILE}: 'device' must be a string such as 'cpu', got {cfg['device']!r}")
    meta = cfg.get("metadata", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise SAELoadError(f"{CFG_FILE}: 'metadata' must be a JSON object, got a JSON {type(meta).__name__}")
    for where, block in (("", cfg), ("metadata.", meta)):
        for key in ("hook_name", "model_name"):
            value = block.get(key)
            if value is not None and not isinstance(value, str):
                raise SAELoadError(f"{CFG_FILE}: '{where}{key}' must be a string such as "
                                   f"'blocks.6.hook_resid_post', got {value!r}")
    if "prepend_bos" in meta and not isinstance(meta["prepend_bos"], bool):
        raise SAELoadError(f"{CFG_FILE}: 'metadata.prepend_bos' must be true or false, got {meta['prepend_bos']!r}")
    return cfg


def header_length(data: bytes, total: int) -> int:
    """The 8-byte little-endian header length of a safetensors file, checked against its size."""
    if len(data) < 8 or total < 8:
        raise SAELoadError(f"{WEIGHTS_FILE} is {total} bytes: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if not 2 <= n <= min(total - 8, _MAX_HEADER_BYTES):
        # Only now look at the magic bytes: a valid length may start with 0x80 or "PK".
        looks = bytes(data[:2]) == b"PK" or bytes(data[:1]) == b"\x80"
        why = ("it looks like a pickle / torch.save file; only safetensors is accepted (save with sae-lens "
               "`save_model` or safetensors.torch.save_file)") if looks else "not a safetensors file (truncated?)"
        raise SAELoadError(f"{WEIGHTS_FILE}: header length {n} does not fit the file of {total} bytes: {why}")
    return n


def safetensors_header(data: bytes, total_len: int | None = None) -> dict[str, dict]:
    """The tensor table of a safetensors file, checked against its length (no pickle, ever).

    ``data`` is the file, or only its start (8 + header bytes) with ``total_len`` its size.
    Raises only SAELoadError.
    """
    total = len(data) if total_len is None else total_len
    n = header_length(data, total)
    if len(data) < 8 + n:
        raise SAELoadError(f"{WEIGHTS_FILE}: the header ({n} bytes) is cut off; the upload is incomplete")
    header = _json(bytes(data[8: 8 + n]), f"{WEIGHTS_FILE} header")
    if not isinstance(header, dict):
        raise SAELoadError(f"{WEIGHTS_FILE}: the header must be a JSON object of tensors, "
                           f"not a JSON {type(header).__name__}")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise SAELoadError(f"{WEIGHTS_FILE}: '__metadata__' must map names to strings")
    body = total - 8 - n
    for name, info in header.items():
        where = f"{WEIGHTS_FILE}: tensor {name!r}"
        if not isinstance(info, dict):
            raise SAELoadError(f"{where}: entry must be an object with dtype, shape and data_offsets")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise SAELoadError(f"{where} has dtype {dtype!r}; valid: {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise SAELoadError(f"{where}: 'shape' must be a list of non-negative integers, got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise SAELoadError(f"{where}: 'data_offsets' must be two integers [start, end], got {offsets!r}")
        start, end = offsets
        if not 0 <= start <= end <= body:
            raise SAELoadError(f"{where} lies outside the file (offsets {offsets}, data is {body} bytes; "
                               "truncated upload?)")
        if end - start != int(np.prod(shape, dtype=object)) * _ITEMSIZE[dtype]:
            raise SAELoadError(f"{where}: offsets span {end - start} bytes but shape {shape} of {dtype} needs "
                               f"{int(np.prod(shape, dtype=object)) * _ITEMSIZE[dtype]}")
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
        head += f.read(header_length(head, size))
    check_shapes(cfg, safetensors_header(head, size))
    try:
        sae = SAE.load_from_disk(str(folder), device=device)
    except Exception as err:  # noqa: BLE001 - any sae-lens failure becomes one clear message
        raise SAELoadError(f"sae-lens could not load {folder}: {type(err).__name__}: {err}") from err
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or ""
    quality = _json((folder / "quality.json").read_bytes(), "quality.json") if (folder / "quality.json").is_file() else None
    if quality is not None and not isinstance(quality, dict):
        raise SAELoadError(f"{folder / 'quality.json'} must hold a JSON object of quality numbers")
    readme = (folder / "README.md").read_text(errors="replace") if (folder / "README.md").is_file() else ""
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
