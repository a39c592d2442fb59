"""The shipped bias presets (``assets/bias/presets.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    targets: tuple[str, ...]
    ref1: str
    ref2: str
    templates: str = "evaluative"


def load_presets() -> dict[str, Preset]:
    """The presets in ``assets/bias/presets.yaml``."""
    import yaml

    from analysis.paths import ASSETS

    raw = yaml.safe_load((ASSETS / "bias" / "presets.yaml").read_text())["presets"]
    return {k: Preset(name=k, title=v["title"], description=v["description"], targets=tuple(v["targets"]),
                      ref1=v["ref1"], ref2=v["ref2"], templates=v.get("templates", "evaluative")) for k, v in raw.items()}


def preset_config(name: str, **overrides):
    """A ``BiasConfig`` for a preset; ``overrides`` set any other field."""
    from analysis.bias.compute import BiasConfig

    presets = load_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets are {sorted(presets)}")
    p = presets[name]
    return BiasConfig(targets=p.targets, ref1=p.ref1, ref2=p.ref2, **overrides)
