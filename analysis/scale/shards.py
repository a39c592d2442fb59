"""Sharded activation files with a manifest: the output of ``repscope extract``.

A run writes into ``DIR``:

* ``shard-00000.safetensors`` ... : one per ``shard_size`` consecutive texts, in the
  activation cache's own format (``analysis.activations``): ``act::<hook>`` arrays
  (float32, ``(n, d)`` or ``(tokens, d)`` for ``all`` pooling), ``n_tokens`` and, for
  ``all``, ``offsets`` (local to the shard). The safetensors metadata names the shard,
  its text range and the sha256 of its texts, so a shard is recognised on its own.
* ``manifest.json``: the run's settings (model fingerprint, hooks, pooling, shard size,
  corpus digest) and the finished shards. Rewritten atomically after each shard.

Resuming: a shard whose file exists with matching metadata is skipped; a run into
a folder holding another run's shards (other model, hooks, pooling or corpus) is refused.
:func:`load_shards` returns the same :class:`ActivationSet` ``extract`` returns for
the whole corpus; :func:`iter_shards` streams it shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from analysis.activations import ActivationSet

FORMAT = "repscope-shards/1"
MANIFEST = "manifest.json"
CORPUS_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int
    digest: str  # sha256 over the shard's texts

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.safetensors"


def read_corpus(path: str | Path, field: str = "text") -> list[str]:
    """Texts of a corpus file: ``.txt`` (one per non-empty line), ``.jsonl`` (``field`` of
    each object, or a bare JSON string per line), ``.parquet`` (the ``field`` column)."""
    path = Path(path)
    if path.suffix not in CORPUS_SUFFIXES:
        raise ValueError(f"corpus {path.name}: valid corpus files are {', '.join(CORPUS_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"corpus {path} does not exist")
    if path.suffix == ".txt":
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"corpus {path.name} line {n}: not JSON ({err.msg})") from None
            text = row if isinstance(row, str) else row.get(field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"corpus {path.name} line {n}: no string field {field!r} (use --field)")
            texts.append(text)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if field not in table.column_names:
            raise ValueError(f"corpus {path.name}: no column {field!r}; columns are {table.column_names[:8]}")
        texts = [t for t in table.column(field).to_pylist() if isinstance(t, str)]
    if not texts:
        raise ValueError(f"corpus {path.name} holds no texts")
    return texts


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


def plan_shards(texts: list[str], shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise ValueError(f"shard size {shard_size}: must be >= 1")
    return [Shard(i, a, min(a + shard_size, len(texts)), _digest(texts[a: a + shard_size]))
            for i, a in enumerate(range(0, len(texts), shard_size))]


def run_settings(fingerprint: str, hook_names: list[str], pooling: str, shard_size: int, texts: list[str]) -> dict:
    """What must match for shards of two runs to be interchangeable."""
    return {"format": FORMAT, "fingerprint": fingerprint, "hook_names": list(hook_names), "pooling": pooling,
            "shard_size": int(shard_size), "n_texts": len(texts), "corpus_sha256": _digest(texts)}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def open_run(out: str | Path, settings: dict) -> dict:
    """Create ``out`` or check that its manifest describes the same run; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if path.exists():
        manifest = json.loads(path.read_text())
        differs = [k for k, v in settings.items() if manifest.get(k) != v]
        if differs:
            raise ValueError(
                f"{out} holds shards of another run (different {', '.join(differs)}); "
                "use a fresh --out folder, or the same model, hooks, pooling, shard size and corpus to resume"
            )
        return manifest
    manifest = dict(settings, shards={}, complete=False)
    _atomic_write_text(path, json.dumps(manifest, indent=1))
    return manifest


def record(out: str | Path, manifest: dict, shard: Shard, seconds: float, complete: bool = False) -> None:
    manifest["shards"][str(shard.index)] = {"file": shard.file, "start": shard.start, "stop": shard.stop,
                                            "sha256": shard.digest, "seconds": round(seconds, 3)}
    manifest["complete"] = complete
    _atomic_write_text(Path(out) / MANIFEST, json.dumps(manifest, indent=1))


def finish(out: str | Path, manifest: dict, n_shards: int) -> None:
    manifest["complete"] = len(manifest["shards"]) == n_shards
    _atomic_write_text(Path(out) / MANIFEST, json.dumps(manifest, indent=1))


def write_shard(out: str | Path, shard: Shard, acts: ActivationSet, settings: dict) -> Path:
    """Write one shard atomically (temp file, then rename), cache format plus metadata."""
    from safetensors.numpy import save_file

    tensors = {f"act::{n}": np.ascontiguousarray(v, dtype=np.float32) for n, v in acts.values.items()}
    tensors["n_tokens"] = np.asarray(acts.n_tokens, dtype=np.int64)
    if acts.offsets is not None:
        tensors["offsets"] = np.asarray(acts.offsets, dtype=np.int64)
    meta = {"format": FORMAT, "shard": str(shard.index), "start": str(shard.start), "stop": str(shard.stop),
            "sha256": shard.digest, "fingerprint": settings["fingerprint"], "pooling": settings["pooling"],
            "hook_names": json.dumps(list(acts.hook_names))}
    path = Path(out) / shard.file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def shard_is_done(out: str | Path, shard: Shard, settings: dict) -> bool:
    """True when the shard's file exists and its metadata matches this run and these texts."""
    from safetensors import safe_open

    path = Path(out) / shard.file
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
    except Exception:  # noqa: BLE001 - a truncated shard is recomputed
        return False
    return (meta.get("sha256") == shard.digest and meta.get("fingerprint") == settings["fingerprint"]
            and meta.get("pooling") == settings["pooling"]
            and all(f"act::{n}" in keys for n in settings["hook_names"]))


def _read(path: Path, hook_names: list[str], pooling: str) -> ActivationSet:
    from safetensors.numpy import load_file

    data = load_file(str(path))
    return ActivationSet(tuple(hook_names), pooling, {n: data[f"act::{n}"] for n in hook_names},
                         data["n_tokens"], data.get("offsets"))


def _manifest(out: Path) -> dict:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out} has no {MANIFEST}: not a `repscope extract` output folder")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def iter_shards(out: str | Path, hook_names: list[str] | None = None) -> Iterator[tuple[int, ActivationSet]]:
    """``(first text index, activations)`` per finished shard, in corpus order."""
    manifest = _manifest(Path(out))
    names = list(hook_names or manifest["hook_names"])
    unknown = [n for n in names if n not in manifest["hook_names"]]
    if unknown:
        raise ValueError(f"hooks {unknown}: these shards hold {manifest['hook_names']}")
    for key in sorted(manifest["shards"], key=int):
        entry = manifest["shards"][key]
        yield entry["start"], _read(Path(out) / entry["file"], names, manifest["pooling"])


def load_shards(out: str | Path, hook_names: list[str] | None = None) -> ActivationSet:
    """All shards of a complete run as one :class:`ActivationSet`, equal to what ``extract``
    returns for the whole corpus (``all`` pooling: offsets re-based over the corpus)."""
    manifest = _manifest(Path(out))
    if not manifest.get("complete"):
        done = len(manifest["shards"])
        raise ValueError(f"{out}: the run is incomplete ({done} shards finished); rerun `repscope extract` to resume")
    parts = [acts for _, acts in iter_shards(out, hook_names)]
    names = parts[0].hook_names
    values = {n: np.concatenate([p.values[n] for p in parts]) for n in names}
    n_tokens = np.concatenate([p.n_tokens for p in parts])
    offsets = None
    if manifest["pooling"] == "all":
        offsets = np.concatenate([[0], np.cumsum(n_tokens)]).astype(np.int64)
    return ActivationSet(names, manifest["pooling"], values, n_tokens, offsets)
