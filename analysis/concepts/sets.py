"""Concept sets: shipped YAML assets plus the user's persistent workspace.

A concept set is a list of positive example texts; its negatives are a
shared background set (Methods §1). Files follow one schema::

    name, kind ("concept" | "background"), title, description, provenance,
    background (concepts only), mentions, words, texts

Shipped sets live in ``assets/concepts``; uploads are written as YAML to
``workspace_dir()`` (``workspace_root()/concepts``, see analysis/paths.py)
so they survive app restarts. YAML is read with ``yaml.safe_load`` only.

Footguns:
- A workspace set may not reuse a shipped name (it would silently shadow it).
- Texts are validated, never silently fixed: duplicates or blank lines raise.
- One broken workspace file never breaks the rest: it is skipped with a
  :class:`WorkspaceWarning` naming the file (:func:`workspace_problems` lists
  them for the UI), and :func:`delete_workspace_concept` removes it by stem.
- Saves go through :func:`analysis.atomic.write_batch`: several concepts
  uploaded together are written all or nothing, even if the process is killed.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from analysis.atomic import recover, write_batch
from analysis.paths import ASSETS, workspace_root
from analysis.uploads import text_problem

SHIPPED_DIR = ASSETS / "concepts"
KINDS = ("concept", "background")
SOURCES = ("shipped", "workspace")
REQUIRED_FIELDS = ("name", "kind", "title", "description", "provenance", "texts")
MIN_CHARS = 5
MAX_CHARS = 1000
MIN_TEXTS = 10
DEFAULT_BACKGROUND = "background"
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{1,63}")  # used with fullmatch: "$" would let "name\n" in


class WorkspaceWarning(UserWarning):
    """A workspace concept file was skipped; the message names it and says why."""


@dataclass(frozen=True)
class ConceptSet:
    """One validated concept (or background) set."""

    name: str
    title: str
    description: str
    provenance: str
    texts: tuple[str, ...]
    background: str = DEFAULT_BACKGROUND
    mentions: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    source: str = "shipped"
    kind: str = "concept"

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.kind not in KINDS:
            raise ValueError(f"concept {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.source not in SOURCES:
            raise ValueError(f"concept {self.name!r}: source {self.source!r} is not one of {SOURCES}")
        check_texts(self.name, self.texts)

    def __len__(self) -> int:
        return len(self.texts)


def check_name(name: str) -> None:
    """Names are snake_case: lower-case letters, digits and ``_``, 2-64 characters."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"concept name {name!r} is not valid: use snake_case (lower-case letters, digits, '_'; "
            "starting with a letter; 2-64 characters), e.g. 'positive_sentiment'"
        )


def check_texts(name: str, texts) -> None:
    """Raise ValueError for too few, non-string, blank, too short/long or duplicate texts."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"concept {name!r}: 'texts' must be a list of strings, got {type(texts).__name__}")
    if len(texts) < MIN_TEXTS:
        raise ValueError(
            f"concept {name!r} has {len(texts)} texts; at least {MIN_TEXTS} are needed "
            "for cross-validated accuracy. Add more examples."
        )
    seen: dict[str, int] = {}
    for i, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise ValueError(f"concept {name!r}: text {i} is a {type(text).__name__}, not a string; quote it")
        if not text.strip():
            raise ValueError(f"concept {name!r}: text {i} is empty; remove the blank line")
        if text != text.strip():
            raise ValueError(f"concept {name!r}: text {i} has leading/trailing whitespace; strip it")
        problem = text_problem(text)
        if problem:
            raise ValueError(f"concept {name!r}: text {i} {problem}; fix or remove it")
        if len(text) < MIN_CHARS:
            raise ValueError(
                f"concept {name!r}: text {i} ({text!r}) is shorter than {MIN_CHARS} characters; "
                "write a sentence that expresses the concept"
            )
        if len(text) > MAX_CHARS:
            raise ValueError(
                f"concept {name!r}: text {i} is {len(text)} characters, more than {MAX_CHARS}; "
                "split or shorten it"
            )
        if text in seen:
            raise ValueError(
                f"concept {name!r}: text {i} duplicates text {seen[text]} ({text[:60]!r}); remove one copy"
            )
        seen[text] = i


def workspace_dir() -> Path:
    """Where uploaded concept sets persist: ``workspace_root()/concepts``."""
    return workspace_root() / "concepts"


# Parsed files by (path, source, content digest): pages list the sets on every rerun, and parsing the YAML
# again took most of a re-render (issue 16). Reading the bytes is cheap; an edited file has a new digest.
_PARSED: dict[tuple, ConceptSet] = {}
_MAX_PARSED = 1024


def parse_concept_file(path: Path, source: str = "shipped") -> ConceptSet:
    """Read and validate one concept YAML file; ValueError says what is wrong. Unchanged files are parsed once."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path.name}: not a readable YAML concept file ({type(err).__name__}: {err})") from err
    key = (str(path), source, hashlib.sha256(text.encode("utf-8")).digest())
    hit = _PARSED.get(key)
    if hit is not None:
        return hit
    parsed = _parse_concept_text(path, text, source)
    if len(_PARSED) >= _MAX_PARSED:
        _PARSED.clear()
    _PARSED[key] = parsed
    return parsed


def _parse_concept_text(path: Path, text: str, source: str) -> ConceptSet:
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as err:
        raise ValueError(f"{path.name}: not a readable YAML concept file ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name}: expected a mapping with fields {REQUIRED_FIELDS}, got {type(raw).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise ValueError(f"{path.name}: missing fields {missing}; a concept file needs {REQUIRED_FIELDS}")
    kind = raw["kind"]
    if kind == "concept" and not raw.get("background"):
        raise ValueError(f"{path.name}: a concept needs a 'background' field naming its negative set, e.g. 'background'")
    if raw["name"] != path.stem:
        raise ValueError(f"{path.name}: name {raw['name']!r} must match the file name {path.stem!r}")
    for field in ("title", "description", "provenance"):
        if not isinstance(raw[field], str):
            raise ValueError(f"{path.name}: field {field!r} must be text")
    for field in ("mentions", "words"):
        value = raw.get(field) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path.name}: field {field!r} must be a list of strings")
    try:
        return ConceptSet(
            name=raw["name"], title=raw["title"], description=raw["description"],
            provenance=raw["provenance"], texts=tuple(raw["texts"]) if isinstance(raw["texts"], list) else raw["texts"],
            background=raw.get("background") or DEFAULT_BACKGROUND,
            mentions=tuple(raw.get("mentions") or ()), words=tuple(raw.get("words") or ()),
            source=source, kind=kind,
        )
    except ValueError as err:
        raise ValueError(f"{path.name}: {err}") from err


def _read_dir(folder: Path, source: str, problems: list[str] | None = None) -> dict[str, ConceptSet]:
    """Sets in ``folder``; with ``problems`` given, a bad file is skipped and described there."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            s = parse_concept_file(path, source)
        except (ValueError, TypeError) as err:
            if problems is None:
                raise
            problems.append(f"skipped {path}: {err}")
            continue
        out[s.name] = s
    return out


def _load(problems: list[str]) -> dict[str, ConceptSet]:
    shipped = _read_dir(SHIPPED_DIR, "shipped")
    folder = workspace_dir()
    try:
        recover(folder)  # finish (or drop) a batch save a killed process left behind
    except OSError as err:
        problems.append(f"could not tidy {folder}: {err}")
    workspace = {}
    for name, s in _read_dir(folder, "workspace", problems).items():
        if name in shipped:
            problems.append(f"skipped {folder / (name + '.yaml')}: it reuses the shipped name {name!r}; "
                            "delete it (repscope concepts remove) or rename it")
        else:
            workspace[name] = s
    sets = {**shipped, **workspace}
    backgrounds = sorted(n for n, s in sets.items() if s.kind == "background")
    for name, s in list(sets.items()):
        if s.kind == "concept" and s.background not in backgrounds:
            if s.source == "shipped":
                raise ValueError(f"concept {s.name!r}: unknown background {s.background!r}; "
                                 f"valid backgrounds are {backgrounds}")
            problems.append(f"skipped {folder / (name + '.yaml')}: unknown background {s.background!r}; "
                            f"valid backgrounds are {backgrounds}")
            del sets[name]
    return sets


def workspace_problems() -> list[str]:
    """One line per workspace file that :func:`load_all_sets` skips (empty when all are fine)."""
    problems: list[str] = []
    _load(problems)
    return problems


def load_all_sets() -> dict[str, ConceptSet]:
    """Every set, concepts and backgrounds, shipped then workspace; backgrounds checked.

    A broken shipped file raises ValueError; a broken workspace file is skipped
    with a :class:`WorkspaceWarning` naming it.
    """
    problems: list[str] = []
    sets = _load(problems)
    for problem in problems:
        warnings.warn(problem, WorkspaceWarning, stacklevel=2)
    return sets


def load_concepts() -> dict[str, ConceptSet]:
    """Concept sets (not backgrounds) by name: shipped assets plus the workspace."""
    return {n: s for n, s in load_all_sets().items() if s.kind == "concept"}


def background_set(name: str = DEFAULT_BACKGROUND) -> ConceptSet:
    sets = load_all_sets()
    if name not in sets or sets[name].kind != "background":
        valid = sorted(n for n, s in sets.items() if s.kind == "background")
        raise ValueError(f"unknown background {name!r}; valid backgrounds are {valid}")
    return sets[name]


def background_texts(name: str = DEFAULT_BACKGROUND) -> tuple[str, ...]:
    """The negative (background) texts shared by concepts (Methods §1)."""
    return background_set(name).texts


def save_uploaded_concepts(
    concepts: dict[str, list[str]], background: str = DEFAULT_BACKGROUND, *, provenance: str = "uploaded by the user"
) -> list[ConceptSet]:
    """Validate and persist uploaded concepts (e.g. from ``parse_concept_upload``) as YAML.

    Every set is validated before any file is written. Re-uploading a
    workspace name replaces it; a shipped name is refused.
    """
    if not concepts:
        raise ValueError("no concepts to save")
    sets = load_all_sets()
    backgrounds = sorted(n for n, s in sets.items() if s.kind == "background")
    if background not in backgrounds:
        raise ValueError(f"unknown background {background!r}; valid backgrounds are {backgrounds}")
    made = []
    for name, texts in concepts.items():
        check_name(name)
        if name in sets and sets[name].source == "shipped":
            raise ValueError(f"concept name {name!r} is a shipped concept; choose another name, e.g. 'my_{name}'")
        made.append(ConceptSet(
            name=name, title=name.replace("_", " ").capitalize(), description="Uploaded concept set.",
            provenance=provenance, texts=tuple(texts), background=background, source="workspace",
        ))
    files = {}
    for s in made:
        doc = {
            "name": s.name, "kind": s.kind, "title": s.title, "description": s.description,
            "provenance": s.provenance, "background": s.background, "mentions": list(s.mentions),
            "words": list(s.words), "texts": list(s.texts),
        }
        files[f"{s.name}.yaml"] = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    write_batch(workspace_dir(), files)  # all or nothing, durable, never through a symlink
    return made


def delete_workspace_concept(name: str) -> None:
    """Remove a workspace concept file by its stem (even a broken one); shipped sets cannot be deleted."""
    folder = workspace_dir()
    stems = {p.stem: p for p in folder.glob("*.yaml")} if folder.is_dir() else {}
    if not isinstance(name, str) or name not in stems:
        shipped = isinstance(name, str) and _NAME_RE.fullmatch(name) and (SHIPPED_DIR / f"{name}.yaml").exists()
        why = "it is shipped and cannot be deleted" if shipped else (
            f"no such workspace concept; workspace files are {sorted(stems) or 'none'}")
        raise ValueError(f"cannot delete concept {name!r}: {why}")
    stems[name].unlink()
