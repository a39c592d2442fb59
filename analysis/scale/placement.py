"""Parsing of the placement options every model command shares.

``--device-map`` and ``--max-memory`` arrive as strings (CLI) or dicts (code);
these turn them into what ``analysis.models.load_model`` (and accelerate
under it) takes, with errors that list the valid forms.
"""

from __future__ import annotations

import json

from analysis.models import DEVICE_MAPS


def parse_device_map(text: str | dict | None) -> str | dict | None:
    """``--device-map``: None/"" (one device), auto, balanced, balanced_low_0, sequential,
    or a JSON object mapping HF module names to devices (``{"model.layers.0": 0, ...}``)."""
    if text in (None, "", "none"):
        return None
    if isinstance(text, dict):
        mapping = text
    elif text in DEVICE_MAPS:
        return text
    else:
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(
                f"device map {text!r}: valid values are {', '.join(DEVICE_MAPS)} or a JSON object "
                'such as {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1}'
            ) from None
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"device map {text!r}: a JSON device map must be a non-empty object")
    for module, dev in mapping.items():
        ok = isinstance(dev, int) and dev >= 0 or isinstance(dev, str) and (
            dev in ("cpu", "disk", "meta") or dev.split(":")[0] in ("cuda", "mps"))
        if not ok:
            raise ValueError(f"device map entry {module!r}: {dev!r} is not a device (an int GPU index, 'cpu', 'cuda:N')")
    return dict(mapping)


def parse_max_memory(text: str | dict | None) -> dict | None:
    """``--max-memory``: ``0=20GiB,1=20GiB,cpu=64GiB`` or the same as a JSON object."""
    if text in (None, ""):
        return None
    if isinstance(text, dict):
        items = text.items()
    elif text.lstrip().startswith("{"):
        items = json.loads(text).items()
    else:
        items = []
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"max memory {text!r}: write DEVICE=SIZE pairs, e.g. 0=20GiB,cpu=64GiB")
            items.append((key.strip(), value.strip()))
    out: dict = {}
    for key, value in items:
        key = int(key) if str(key).isdigit() else str(key)
        if not isinstance(key, int) and key not in ("cpu", "disk", "mps"):
            raise ValueError(f"max memory device {key!r}: use a GPU index (0, 1, ...), 'cpu' or 'disk'")
        out[key] = value
    return out


