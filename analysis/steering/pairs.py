"""Contrastive pair sets for steering (Methods §3): shipped sets and uploads.

A pair is ``(prompt, positive completion, negative completion)``. Shipped sets
live in ``assets/steering/<name>.jsonl`` with metadata in ``sets.yaml``;
uploads are .jsonl/.csv records with ``prompt, positive, negative`` or with
two contrasting prompts ``positive_prompt, negative_prompt`` (the completion is
then empty and the prompt itself carries the contrast).

Footguns:
- Completions keep their leading space (" wonderful"): the completion starts
  where the prompt's tokens end, so the text is ``prompt + completion``.
- The train/test split is the file's ``split`` field when every record has
  one; otherwise a seeded shuffle holds out ``test_fraction`` of the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from analysis.paths import ASSETS
from analysis.uploads import UploadError, parse_records

STEERING_DIR = ASSETS / "steering"
PAIR_FIELDS = (("prompt", "positive", "negative"), ("positive_prompt", "negative_prompt"))
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Pair:
    prompt: str
    positive: str
    negative: str
    split: str = "train"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"pair split {self.split!r}: valid splits are {SPLITS}")
        if not (self.positive or self.negative) and not self.prompt:
            raise ValueError("a pair needs a prompt or completions")

    @property
    def positive_text(self) -> str:
        return self.prompt + self.positive

    @property
    def negative_text(self) -> str:
        return self.prompt + self.negative


@dataclass(frozen=True)
class PairSet:
    """A named set of pairs with its metadata (``sets.yaml`` entry for shipped sets)."""

    name: str
    pairs: tuple[Pair, ...]
    title: str = ""
    positive_label: str = "positive"
    negative_label: str = "negative"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.pairs) < 2:
            raise ValueError(f"pair set {self.name!r} has {len(self.pairs)} pairs; at least 2 are needed")

    def split(self, which: str) -> tuple[Pair, ...]:
        if which not in SPLITS:
            raise ValueError(f"split {which!r}: valid splits are {SPLITS}")
        return tuple(p for p in self.pairs if p.split == which)

    @property
    def train(self) -> tuple[Pair, ...]:
        return self.split("train")

    @property
    def test(self) -> tuple[Pair, ...]:
        return self.split("test")


def shipped_sets() -> dict[str, dict]:
    """Metadata of the shipped pair sets, by name."""
    return yaml.safe_load((STEERING_DIR / "sets.yaml").read_text()) or {}


def load_pair_set(name: str, *, test_fraction: float = 0.2, seed: int = 0) -> PairSet:
    """A shipped set by name (``sentiment``, ``register``, ...) or a path to a .jsonl/.csv file."""
    sets = shipped_sets()
    if name in sets:
        path = STEERING_DIR / f"{name}.jsonl"
        meta = sets[name]
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ValueError(
                f"pair set {name!r} is neither a shipped set nor a file. Shipped sets: {sorted(sets)}; "
                "or give a .jsonl/.csv path with prompt/positive/negative fields"
            )
        meta = {}
    return parse_pair_upload(path.name, path.read_bytes(), name=path.stem if not meta else name,
                             meta=meta, test_fraction=test_fraction, seed=seed)


def parse_pair_upload(
    filename: str,
    data: bytes,
    *,
    name: str | None = None,
    meta: dict | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> PairSet:
    """Parse uploaded pairs (raises :class:`UploadError` with a fix-it message)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction {test_fraction}: must be between 0 and 1 (exclusive)")
    records = parse_records(filename, data, required=PAIR_FIELDS)
    rows = []
    for r in records:
        if "prompt" in r and "positive" in r and "negative" in r:
            rows.append((r["prompt"], r["positive"], r["negative"], r.get("split")))
        else:
            rows.append(("", r["positive_prompt"], r["negative_prompt"], r.get("split")))
    if len(rows) < 2:
        raise UploadError(f"{filename}: {len(rows)} pair found; a steering vector needs at least 2 pairs")
    given = [s for *_, s in rows]
    if all(s in SPLITS for s in given) and "train" in given and "test" in given:
        splits = given
    else:
        splits = _seeded_split(len(rows), test_fraction, seed)
    pairs = tuple(Pair(p, pos, neg, s) for (p, pos, neg, _), s in zip(rows, splits))
    meta = dict(meta or {})
    return PairSet(
        name=name or Path(filename).stem, pairs=pairs, title=meta.get("title", name or filename),
        positive_label=meta.get("positive_label", "positive"),
        negative_label=meta.get("negative_label", "negative"), meta=meta,
    )


def _seeded_split(n: int, test_fraction: float, seed: int) -> list[str]:
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    held = set(np.random.default_rng(seed).permutation(n)[:n_test].tolist())
    return ["test" if i in held else "train" for i in range(n)]
