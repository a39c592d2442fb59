"""Will it fit? The memory a model needs, estimated before loading, against what is free.

need = parameters x bytes per parameter (the load dtype)
     + activations of the largest planned batch (b texts x s tokens):
       b*s*16*d_model*bytes          one block's working set (residual, norms, q/k/v/o,
                                     an MLP of ~4 d_model, each at the load dtype)
     + b*(d_model/64)*s^2*bytes      eager attention probabilities (heads ~ d_model/64)
     + b*s*vocab*4                   float32 logits (0 when the unembedding is skipped)
     + b*s*d_model*4*n_hooks         the cached hook points, float32.

It is an estimate (no allocator fragmentation, no CUDA context of ~0.5 GB), so a
10 % margin is kept free. Free memory: ``torch.cuda.mem_get_info`` per GPU,
``psutil.virtual_memory().available`` for the CPU, each capped by ``max_memory``.
A refusal names what would fit: a narrower dtype, a device map over the GPUs
there are, the CPU, or a smaller catalogue model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from analysis.models import CATALOGUE, DEVICE_MAPS, SPLIT_PREFIX, ModelSpec, pick_dtype

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MARGIN = 0.9  # use at most 90 % of what is free
GB = 1e9


class InsufficientMemory(ValueError):
    """The model (plus its largest batch) does not fit where it was asked to go."""


@dataclass(frozen=True)
class MemoryNeed:
    parameters: int
    dtype: str
    weight_bytes: int
    activation_bytes: int
    batch_size: int
    seq_len: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """The verdict: ``fits``, the devices counted and their usable bytes, and the message."""

    need: MemoryNeed
    devices: dict[str, int]
    fits: bool
    message: str


def activation_bytes(*, batch_size: int, seq_len: int, d_model: int, vocab_size: int, dtype_bytes: int,
                     n_hooks: int = 1, unembed: bool = True) -> int:
    """Peak activation memory of one forward pass (see the module docstring)."""
    b, s = int(batch_size), int(seq_len)
    heads = max(1, d_model // 64)
    block = b * s * 16 * d_model * dtype_bytes
    attn = b * heads * s * s * dtype_bytes
    logits = b * s * vocab_size * 4 if unembed else 0
    hooks = b * s * d_model * 4 * max(1, n_hooks)
    return int(block + attn + logits + hooks)


def estimate(spec: ModelSpec, dtype: str, *, batch_size: int = 16, seq_len: int = 256, n_hooks: int = 1,
             unembed: bool = True) -> MemoryNeed:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: valid dtypes are {', '.join(DTYPE_BYTES)}")
    if spec.parameters <= 0:
        raise ValueError(f"model {spec.key!r} has no parameter count in the catalogue; cannot estimate")
    nbytes = DTYPE_BYTES[dtype]
    acts = activation_bytes(batch_size=batch_size, seq_len=seq_len, d_model=spec.d_model,
                            vocab_size=spec.vocab_size, dtype_bytes=nbytes, n_hooks=n_hooks, unembed=unembed)
    return MemoryNeed(spec.parameters, dtype, spec.parameters * nbytes, acts, batch_size, seq_len)


def free_memory() -> dict[str, int]:
    """Bytes free now: ``cuda:i`` for each visible GPU, and ``cpu`` (available RAM)."""
    import psutil
    import torch

    free = {}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free[f"cuda:{i}"] = int(torch.cuda.mem_get_info(i)[0])
    free["cpu"] = int(psutil.virtual_memory().available)
    return free


_SIZE_RE = re.compile(r"^\s*([0-9.]+)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def size_bytes(value) -> int:
    """``20GiB``, ``500MB``, ``1e9`` or an int -> bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"memory size {value!r}: write e.g. 20GiB, 500MB or a byte count")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def _device_key(dev) -> str:
    if isinstance(dev, int):
        return f"cuda:{dev}"
    dev = str(dev)
    return "cuda:0" if dev == "cuda" else dev


def usable(free: dict[str, int], *, device: str | None, device_map=None, max_memory: dict | None = None,
           n_devices: int | None = None) -> dict[str, int]:
    """The devices a placement would use and the bytes each may take (free, capped, with the margin).

    transformer-lens 3.9 refuses maps that mix CPU and GPU, so "auto"/"balanced"
    count the GPUs only when there are any, else the CPU.
    """
    caps = {_device_key(k): size_bytes(v) for k, v in (max_memory or {}).items()}
    gpus = sorted(k for k in free if k.startswith("cuda"))
    if isinstance(device_map, dict):
        names = sorted({_device_key(v) for v in device_map.values()} - {"disk", "meta"})
    elif device_map in DEVICE_MAPS or (n_devices or 1) > 1:
        names = gpus[: n_devices] if n_devices else gpus
        if max_memory:
            names = [g for g in names if g in caps] or names
        names = names or ["cpu"]
    else:
        names = [_device_key(device or "cpu")]
    return {n: int(min(free.get(n, 0), caps.get(n, free.get(n, 0))) * MARGIN) for n in names}


def _fmt(nbytes: float) -> str:
    return f"{nbytes / GB:.1f} GB"


def plan(spec: ModelSpec, *, device: str | None, dtype: str | None = None, device_map=None,
         max_memory: dict | None = None, n_devices: int | None = None, batch_size: int = 16,
         seq_len: int = 256, n_hooks: int = 1, free: dict[str, int] | None = None) -> MemoryPlan:
    """Estimate and compare; ``free`` defaults to :func:`free_memory` (tests pass their own)."""
    free = free_memory() if free is None else dict(free)
    dev = device if device not in (None, "", "auto") else ("cuda:0" if any(k.startswith("cuda") for k in free) else "cpu")
    dtype_name = str(pick_dtype(dev, dtype)).replace("torch.", "")
    need = estimate(spec, dtype_name, batch_size=batch_size, seq_len=seq_len, n_hooks=n_hooks)
    devices = usable(free, device=dev, device_map=device_map, max_memory=max_memory, n_devices=n_devices)
    have = sum(devices.values())
    # Weights split by layer, but one block's activations must fit beside its layers on one device.
    fits = need.total_bytes <= have and need.activation_bytes <= max(devices.values(), default=0)
    where = ", ".join(f"{k} {_fmt(v)}" for k, v in devices.items())
    head = (f"{spec.key} needs ~{_fmt(need.total_bytes)} (weights {_fmt(need.weight_bytes)} in {dtype_name} "
            f"+ {_fmt(need.activation_bytes)} activations for a batch of {batch_size} x {seq_len} tokens); "
            f"usable: {where}")
    if fits:
        return MemoryPlan(need, devices, True, head + ".")
    alts = alternatives(spec, need, free, device=dev, max_memory=max_memory, n_hooks=n_hooks)
    msg = head + ". It would not fit. What would fit: " + "; ".join(alts) + "."
    return MemoryPlan(need, devices, False, msg)


def alternatives(spec: ModelSpec, need: MemoryNeed, free: dict[str, int], *, device: str,
                 max_memory: dict | None = None, n_hooks: int = 1) -> list[str]:
    """Placements, dtypes and smaller models that would fit, as CLI hints."""
    out = []
    gpus = [k for k in free if k.startswith("cuda")]
    kw = dict(batch_size=need.batch_size, seq_len=need.seq_len, n_hooks=n_hooks)

    def fits(n: MemoryNeed, devices: dict[str, int]) -> bool:
        return bool(devices) and n.total_bytes <= sum(devices.values()) and n.activation_bytes <= max(devices.values())

    for dt in ("bfloat16",) if need.dtype == "float32" else ():
        if fits(estimate(spec, dt, **kw), usable(free, device=device, max_memory=max_memory)):
            out.append(f"--dtype {dt} on {device} ({_fmt(estimate(spec, dt, **kw).total_bytes)})")
    if len(gpus) > 1:
        for dt in dict.fromkeys((need.dtype, "bfloat16")):
            if fits(estimate(spec, dt, **kw), usable(free, device=None, device_map="auto", max_memory=max_memory)):
                out.append(f"--device-map auto --dtype {dt} over {len(gpus)} GPUs")
                break
    if device != "cpu" and fits(need, usable(free, device="cpu", max_memory=max_memory)):
        out.append("--device cpu (slower)")
    room = max(usable(free, device=device, max_memory=max_memory).values(), default=0)
    smaller = sorted((s for s in CATALOGUE.values()
                      if 0 < s.parameters < spec.parameters and estimate(s, need.dtype, **kw).total_bytes <= room),
                     key=lambda s: -s.parameters)
    if smaller:
        out.append("a smaller model: " + ", ".join(s.key for s in smaller[:3]))
    out.append("or extract remotely with the nnsight backend (remote=True, an NDIF key)")
    return out


def spec_for(name: str) -> ModelSpec | None:
    """The catalogue entry, or one built from a local HF folder's config and safetensors headers."""
    from analysis.models import DEFAULT_MODEL

    name = (name or DEFAULT_MODEL).strip()
    if name in CATALOGUE:
        return CATALOGUE[name] if CATALOGUE[name].parameters > 0 else None
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        return None  # a hub id: its size is known only after download
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    n = 0
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                count = 1
                for d in shape:
                    count *= int(d)
                n += count
    cfg = json.loads((folder / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    return ModelSpec(
        key=str(folder), title=folder.name, source="hub", hf_id=str(folder),
        n_layers=int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 1),
        d_model=int(cfg.get("hidden_size") or cfg.get("n_embd") or 1),
        n_ctx=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048),
        parameters=n, vocab_size=int(cfg.get("vocab_size") or 0),
    )


def check_fits(name: str | None, *, device: str | None = "auto", dtype: str | None = None, device_map=None,
               max_memory: dict | None = None, n_devices: int | None = None, batch_size: int = 16,
               seq_len: int = 256, n_hooks: int = 1, free: dict[str, int] | None = None) -> MemoryPlan | None:
    """Raise :class:`InsufficientMemory` before loading when the model would not fit.

    Returns the plan, or None when the size is unknown (a hub id not yet downloaded).
    """
    spec = spec_for(name)
    if spec is None:
        return None
    if device and device.startswith(SPLIT_PREFIX):
        device, device_map = None, device_map or device[len(SPLIT_PREFIX):]
    result = plan(spec, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                  n_devices=n_devices, batch_size=batch_size, seq_len=seq_len, n_hooks=n_hooks, free=free)
    if not result.fits:
        raise InsufficientMemory(result.message)
    return result
