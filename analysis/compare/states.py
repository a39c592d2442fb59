"""Model states to compare: the base model, a steered state, a DPO checkpoint, another model.

A state is named by a string spec, the same in the app, the CLI and recipes:

* ``base``: the shared model as loaded;
* ``steer:PATH.safetensors@alpha=-1.6`` (optionally ``@layers=6,7``): a saved
  :class:`analysis.steering.SteeringVector` added through ``analysis.steering.apply``;
* ``ckpt:NAME``: a DPO checkpoint from the workspace (``analysis.likelihood``'s
  checkpoint store), loaded into a *copy* of the base model;
* ``model:NAME``: another model (catalogue key, hub id or folder) with the same tokenizer.

``activate(base, spec)`` is a context manager yielding the :class:`LoadedModel`
to run analyses on. Footguns:

* a steered state yields a *view* of the shared model (same weights, same lock,
  a different ``name``) inside the ``apply`` block, so the steering hooks exist
  only for the block and the activation disk cache (keyed by ``lm.fingerprint``)
  never mixes steered and unsteered activations; the block holds the model lock
  throughout, so other callers wait;
* a checkpoint is loaded into a deep copy (about one more model in memory),
  kept in a small per-process cache; the shared base model is never written to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

from analysis.models import LoadedModel

KINDS = ("base", "steer", "ckpt", "model")
_SPEC_RE = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<rest>.+))?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@:+-]{0,199}$")


@dataclass(frozen=True)
class StateSpec:
    """A parsed state spec; ``str(spec)`` gives the canonical string back."""

    kind: str
    target: str = ""
    alpha: float = 0.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"state kind {self.kind!r}: valid kinds are {KINDS} "
                             "(e.g. 'base', 'steer:vec.safetensors@alpha=-1.6', 'ckpt:run1', 'model:gpt2')")
        if self.kind == "base" and (self.target or self.alpha or self.layers):
            raise ValueError("'base' takes no arguments")
        if self.kind != "base" and not self.target:
            raise ValueError(f"state '{self.kind}:' needs a name or path, e.g. '{self.kind}:NAME'")
        if self.kind == "steer" and not self.alpha:
            raise ValueError("a steered state needs a non-zero alpha, e.g. 'steer:vec.safetensors@alpha=-1.6'")
        if self.kind != "steer" and (self.alpha or self.layers):
            raise ValueError(f"alpha and layers apply only to 'steer:' states, not {self.kind!r}")
        if self.layers is not None and (not self.layers or any(l < 0 for l in self.layers)):
            raise ValueError(f"layers {self.layers}: give non-negative layer numbers, e.g. @layers=6,7")

    def __str__(self) -> str:
        if self.kind == "base":
            return "base"
        text = f"{self.kind}:{self.target}"
        if self.kind == "steer":
            text += f"@alpha={self.alpha:g}"
            if self.layers:
                text += "@layers=" + ",".join(map(str, self.layers))
        return text


def short_spec(spec: str | StateSpec) -> str:
    """A state as a label shows it: a steering vector by its file name, not its whole path
    (``steer:/long/path/vec.safetensors@alpha=-1.6`` -> ``steer:vec.safetensors@alpha=-1.6``)."""
    kind, sep, rest = str(spec).partition(":")
    if kind != "steer" or not sep:
        return str(spec)
    target, *options = rest.split("@")
    return "@".join([f"steer:{PurePath(target).name}", *options])


def parse_state(text: str | StateSpec) -> StateSpec:
    """Parse ``base`` / ``steer:PATH@alpha=A[@layers=L,..]`` / ``ckpt:NAME`` / ``model:NAME``."""
    if isinstance(text, StateSpec):
        return text
    text = str(text).strip()
    m = _SPEC_RE.match(text)
    if not m:
        raise ValueError(f"state {text!r}: expected base, steer:PATH@alpha=A, ckpt:NAME or model:NAME")
    kind, rest = m["kind"], m["rest"] or ""
    if kind != "steer":
        if rest and not _NAME_RE.match(rest):
            raise ValueError(f"state {text!r}: {rest!r} is not a valid name")
        return StateSpec(kind, rest)
    target, *options = rest.split("@")
    alpha, layers = 0.0, None
    for opt in options:
        key, _, value = opt.partition("=")
        try:
            if key == "alpha":
                alpha = float(value)
            elif key == "layers":
                layers = tuple(int(v) for v in value.split(",") if v.strip())
            else:
                raise ValueError(f"unknown option {key!r}")
        except ValueError as err:
            raise ValueError(f"state {text!r}: {err}; options are @alpha=FLOAT and @layers=L1,L2") from err
    return StateSpec("steer", target, alpha, layers)


def vector_path(target: str) -> Path:
    """The file of ``steer:TARGET``: a path, or a bare name of a vector saved in the workspace
    (``workspace_root()/steering``, where the Steering page saves them)."""
    path = Path(target).expanduser()
    if not path.is_file() and len(path.parts) == 1:
        from analysis.paths import workspace_root

        saved = workspace_root() / "steering" / target
        if saved.is_file():
            return saved
    return path


def check_state(spec: str | StateSpec) -> StateSpec:
    """Parse and check that the state's file or checkpoint exists, without loading any model."""
    spec = parse_state(spec)
    if spec.kind == "steer":
        from analysis.steering import SteeringVector

        path = vector_path(spec.target)
        if not path.is_file():
            raise ValueError(f"steering vector {spec.target!r} not found (nor in the workspace's steering folder); "
                             "save one from the Steering page or with `repscope steer --out DIR`")
        SteeringVector.load(path)  # header check: a clear message for a wrong file
    elif spec.kind == "ckpt":
        names = _checkpoint_names()
        if spec.target not in names:
            raise ValueError(f"unknown DPO checkpoint {spec.target!r}; saved checkpoints are {sorted(names) or 'none'} "
                             "(save one from the Likelihood page or `repscope dpo`)")
    return spec


# ---------------------------------------------------------------- activation

@contextlib.contextmanager
def activate(base: LoadedModel, spec: str | StateSpec, *,
             models: dict[str, LoadedModel] | None = None) -> Iterator[LoadedModel]:
    """The model of state ``spec`` for the block (see the module docstring).

    ``models``: already-loaded models for ``model:NAME`` (the app's cached models,
    or an edited copy in tests); other names are loaded with ``load_model``.
    """
    spec = check_state(spec)
    if spec.kind == "base":
        yield base
    elif spec.kind == "steer":
        from analysis.steering import SteeringVector, apply

        path = vector_path(spec.target)
        vector = SteeringVector.load(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        view = dataclasses.replace(base, name=f"{base.name}+steer[{digest}]@{spec.alpha:g}@{spec.layers or vector.layers}",
                                   lock=base.lock)
        with apply(base, vector, spec.alpha, spec.layers):
            yield view
    elif spec.kind == "ckpt":
        yield _checkpoint_model(base, spec.target)
    else:
        other = (models or {}).get(spec.target)
        if other is None:
            from analysis.models import load_model

            other = load_model(spec.target, device=base.device)
        check_same_tokenizer(base, other)
        yield other


def check_same_tokenizer(a: LoadedModel, b: LoadedModel) -> None:
    """Refuse to compare models whose tokenizers differ (texts would not be the same tokens)."""
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise ValueError(f"{b.name!r} has a different tokenizer from {a.name!r}; states must share one "
                         "(compare fine-tunes of the same base model)")


# ---------------------------------------------------------------- checkpoints

_COPIES: dict[tuple, LoadedModel] = {}
_COPIES_LOCK = threading.Lock()
MAX_COPIES = 2


def _checkpoint_names() -> list[str]:
    from analysis.likelihood import list_checkpoints

    return [c.name for c in list_checkpoints()]


def _checkpoint_model(base: LoadedModel, name: str) -> LoadedModel:
    """Checkpoint ``name`` in a copy of ``base`` (``analysis.likelihood.checkpoint_model``), cached per process."""
    from analysis.likelihood import checkpoint_model, get_checkpoint

    key = (base.fingerprint, name, get_checkpoint(name).created)
    with _COPIES_LOCK:
        if key not in _COPIES:
            while len(_COPIES) >= MAX_COPIES:
                _COPIES.pop(next(iter(_COPIES)))
            _COPIES[key] = checkpoint_model(base, name)[0]
        return _COPIES[key]
