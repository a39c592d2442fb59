"""Seeded subsampling with one capping rule for every view.

``subsample(items, k, seed, salt)`` keeps ``k`` items drawn uniformly
without replacement by a generator seeded from ``(seed, salt)`` and returns
them **in their original order**. ``k`` of None or 0 means all; ``k`` at or
above ``len(items)`` returns all. The salt (e.g. a concept name) makes draws
for different sets independent yet reproducible, and lets one set's draw
stay the same when another set is added to the analysis.
"""

from __future__ import annotations

import zlib
from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def rng(seed: int, *salt: object) -> np.random.Generator:
    """A generator seeded from ``seed`` and a stable hash of ``salt`` (not Python's salted ``hash``)."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(repr(s).encode()) for s in salt]
    return np.random.default_rng(words)


def subsample_indices(n: int, k: int | None, seed: int, *salt: object) -> np.ndarray:
    """Sorted indices of a seeded draw of ``k`` of ``n`` (all of them when ``k`` is None/0 or >= n)."""
    if k is not None and k < 0:
        raise ValueError(f"sample size {k}: must be 0 (all) or positive")
    if not k or k >= n:
        return np.arange(n)
    return np.sort(rng(seed, *salt).choice(n, size=k, replace=False))


def subsample(items: Sequence[T], k: int | None, seed: int, *salt: object) -> list[T]:
    """A seeded draw of ``k`` of ``items`` in their original order (see the module docstring)."""
    return [items[i] for i in subsample_indices(len(items), k, seed, *salt)]
