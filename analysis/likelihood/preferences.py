"""Preference pairs (prompt x, chosen y+, rejected y-): reading, rendering, export.

Two input layouts, the ones TRL's DPO trainer reads:

* ``dpo``: ``{"prompt": str, "chosen": str, "rejected": str, ...}`` per .jsonl
  line or .csv row (parsed by :func:`analysis.uploads.parse_records`);
* ``conversational``: the same fields as lists of ``{"role", "content"}``
  messages (.jsonl only), e.g. a user turn as the prompt and one assistant
  turn per response.

A conversational pair is rendered to text once, when it is read. With a
tokenizer that has a chat template, the prompt is
``apply_chat_template(prompt, add_generation_prompt=True)`` and a response is
the rest of ``apply_chat_template(prompt + response)``. Without one (the
default Gemma-3-270M is a base model and has none) the documented plain
format is used: each message is ``"{Role}: {content}"`` joined by newlines,
the prompt ends with ``"\\nAssistant:"`` and a response is ``" " + content``,
so ``[user: "Hi"]`` + ``[assistant: "Hello"]`` reads
``"User: Hi\\nAssistant:"`` + ``" Hello"``.

Footguns:
- Other fields (``kind``, ids, ...) are kept untouched in ``records`` and
  written back by :func:`export_jsonl`, which always writes the INPUT layout
  (message lists stay message lists), whatever the rendering was.
- Rendered chat templates often start with the BOS token as text; it is
  stripped here because tokenisation adds BOS itself (doubling it changes
  every number).
- Texts are used exactly as written: ``parse_records`` validates them but
  strips whitespace, and a leading space matters to tokenisation (``" No"``
  and ``"No"`` are different tokens), so the unstripped values are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from analysis.paths import ASSETS
from analysis.uploads import (
    DEFAULT_MAX_BYTES, DEFAULT_MAX_ITEMS, UploadError, check_size, jsonl_objects, parse_records, sniff_jsonl,
    text_problem,
)

LAYOUTS = ("dpo", "conversational")
RENDERINGS = ("text", "chat_template", "plain")
FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant")
PREFERENCE_DIR = ASSETS / "preferences"
DEFAULT_SET = "displacement_demo"


@dataclass(frozen=True)
class PreferencePair:
    """One pair as the model sees it: texts ready to tokenise."""

    prompt: str
    chosen: str
    rejected: str
    kind: str = ""


@dataclass(frozen=True)
class PreferenceData:
    """Pairs plus the records they came from (for export in the input layout)."""

    name: str
    layout: str
    rendering: str
    pairs: tuple[PreferencePair, ...]
    records: tuple[dict, ...] = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: valid layouts are {LAYOUTS}")
        if self.rendering not in RENDERINGS:
            raise ValueError(f"rendering {self.rendering!r}: valid renderings are {RENDERINGS}")
        if len(self.pairs) != len(self.records):
            raise ValueError("pairs and records must have the same length")

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, indices) -> "PreferenceData":
        idx = [int(i) for i in indices]
        return PreferenceData(
            self.name, self.layout, self.rendering,
            tuple(self.pairs[i] for i in idx), tuple(self.records[i] for i in idx),
        )


def shipped_sets() -> dict[str, dict]:
    """``{name: {"title", "description", "path"}}`` from ``assets/preferences/sets.yaml``."""
    meta = yaml.safe_load((PREFERENCE_DIR / "sets.yaml").read_text())
    out = {}
    for name, entry in meta.items():
        path = PREFERENCE_DIR / f"{name}.jsonl"
        if path.is_file():
            out[name] = {**entry, "path": path}
    return out


def load_shipped(name: str = DEFAULT_SET, tokenizer=None) -> PreferenceData:
    sets = shipped_sets()
    if name not in sets:
        raise ValueError(f"unknown preference set {name!r}; shipped sets are {sorted(sets)}")
    return load_preferences(sets[name]["path"], tokenizer)


def load_preferences(path: str | Path, tokenizer=None) -> PreferenceData:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such preference file (.jsonl or .csv)")
    return parse_preferences(path.name, path.read_bytes(), tokenizer)


def parse_preferences(filename: str, data: bytes, tokenizer=None, *, max_items: int = DEFAULT_MAX_ITEMS) -> PreferenceData:
    """Validate and render an uploaded preference file; raises :class:`UploadError`.

    ``tokenizer`` is used only for conversational files (its chat template, if any).
    """
    name = Path(filename or "upload").name
    check_size(name, data, DEFAULT_MAX_BYTES)  # before any decoding or splitting
    if _looks_conversational(name, data):
        records = _conversational_records(name, data, max_items)
        return _render_conversational(name, records, tokenizer)
    # strip=False: " No" and "No" are different tokens, so texts stay as written.
    records = parse_records(name, data, required=[FIELDS], max_items=max_items, strip=False)
    pairs = []
    for line, rec in enumerate(records, start=1):
        keys = {k.lower(): k for k in rec}
        pair = PreferencePair(*(rec[keys[f]] for f in FIELDS), kind=str(rec.get("kind", "")))
        if pair.chosen == pair.rejected:
            raise UploadError(f"{name}: record {line} has identical chosen and rejected texts; a pair must differ.")
        pairs.append(pair)
    return PreferenceData(name, "dpo", "text", tuple(pairs), tuple(records))


def render_messages(messages: list[dict], tokenizer=None, *, add_generation_prompt: bool) -> tuple[str, str]:
    """Text of a message list and the rendering used ("chat_template" or "plain")."""
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        bos = getattr(tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            text = text[len(bos):]
        return text, "chat_template"
    text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    if add_generation_prompt:
        text += "\nAssistant:"
    return text, "plain"


def _render_conversational(name: str, records: list[dict], tokenizer) -> PreferenceData:
    pairs, rendering = [], "plain"
    for i, rec in enumerate(records, start=1):
        prompt, rendering = render_messages(rec["prompt"], tokenizer, add_generation_prompt=True)
        texts = []
        for key in ("chosen", "rejected"):
            full, _ = render_messages(rec["prompt"] + rec[key], tokenizer, add_generation_prompt=False)
            if not full.startswith(prompt):
                raise UploadError(
                    f"{name}: line {i}: the rendered prompt is not a prefix of prompt + {key} "
                    "(the chat template changes earlier turns); use the dpo layout with plain strings instead."
                )
            texts.append(full[len(prompt):])
        if texts[0] == texts[1]:
            raise UploadError(f"{name}: line {i} has identical chosen and rejected responses; a pair must differ.")
        pairs.append(PreferencePair(prompt, texts[0], texts[1], kind=str(rec.get("kind", ""))))
    return PreferenceData(name, "conversational", rendering, tuple(pairs), tuple(records))


def _looks_conversational(name: str, data: bytes) -> bool:
    if not name.lower().endswith(".jsonl"):
        return False
    first = sniff_jsonl(data)  # only the first line is decoded; errors are reported by the parser
    return isinstance(first, dict) and isinstance(first.get("prompt"), list)


def _conversational_records(name: str, data: bytes, max_items: int) -> list[dict]:
    records = []
    for line_no, obj in jsonl_objects(name, data, max_bytes=DEFAULT_MAX_BYTES):
        if any(f not in obj for f in FIELDS):
            raise UploadError(f"{name}: line {line_no} has {sorted(obj)}; expected fields {FIELDS}. Add the missing fields.")
        for f in FIELDS:
            _check_messages(name, line_no, f, obj[f])
        records.append(obj)
        if len(records) > max_items:
            raise UploadError(f"{name} has more than {max_items} records (the limit); split the file.")
    if not records:
        raise UploadError(f"{name}: no records found. Add at least one line.")
    return records


def _check_messages(name: str, line: int, key: str, messages) -> None:
    where = f"{name}: line {line} field {key!r}"
    if not isinstance(messages, list) or not messages:
        raise UploadError(
            f"{where} must be a non-empty list of messages like "
            '[{"role": "user", "content": "..."}] in the conversational layout '
            "(or use plain strings for prompt, chosen and rejected)."
        )
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UploadError(
                f"{where} message {j} must be {{'role': one of {ROLES}, 'content': text}}; got {str(m)[:80]!r}."
            )
        if not m["content"].strip():
            raise UploadError(f"{where} message {j} has empty content; fill it in or remove the line.")
        if text_problem(m["content"]):
            raise UploadError(f"{where} message {j} content {text_problem(m['content'])}; fix or remove it.")
    if key != "prompt" and messages[0]["role"] != "assistant":
        raise UploadError(f"{where} must start with an assistant message (the response); got role {messages[0]['role']!r}.")


def export_jsonl(data: PreferenceData) -> bytes:
    """The records of ``data`` as .jsonl in their input layout (one JSON object per line).

    A .csv input is written as .jsonl with the same fields (string values).
    """
    lines = [json.dumps(rec, ensure_ascii=False) for rec in data.records]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
