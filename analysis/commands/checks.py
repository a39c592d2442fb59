"""Argument checks every model-using command runs BEFORE the model loads.

:func:`check_args` looks at the options a command has (``--concepts``,
``--layers``, ``--alpha``, ``--position``, ``--pairs``, a preference file,
``--formats``, ``--text`` ...) and raises ``ValueError`` with one clear line on
the first bad one, so a typo costs milliseconds, not a 10-20 s model load.
Layer ranges are checked against the catalogue entry when the model is a
catalogue model (other models are checked again after loading).
"""

from __future__ import annotations

import math
from pathlib import Path


def parse_layers(spec: str | None, n_layers: int) -> tuple[int, ...] | None:
    """``"0-17"``, ``"3,5,7"``, ``"0-4,10"`` or ``"all"``/None → layer tuple (None = all)."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    spans: list[tuple[int, int]] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            spans.append((int(lo), int(hi) if hi else int(lo)))
    except ValueError:
        raise ValueError(f"--layers {spec!r}: write a range like 0-17, a list like 3,5,7, or 'all'") from None
    # Bounds first, then expand: "0-999999999" must not build a billion-element list.
    if not spans or any(not 0 <= lo <= hi < n_layers for lo, hi in spans):
        raise ValueError(f"--layers {spec!r}: layers must be within 0-{n_layers - 1}, ranges written low-high")
    return tuple(sorted({layer for lo, hi in spans for layer in range(lo, hi + 1)}))


def catalogue_layers(model: str | None) -> int | None:
    """Layer count of a catalogue model (key or hub id; None: the default), else None."""
    from analysis.models import CATALOGUE, DEFAULT_MODEL

    name = (model or DEFAULT_MODEL).strip()
    spec = CATALOGUE.get(name) or next((s for s in CATALOGUE.values() if s.hf_id == name), None)
    return spec.n_layers if spec else None


def names(value: str, flag: str) -> tuple[str, ...]:
    out = tuple(n.strip() for n in str(value).split(",") if n.strip())
    if not out:
        raise ValueError(f"{flag}: give comma-separated concept names, e.g. food_aspect,service_aspect")
    return out


def floats(text: str, flag: str = "--alpha") -> list[float]:
    """Comma-separated finite numbers."""
    try:
        values = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: give comma-separated numbers, e.g. -2,-1,0,1,2") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{flag} {text!r}: give comma-separated finite numbers, e.g. -2,-1,0,1,2")
    return values


def check_concepts(requested: tuple[str, ...], flag: str, kind: str = "concept") -> None:
    from analysis.concepts import load_all_sets

    sets = load_all_sets()
    valid = sorted(n for n, s in sets.items() if s.kind == kind)
    bad = [n for n in requested if n not in valid]
    if bad:
        shown = ", ".join(valid[:12]) + (" ..." if len(valid) > 12 else "")
        raise ValueError(f"{flag}: unknown {kind} {', '.join(map(repr, bad))}; valid: {shown} "
                         "(repscope concepts lists them)")


def check_layer(value, flag: str, n_layers: int | None) -> None:
    if value is None:
        return
    if value < 0 or (n_layers is not None and value >= n_layers):
        top = f"0-{n_layers - 1}" if n_layers else "0 or more"
        raise ValueError(f"{flag} {value}: layers must be within {top}")


def check_text(value: str, flag: str) -> None:
    from analysis.uploads import text_problem

    if not str(value).strip():
        raise ValueError(f"{flag}: the text is empty; give some text to inspect")
    problem = text_problem(str(value))
    if problem:
        raise ValueError(f"{flag}: the text {problem}; pass valid UTF-8 text")


def check_formats(value: str) -> None:
    from analysis.figures.export import FORMATS

    formats = [f.strip().lower() for f in str(value).split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"--formats: unknown {bad}; valid formats are {', '.join(FORMATS)} (comma-separated)")


def check_file(value: str, flag: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{flag} {value}: no such file; check the path")
    if not path.is_file():
        raise ValueError(f"{flag} {value}: is a folder, not a file; give a .txt, .csv or .jsonl file")
    return path


def read_upload(value: str, max_bytes: int | None = None) -> tuple[str, bytes]:
    """(file name, bytes) of a file argument: a missing path, a folder or an oversized file is one clear error."""
    from analysis.uploads import DEFAULT_MAX_BYTES, check_size

    path = check_file(value, "file")
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    check_size(path.name, path.stat().st_size, limit)  # before reading: a huge file is never loaded
    return path.name, path.read_bytes()


def check_args(args) -> None:
    """Raise ValueError for the first bad option of ``args`` (an argparse Namespace)."""
    get = lambda key: getattr(args, key, None)  # noqa: E731
    command = get("command") or ""
    n_layers = catalogue_layers(get("model"))
    if isinstance(get("formats"), str):
        check_formats(get("formats"))
    if isinstance(get("text"), str):
        check_text(get("text"), "--text")
    if isinstance(get("file"), str) and command in ("inspect",):
        check_file(get("file"), "--file")
    if isinstance(get("concepts"), str):
        check_concepts(names(get("concepts"), "--concepts"), "--concepts")
    if command == "sae-probe" and isinstance(get("concept"), str):
        check_concepts((get("concept"),), "concept")
    if isinstance(get("targets"), str):
        check_concepts(names(get("targets"), "--targets"), "--targets")
    if isinstance(get("refs"), str):
        check_concepts(names(get("refs"), "--refs"), "--refs")
    if isinstance(get("background"), str) and command in ("cav",):
        check_concepts((get("background"),), "--background", kind="background")
    if isinstance(get("layers"), str):
        parse_layers(get("layers"), n_layers if n_layers is not None else 4096)
    for flag in ("layer", "similarity_layer"):
        if isinstance(get(flag), int):
            check_layer(get(flag), "--" + flag.replace("_", "-"), n_layers)
    for layer in get("search_layers") or ():
        check_layer(layer, "--search-layers", n_layers)
    if command == "sae-probe" and isinstance(get("sae"), str):
        _check_sae_source(get("sae"))
    if isinstance(get("alpha"), str):
        floats(get("alpha"))
    if command == "steer":
        _check_steer(args)
    if command in ("ches", "dpo") and isinstance(get("file"), str):
        _check_preferences(get("file"))
    if command == "bias" and isinstance(get("preset"), str):
        from analysis.bias import load_presets

        presets = load_presets()
        if get("preset") not in presets:
            raise ValueError(f"--preset {get('preset')!r}: unknown; valid presets are {sorted(presets)}")
        p = presets[get("preset")]
        check_concepts((*p.targets, p.ref1, p.ref2), f"preset {get('preset')!r}")


def _check_steer(args) -> None:
    from analysis.steering import load_pair_set

    load_pair_set(args.pairs)
    try:
        from analysis.steering import SteeringConfig
    except ImportError:
        return
    kwargs = {"position": args.position}
    if getattr(args, "score", None) is not None:
        kwargs["score"] = args.score
    try:
        SteeringConfig(**kwargs)
    except TypeError:  # the config's fields changed: the command checks again after loading
        return


def _check_preferences(value: str) -> None:
    from analysis.likelihood import load_preferences, shipped_sets

    if value in shipped_sets():
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"{value}: is a folder; give a preference .jsonl/.csv file or a shipped set "
                         f"({', '.join(sorted(shipped_sets()))})")
    if not path.is_file():
        raise ValueError(f"{value}: no such file and not a shipped set; shipped sets are "
                         f"{', '.join(sorted(shipped_sets()))}")
    load_preferences(path, None)  # plain rendering: every record is checked; the chat template comes later


def _check_sae_source(source: str) -> None:
    from analysis.saes import shipped_saes

    shipped = shipped_saes()
    if source in shipped or Path(source).expanduser().is_dir() or ":" in source:
        return
    raise ValueError(f"--sae {source!r}: not a shipped SAE ({', '.join(shipped) or 'none'}), a folder with "
                     "cfg.json + sae_weights.safetensors, or a sae-lens release:sae_id")
