"""Model catalogue, loading, device choice and the shared-model lock.

Every analysis runs on a :class:`LoadedModel`: a TransformerLens model (the
``TransformerBridge`` by default, ``HookedTransformer`` on request) plus its
tokenizer, device and a re-entrant lock. A model is loaded once per process
and shared by every caller (every browser session of the app), so:

* hooks are added only inside ``with lm.hooked(...)`` (or ``lm.locked()``),
  which hold ``lm.lock`` for the whole hooked forward pass; a hook can never
  outlive its block or fire in another caller's run;
* nothing mutates the shared weights; training (DPO) works on a copy.

Backend choice (measured with ``python -m bench``, see README): on CPU the
bridge's activations equal transformers' hidden states exactly and its
forward pass is faster than HookedTransformer's, which converts weights and
differs by up to ~1e-2 on Gemma-3 residuals.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import yaml

from analysis import gguf_convert
from analysis.errors import ModelLoadError
from analysis.hub import is_cached, unreachable_reason
from analysis.paths import ASSETS

Backend = Literal["bridge", "hooked"]
BACKENDS = ("bridge", "hooked")
SOURCES = ("gguf_package", "hub")



@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    source: str
    hf_id: str
    n_layers: int
    d_model: int
    n_ctx: int
    license: str = ""
    package: str = ""
    architecture: str = ""
    notes: str = ""
    sae_releases: tuple[str, ...] = ()
    parameters: int = 0  # weight count, for the memory estimate before loading (0: unknown)
    vocab_size: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"model {self.key!r}: source {self.source!r} is not one of {SOURCES}")
        if self.n_layers <= 0 or self.d_model <= 0:
            raise ValueError(f"model {self.key!r}: n_layers and d_model must be positive")
        if self.parameters < 0 or self.vocab_size < 0:
            raise ValueError(f"model {self.key!r}: parameters and vocab_size must be >= 0")

    @property
    def offline(self) -> bool:
        return self.source == "gguf_package"


def _read_catalogue() -> tuple[str, dict[str, ModelSpec]]:
    raw = yaml.safe_load((ASSETS / "models.yaml").read_text())
    specs = {}
    for key, entry in raw["models"].items():
        entry = dict(entry)
        entry["sae_releases"] = tuple(entry.get("sae_releases") or ())
        specs[key] = ModelSpec(key=key, **entry)
    if raw["default"] not in specs:
        raise ValueError(f"models.yaml: default {raw['default']!r} is not a catalogue entry")
    return raw["default"], specs


DEFAULT_MODEL, CATALOGUE = _read_catalogue()


def catalogue() -> dict[str, ModelSpec]:
    return dict(CATALOGUE)


def offline_models() -> list[str]:
    return [k for k, s in CATALOGUE.items() if s.offline]




# ---------------------------------------------------------------- device/dtype

def pick_device(preferred: str | None = None) -> str:
    """``preferred`` if given (validated), else cuda > mps > cpu."""
    import torch

    if preferred not in (None, "", "auto"):
        if preferred.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        if preferred == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available; use 'cpu' or 'auto'")
        if preferred.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {preferred!r}: valid devices are 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
SPLIT_PREFIX = "split:"  # device strings like "split:auto" (the Home page) mean a device map


def pick_dtype(device: str, preferred: str | None = None, n_params_billion: float = 0.0):
    """float32 unless asked otherwise; bfloat16 for >2B-parameter models on a GPU.

    float32 is the default even on GPUs for small models: numbers compared
    with papers and other libraries should not carry bf16 rounding.
    """
    import torch

    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if preferred not in (None, "", "auto"):
        if preferred not in names:
            raise ValueError(f"dtype {preferred!r}: valid dtypes are 'auto', {', '.join(names)}")
        return names[preferred]
    if device.startswith("cuda") and n_params_billion > 2.0:
        return torch.bfloat16
    return torch.float32


# ---------------------------------------------------------------- LoadedModel

@dataclass(eq=False)
class LoadedModel:
    """A shared model. Use ``hooked``/``locked`` around every forward pass."""

    name: str
    model: Any  # TransformerBridge or HookedTransformer
    tokenizer: Any
    device: str
    backend: str
    spec: ModelSpec | None = None
    load_seconds: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    @property
    def n_ctx(self) -> int:
        n = int(getattr(self.model.cfg, "n_ctx", 0) or 0)
        return n if n > 0 else (self.spec.n_ctx if self.spec else 2048)

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def fingerprint(self) -> str:
        """Identifies weights + backend for cache keys."""
        return f"{self.name}|{self.backend}|{self.dtype}"

    @contextlib.contextmanager
    def locked(self) -> Iterator[Any]:
        """Hold the model's lock (for unhooked passes that must not interleave with hooks)."""
        with self.lock:
            yield self.model

    @contextlib.contextmanager
    def hooked(self, fwd_hooks: list[tuple[str | Callable, Callable]]) -> Iterator[Any]:
        """Add forward hooks for the duration of the block, under the lock."""
        with self.lock:
            with self.model.hooks(fwd_hooks=fwd_hooks):
                yield self.model

    def assert_clean(self) -> None:
        """Raise if any hook is left on the shared model (a leak from some caller)."""
        leaked = [
            name for name, hp in self.model.hook_dict.items()
            if getattr(hp, "_forward_hooks", None) and len(hp._forward_hooks) > 0
        ]
        if leaked:
            raise RuntimeError(f"hooks leaked on the shared model at: {leaked[:5]}")

    def tokenize(self, texts: list[str], *, max_length: int | None = None):
        """Right-padded batch: ``(input_ids, attention_mask)``, BOS prepended.

        Right padding keeps every real token's activations independent of the
        padding (causal attention never looks right), so pooling by mask is exact.
        """
        max_length = max_length or self.n_ctx
        enc = self.tokenizer(
            list(texts), return_tensors="pt", padding=True, truncation=False,
            padding_side="right",
        )
        if enc["input_ids"].shape[1] > max_length:
            lengths = enc["attention_mask"].sum(1)
            worst = int(lengths.argmax())
            raise ValueError(
                f"text {worst} is {int(lengths[worst])} tokens long, more than the model's context of "
                f"{max_length} tokens; shorten or split it"
            )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)


# ---------------------------------------------------------------- loading

_LOADED: dict[tuple, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load_model(
    name: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    backend: Backend = "bridge",
    progress: Callable[[str], None] | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | str | None = None,
    n_devices: int | None = None,
) -> LoadedModel:
    """Load (once per process) a catalogue model or any TransformerLens/HF name.

    ``name``: a catalogue key (``repscope models`` lists them), a hub id such as
    ``gpt2`` or ``EleutherAI/pythia-70m``, or a local HF folder. Offline, hub
    names fail within seconds with :class:`ModelLoadError`.

    ``device_map`` (auto, balanced, or a dict of HF module -> device), ``max_memory``
    and ``n_devices`` split the model across devices (accelerate, through
    ``TransformerBridge.boot_transformers``); ``device="split:auto"`` is the same as
    ``device_map="auto"``. Then ``lm.device`` is the embedding's device (where inputs
    go) and activations of later layers live on their block's device.
    Footgun: transformer-lens 3.9 refuses maps that mix CPU and GPU, or put
    blocks on "disk"/"meta" (accelerate offload); the nnsight backend
    (``analysis.scale``) runs those.
    """
    name = (name or DEFAULT_MODEL).strip()
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: valid backends are {BACKENDS}")
    if device and device.startswith(SPLIT_PREFIX):
        device, device_map = None, device_map or device[len(SPLIT_PREFIX):]
    if isinstance(device_map, str) and device_map.strip() in ("", "none"):
        device_map = None
    elif isinstance(device_map, str) and device_map.lstrip().startswith("{"):
        device_map = json.loads(device_map)  # analysis.scale.parse_device_map validates CLI input
    if max_memory and device_map is None and not n_devices:
        device_map = "auto"  # a budget alone means: let accelerate place the layers
    if n_devices is not None and n_devices < 1:
        raise ValueError(f"n_devices={n_devices}: must be >= 1")
    split = device_map is not None or (n_devices or 1) > 1
    if split and backend != "bridge" and device_map is not None:
        raise ValueError("device_map needs the bridge backend; the hooked backend splits only with n_devices")
    dev = None if split else pick_device(device)
    placement = json.dumps([device_map, {str(k): v for k, v in (max_memory or {}).items()}, n_devices], sort_keys=True)
    key = (name, dev, dtype or "auto", backend, placement)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load_uncached(
                name, dev, dtype, backend, progress or _stderr,
                placement={"device_map": device_map, "max_memory": max_memory, "n_devices": n_devices} if split else {},
            )
        return _LOADED[key]


def _stderr(msg: str) -> None:
    print(f"[repscope] {msg}", file=sys.stderr, flush=True)


def _load_uncached(name: str, device: str | None, dtype: str | None, backend: str, progress,
                   placement: dict | None = None) -> LoadedModel:

    start = time.perf_counter()
    spec = CATALOGUE.get(name)
    placement = placement or {}
    torch_dtype = pick_dtype(device or ("cuda" if _has_cuda() else "cpu"), dtype)
    if spec is not None and spec.offline:
        folder = gguf_convert.ensure_converted(progress=progress)
        model, tok = _boot(str(folder), folder, device, torch_dtype, backend, tl_name=spec.hf_id, **placement)
    else:
        hf_id = spec.hf_id if spec else name
        local = Path(hf_id).expanduser()
        if local.is_dir():
            model, tok = _boot(str(local), local, device, torch_dtype, backend, tl_name=None, **placement)
        else:
            _check_hub_available(hf_id)
            model, tok = _boot(hf_id, None, device, torch_dtype, backend, tl_name=hf_id, **placement)
    model.eval()
    if device is None:  # split: inputs go where the embedding sits
        device = str(getattr(model.cfg, "device", None) or "cpu")
    lm = LoadedModel(
        name=name, model=model, tokenizer=tok, device=device, backend=backend, spec=spec,
        load_seconds=time.perf_counter() - start,
    )
    progress(f"loaded {name} ({backend}, {device}, {torch_dtype}) in {lm.load_seconds:.1f}s")
    return lm


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _boot(source: str, folder: Path | None, device: str | None, torch_dtype, backend: str, tl_name: str | None,
          device_map=None, max_memory=None, n_devices=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
        if backend == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(
                source, tokenizer=tok, dtype=torch_dtype, device=device,
                device_map=device_map, max_memory=max_memory, n_devices=n_devices,
            )
        else:
            from transformer_lens import HookedTransformer

            hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
            model = HookedTransformer.from_pretrained_no_processing(
                tl_name or source, hf_model=hf, tokenizer=tok, dtype=torch_dtype, device=device,
                n_devices=n_devices or 1,
            )
    except OSError as err:
        raise ModelLoadError(_unavailable_message(source, str(err))) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _check_hub_available(hf_id: str, timeout: float = 3.0) -> None:
    """Fail fast when a hub model is neither cached locally nor reachable."""
    if is_cached(hf_id, "config.json"):
        return  # cached: transformers will load it without the network
    why = unreachable_reason(timeout)
    if why:
        raise ModelLoadError(_unavailable_message(hf_id, why))


def _unavailable_message(name: str, why: str) -> str:
    return (
        f"Cannot load model {name!r}: {why}. "
        f"Models available offline: {', '.join(offline_models())}. "
        "Hub models (gpt2, pythia-70m, gemma-2-2b, ...) need internet the first time; "
        "a local Hugging Face folder path also works."
    )


def describe(lm: LoadedModel) -> dict[str, Any]:
    """Facts shown on the home page and by ``repscope models --loaded``."""
    n_params = sum(p.numel() for p in lm.model.parameters())
    return {
        "model": lm.name,
        "backend": lm.backend,
        "device": lm.device,
        "devices": sorted({str(p.device) for p in lm.model.parameters()}),
        "dtype": str(lm.dtype).replace("torch.", ""),
        "layers": lm.n_layers,
        "d_model": lm.d_model,
        "context": lm.n_ctx,
        "parameters_millions": round(n_params / 1e6, 1),
        "load_seconds": round(lm.load_seconds, 1),
    }


def spec_json(spec: ModelSpec) -> str:
    return json.dumps(spec.__dict__, default=list)
