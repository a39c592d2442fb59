"""Settings of a DPO run (Methods §4): optimizer, batches, seeds, SFT warm-up, the paper preset.

The paper preset is the authors' single-token persona setting
(princeton-nlp/unintentional-unalignment): DPO with beta 0.1, RMSprop at the
torch defaults with lr 1e-7, full-batch steps, 101 epochs (101 optimizer
steps), one prompt per run and one run per seed; optionally one epoch of SFT
(cross-entropy on y+, RMSprop, lr 1e-7) first. The authors run 10 seeds; the
preset runs 3 to keep a CPU run within minutes (pass ``seeds`` for more).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from analysis.likelihood.ches import LikelihoodConfig
from analysis.recipes import check_config_keys

# name -> (constructor, memory factor: weights + gradients + optimizer states, in model copies)
OPTIMIZERS = {
    "rmsprop": (torch.optim.RMSprop, 3.0),
    "adam": (torch.optim.Adam, 4.0),
    "sgd": (torch.optim.SGD, 2.0),
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"beta": 0.1, "optimizer": "rmsprop", "lr": 1e-7, "steps": 101, "minibatch": 0,
              "pairs_per_run": 1, "seeds": (0, 1, 2), "sft_epochs": 0, "append_eos": False},
    "paper_sft": {"beta": 0.1, "optimizer": "rmsprop", "lr": 1e-7, "steps": 101, "minibatch": 0,
                  "pairs_per_run": 1, "seeds": (0, 1, 2), "sft_epochs": 1, "sft_lr": 1e-7, "append_eos": False},
    "quick": {"beta": 0.1, "optimizer": "adam", "lr": 1e-5, "steps": 10, "minibatch": 0,
              "pairs_per_run": 0, "seeds": (0,), "sft_epochs": 0},
}
_TUPLES = ("seeds", "watch_tokens")


@dataclass(frozen=True)
class DPOConfig:
    """One DPO experiment: ``len(seeds)`` runs, each on a fresh copy of the model.

    ``minibatch``: pairs per optimizer step (0 = all the run's pairs, full batch;
    otherwise a seeded shuffle per epoch). ``pairs_per_run``: 0 = every selected
    pair in every run; k = each seed draws k of the selected pairs (the paper:
    1, a different prompt per seed). ``sft_epochs`` of cross-entropy on y+
    (token-mean per response, mean over pairs) at ``sft_lr`` (0 = ``lr``) come
    first; the DPO reference is the model after SFT. ``watch_tokens`` are
    optional; ``discover`` tokens with the largest probability gain are
    recorded per step. ``chunk_size`` only bounds memory (gradients accumulate).
    """

    beta: float = 0.1
    lr: float = 1e-5
    steps: int = 10
    optimizer: str = "adam"
    minibatch: int = 0
    seeds: tuple[int, ...] = (0,)
    pairs_per_run: int = 0
    sft_epochs: int = 0
    sft_lr: float = 0.0
    watch_tokens: tuple[str, ...] = ()
    discover: int = 10
    append_eos: bool = False
    top_k: int = 10
    chunk_size: int = 8

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (the paper uses 0.1), got {self.beta}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (the paper uses 1e-7 with RMSprop), got {self.lr}")
        if not isinstance(self.steps, int) or not 0 <= self.steps <= 1000:
            raise ValueError(f"steps must be an integer in 0..1000 (the paper: 101), got {self.steps!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: valid optimizers are {list(OPTIMIZERS)}")
        for name in ("minibatch", "pairs_per_run", "sft_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 = {'all' if name != 'sft_epochs' else 'no SFT'}), got {v!r}")
        if self.sft_epochs > 10:
            raise ValueError(f"sft_epochs must be at most 10 (the paper: 1), got {self.sft_epochs}")
        if not self.sft_lr >= 0:
            raise ValueError(f"sft_lr must be >= 0 (0 = the DPO lr), got {self.sft_lr}")
        if (not isinstance(self.seeds, tuple) or not 1 <= len(self.seeds) <= 20
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds)
                or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be a tuple of 1-20 distinct integers >= 0 such as (0, 1, 2), got {self.seeds!r}")
        if not isinstance(self.watch_tokens, tuple) or not all(isinstance(t, str) and t for t in self.watch_tokens):
            raise ValueError(f"watch_tokens must be a tuple of non-empty strings such as (' Yes',), got {self.watch_tokens!r}")
        if not isinstance(self.discover, int) or not 1 <= self.discover <= 100:
            raise ValueError(f"discover must be an integer in 1..100 (the paper records 10), got {self.discover!r}")
        LikelihoodConfig(top_k=self.top_k, batch_size=self.chunk_size)

    @property
    def sft_rate(self) -> float:
        return self.sft_lr or self.lr

    @property
    def memory_factor(self) -> float:
        return OPTIMIZERS[self.optimizer][1]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DPOConfig":
        """A named preset (``PRESETS``: paper, paper_sft, quick) with ``overrides`` applied."""
        if name not in PRESETS:
            raise ValueError(f"preset {name!r}: valid presets are {list(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DPOConfig":
        check_config_keys(cls, d, "DPO")
        d = {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _TUPLES:
            d[k] = list(d[k])
        return d

    def with_(self, **changes: Any) -> "DPOConfig":
        return replace(self, **changes)


def config_dict(cfg: DPOConfig) -> dict[str, Any]:
    """JSON-ready settings (tuples as lists), the form recipes store."""
    return cfg.to_dict()


def preset_of(cfg: DPOConfig) -> str | None:
    """The preset whose every setting ``cfg`` shares, if any."""
    for name, values in PRESETS.items():
        full = DPOConfig.from_dict(values)
        if all(getattr(full, f.name) == getattr(cfg, f.name) for f in fields(DPOConfig) if f.name in values):
            return name
    return None
