"""Exchangeable units for resampling: a word's template sentences move together.

Word-association benchmarks put each word into a few template sentences
("This is a rose.", "I saw a rose today."). Those sentences are not
independent: under the null the *words* are exchangeable, not the sentences,
and permuting or bootstrapping sentences one by one makes the null too
narrow (false positives well above the nominal rate; ``tests/test_bias_significance.py``
measures it). :func:`text_units` finds such sets without being told:

* a *frame* is a text with one span of 1–4 tokens cut out (prefix, suffix);
  a frame is a template when at least ``min_fillers`` texts of the analysis
  fill it with different spans;
* each text takes its most used template (ties: shortest filler) and its filler;
* within a concept, texts with the same filler that use at least two
  different templates form one unit (the word); every other text is its own unit.

Free-form sentence sets (the shipped concepts) come out as one unit per text,
i.e. the plain text-level resampling.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")
MAX_SPAN = 4


def _frames(tokens: tuple[str, ...]):
    for i in range(len(tokens)):
        for j in range(i + 1, min(len(tokens), i + MAX_SPAN) + 1):
            if len(tokens) - (j - i) >= 2:  # a template keeps at least two tokens of its own
                yield (tokens[:i], tokens[j:]), tokens[i:j]


def text_units(texts: dict[str, list[str]], *, min_fillers: int = 3) -> dict[str, np.ndarray]:
    """Per concept, an int array giving each text's unit id (0 .. n_units − 1, in first-seen order)."""
    tokens = {c: [tuple(_TOKEN.findall(t.lower())) for t in ts] for c, ts in texts.items()}
    fillers: dict[tuple, set] = defaultdict(set)
    for toks in tokens.values():
        for tok in toks:
            for frame, filler in _frames(tok):
                fillers[frame].add(filler)
    out = {}
    for c, toks in tokens.items():
        choice = []
        for tok in toks:
            best = None
            for frame, filler in _frames(tok):
                n = len(fillers[frame])
                if n >= min_fillers and (best is None or (n, -len(filler)) > best[0]):
                    best = ((n, -len(filler)), frame, filler)
            choice.append(None if best is None else best[1:])
        frames_of: dict[tuple, set] = defaultdict(set)
        for ch in choice:
            if ch is not None:
                frames_of[ch[1]].add(ch[0])
        ids, units = {}, np.zeros(len(toks), np.int64)
        for i, ch in enumerate(choice):
            key = ("word", ch[1]) if ch is not None and len(frames_of[ch[1]]) >= 2 else ("text", i)
            units[i] = ids.setdefault(key, len(ids))
        out[c] = units
    return out


def unit_matrix(units: np.ndarray) -> np.ndarray:
    """``(n_units, n_texts)`` 0/1 membership matrix of a unit-id array."""
    units = np.asarray(units)
    m = np.zeros((int(units.max()) + 1 if len(units) else 0, len(units)))
    m[units, np.arange(len(units))] = 1.0
    return m
