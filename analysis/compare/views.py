"""The four comparison views of two model states A and B (B − A throughout).

* ``bias``: ΔBias per target of a bias preset (``analysis.compare.delta_bias``);
* ``concepts``: Δ CAV accuracy and Δ cosine between concepts per layer, and each
  concept's shift along its own CAV (``analysis.compare.shifts``) with a CI;
* ``lens``: per-layer, per-position KL(A ‖ B) of the logit-lens distributions on a
  prompt and the next tokens whose probability changed most;
* ``likelihood``: log p(y+), log p(y−) and CHES per preference pair in both states.

States are spec strings (``analysis.compare.states``); each state's activations
are extracted inside its own ``activate`` block, one state at a time. Texts: a
seeded subsample of ``max_texts`` per concept and ``max_background`` background
texts (``analysis.sampling``), the same texts in both states.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from analysis.compare.states import activate, check_state, parse_state
from analysis.progress import Progress, report, scaled
from analysis.recipes import check_config_keys

VIEWS = ("bias", "concepts", "lens", "likelihood")


@dataclass(frozen=True)
class CompareConfig:
    """One comparison; only the fields of ``view`` matter. Also the recipe ``config``."""

    a: str = "base"
    b: str = "base"
    view: str = "bias"
    preset: str = "professions_gender"
    concepts: tuple[str, ...] = ()
    acc_threshold: float = 0.9
    n_bootstrap: int = 200
    n_permutations: int = 200
    ci: float = 0.95
    seed: int = 0
    max_texts: int | None = 32
    max_background: int | None = 64
    prompt: str = "The nurse said that"
    top_k: int = 10
    preference_set: str = "displacement_demo"
    max_pairs: int | None = None

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view {self.view!r}: valid views are {VIEWS}")
        parse_state(self.a), parse_state(self.b)
        if isinstance(self.concepts, str):
            raise ValueError("concepts must be a tuple of concept names, e.g. ('food_aspect', 'positive_sentiment')")
        if not 0.0 < self.acc_threshold <= 1.0:
            raise ValueError(f"acc_threshold={self.acc_threshold}: must be in (0, 1], e.g. 0.9")
        if self.n_bootstrap < 20 or self.n_permutations < 19:
            raise ValueError("n_bootstrap must be ≥ 20 and n_permutations ≥ 19 (p can reach 0.05), e.g. 200 each")
        if not 0.5 <= self.ci < 1.0:
            raise ValueError(f"ci={self.ci}: must be in [0.5, 1), e.g. 0.95")
        for cap in ("max_texts", "max_background"):
            value = getattr(self, cap)
            if value is not None and value < 4:
                raise ValueError(f"{cap}={value}: use at least 4 texts, or None for all")
        if not 1 <= self.top_k <= 100:
            raise ValueError(f"top_k={self.top_k}: must be in 1..100")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs={self.max_pairs}: must be ≥ 1, or None for all")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"] = list(self.concepts)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CompareConfig:
        check_config_keys(cls, d, "compare")
        d = dict(d)
        d["concepts"] = tuple(d.get("concepts") or ())
        return cls(**d)


# ---------------------------------------------------------------- shared steps

def pick_texts(config, names) -> tuple[dict[str, list[str]], list[str]]:
    """The seeded text subsample of each concept and of the background (validated names)."""
    from analysis.concepts import background_texts, load_concepts
    from analysis.sampling import subsample

    sets = load_concepts()
    missing = [n for n in names if n not in sets]
    if missing:
        raise ValueError(f"unknown concepts {missing}; available concepts are {sorted(sets)}")
    texts = {n: subsample(list(sets[n].texts), config.max_texts, config.seed, n) for n in names}
    return texts, subsample(list(background_texts()), config.max_background, config.seed, "background")


def activations(lm, texts: dict[str, list[str]], background: list[str], progress: Progress | None = None):
    """``(positives {name: (l, n, d)}, negatives (l, m, d))`` at every layer of ``lm``."""
    from analysis.concepts import stacked_activations

    layers = list(range(lm.n_layers))
    total = len(texts) + 1
    neg = stacked_activations(lm, background, layers, "last",
                              progress=lambda f: report(progress, f / total, "activations: background"))
    pos = {}
    for i, (name, t) in enumerate(texts.items()):
        pos[name] = stacked_activations(lm, t, layers, "last",
                                        progress=lambda f, i=i, n=name: report(progress, (i + 1 + f) / total, f"activations: {n}"))
    return pos, neg


def fit_state_cavs(pos, neg, names, seed: int, method: str = "logistic"):
    """CAVs and held-out accuracies of one state at every layer (``analysis.concepts.fit_cavs_arrays``)."""
    from analysis.concepts import CavConfig, fit_cavs_arrays

    layers = list(range(next(iter(pos.values())).shape[0]))
    return fit_cavs_arrays(pos, neg, CavConfig(concepts=tuple(names), method=method, n_random=1, seed=seed), layers)


def both_states(base, config, names, progress, models=None):
    """Activations and CAVs of A then B: ``[(pos, neg, cavs), (pos, neg, cavs)]``."""
    texts, background = pick_texts(config, names)
    out = []
    for i, spec in enumerate((config.a, config.b)):
        with activate(base, spec, models=models) as lm:
            pos, neg = activations(lm, texts, background, scaled(progress, 0.45 * i, 0.45 * i + 0.35))
        report(progress, 0.45 * i + 0.35, f"fitting CAVs in state {'AB'[i]}")
        out.append((pos, neg, fit_state_cavs(pos, neg, names, config.seed)))
    return out


def preset_bias_config(config: CompareConfig):
    from analysis.bias import preset_config

    return preset_config(config.preset, acc_threshold=config.acc_threshold, n_bootstrap=max(20, config.n_bootstrap),
                         n_permutations=config.n_permutations, seed=config.seed, ci=config.ci)


# ---------------------------------------------------------------- bias

def compare_bias(base, config: CompareConfig, progress: Progress | None = None, *, models=None):
    """ΔBias of the preset's targets (:class:`analysis.compare.delta_bias.DeltaBias`)."""
    from analysis.compare.delta_bias import delta_bias_from_arrays

    check_state(config.a), check_state(config.b)
    bias_cfg = preset_bias_config(config)
    (pa, na, ca), (pb, nb, cb) = both_states(base, config, bias_cfg.concepts, progress, models)
    report(progress, 0.9, "bootstrap and permutations")
    result = delta_bias_from_arrays(pa, na, pb, nb, ca.vectors, ca.accuracy, cb.vectors, cb.accuracy,
                                    bias_cfg, ca.layers)
    report(progress, 1.0, "done")
    return result


# ---------------------------------------------------------------- concepts

@dataclass(frozen=True)
class ConceptDelta:
    """``acc_*``: (c, l); ``cos_*``: (l, c, c); shift of each concept along its A-state CAV.

    ``shift``/``shift_low``/``shift_high``: relative shift (units of the concept's
    separation in A) over ``chosen`` layers (A accuracy ≥ threshold); ``moved``:
    the CI excludes 0.
    """

    concepts: tuple[str, ...]
    layers: tuple[int, ...]
    acc_a: np.ndarray
    acc_b: np.ndarray
    cos_a: np.ndarray
    cos_b: np.ndarray
    shift_layers: np.ndarray  # (c, l) relative shift per layer
    chosen: np.ndarray
    shift: np.ndarray
    shift_low: np.ndarray
    shift_high: np.ndarray
    moved: np.ndarray
    messages: dict = field(default_factory=dict)

    def frame(self):
        import pandas as pd

        return pd.DataFrame([{"concept": c, "shift": self.shift[i], "ci_low": self.shift_low[i],
                              "ci_high": self.shift_high[i], "moved": bool(self.moved[i]),
                              "layers": " ".join(str(l) for l, k in zip(self.layers, self.chosen[i]) if k),
                              "message": self.messages.get(c, "")} for i, c in enumerate(self.concepts)])

    def layer_frame(self):
        import pandas as pd

        return pd.DataFrame([{"concept": c, "layer": l, "acc_a": self.acc_a[i, j], "acc_b": self.acc_b[i, j],
                              "delta_acc": self.acc_b[i, j] - self.acc_a[i, j], "shift": self.shift_layers[i, j]}
                             for i, c in enumerate(self.concepts) for j, l in enumerate(self.layers)])


def concept_delta_from_arrays(pa, na, pb, nb, cavs_a, cavs_b, *, acc_threshold: float, n_bootstrap: int,
                              seed: int, ci: float) -> ConceptDelta:
    from analysis.compare.shifts import (
        boot_weights,
        excludes_zero,
        interval,
        project,
        relative,
        shift,
    )
    from analysis.vectors import cosine_matrix

    names = tuple(cavs_a.concepts)
    n_l = len(cavs_a.layers)
    w_neg = boot_weights(na.shape[1], n_bootstrap, seed, "background")
    out = {k: np.full(len(names), np.nan) for k in ("s", "lo", "hi")}
    per_layer = np.full((len(names), n_l), np.nan)
    chosen = np.asarray(cavs_a.accuracy) >= acc_threshold
    messages = {}
    for i, name in enumerate(names):
        u = cavs_a.vectors[i]
        s = shift(project(pa[name], u), project(pb[name], u), project(na, u), project(nb, u),
                  boot_weights(pa[name].shape[1], n_bootstrap, seed, name), w_neg)
        per_layer[i] = s.point / np.where(np.abs(s.separation) > 1e-12, s.separation, np.nan)
        if not chosen[i].any():
            messages[name] = f"{name}: no layer has CAV accuracy ≥ {acc_threshold} in state A"
            continue
        out["s"][i], draws = relative(s, chosen[i])
        out["lo"][i], out["hi"][i] = interval(draws, ci)
    moved = np.array([excludes_zero(lo, hi) for lo, hi in zip(out["lo"], out["hi"])])
    cos = [np.stack([cosine_matrix(c.vectors[:, l]) for l in range(n_l)]) for c in (cavs_a, cavs_b)]
    return ConceptDelta(names, tuple(cavs_a.layers), np.asarray(cavs_a.accuracy), np.asarray(cavs_b.accuracy),
                        cos[0], cos[1], per_layer, chosen, out["s"], out["lo"], out["hi"], moved, messages)


def concept_names(config: CompareConfig) -> tuple[str, ...]:
    if config.concepts:
        return tuple(config.concepts)
    from analysis.bias import load_presets

    presets = load_presets()
    if config.preset not in presets:
        raise ValueError(f"unknown preset {config.preset!r}; valid presets are {sorted(presets)}")
    p = presets[config.preset]
    return (*p.targets, p.ref1, p.ref2)


def compare_concepts(base, config: CompareConfig, progress: Progress | None = None, *, models=None) -> ConceptDelta:
    check_state(config.a), check_state(config.b)
    names = concept_names(config)
    (pa, na, ca), (pb, nb, cb) = both_states(base, config, names, progress, models)
    report(progress, 0.95, "shifts along each CAV")
    result = concept_delta_from_arrays(pa, na, pb, nb, ca, cb, acc_threshold=config.acc_threshold,
                                       n_bootstrap=config.n_bootstrap, seed=config.seed, ci=config.ci)
    report(progress, 1.0, "done")
    return result


# ---------------------------------------------------------------- lens

@dataclass(frozen=True)
class LensDelta:
    """``kl``: (layers, positions) KL(A ‖ B) of the logit lens; ``changed``: next-token changes."""

    tokens: tuple[str, ...]
    kl: np.ndarray
    changed: object  # pandas DataFrame: token, p_a, p_b, delta

    def frame(self):
        import pandas as pd

        return pd.DataFrame([{"layer": l, "position": p, "token": self.tokens[p], "kl": self.kl[l, p]}
                             for l in range(self.kl.shape[0]) for p in range(self.kl.shape[1])])


@torch.inference_mode()
def _lens(lm, text: str) -> torch.Tensor:
    """(layers, positions, vocab) logit-lens log-probs of ``text`` in state ``lm`` (float32, CPU)."""
    from analysis.activations import resid_hook
    from analysis.inspection import lens_log_probs

    ids, mask = lm.tokenize([text])
    names = {resid_hook(l) for l in range(lm.n_layers)}
    with lm.locked() as model:
        _, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n in names)
        return torch.stack([lens_log_probs(model, cache[resid_hook(l)][0]).float().cpu() for l in range(lm.n_layers)])


def compare_lens(base, config: CompareConfig, progress: Progress | None = None, *, models=None) -> LensDelta:
    import pandas as pd

    from analysis.inspection import check_prompts, display_token

    check_state(config.a), check_state(config.b)
    check_prompts(base, [config.prompt])
    lens = []
    for i, spec in enumerate((config.a, config.b)):
        report(progress, 0.5 * i, f"logit lens in state {'AB'[i]}")
        with activate(base, spec, models=models) as lm:
            lens.append(_lens(lm, config.prompt))
    la, lb = lens
    kl = (la.exp() * (la - lb)).sum(-1).clamp_min(0).numpy()
    pa, pb = la[-1, -1].exp(), lb[-1, -1].exp()
    order = (pb - pa).abs().argsort(descending=True)[: config.top_k]
    changed = pd.DataFrame([{"token": display_token(base.tokenizer.decode([int(t)])), "id": int(t),
                             "p_a": float(pa[t]), "p_b": float(pb[t]), "delta": float(pb[t] - pa[t])} for t in order])
    ids, _ = base.tokenize([config.prompt])
    tokens = tuple(display_token(base.tokenizer.decode([int(t)])) for t in ids[0])
    report(progress, 1.0, "done")
    return LensDelta(tokens, kl, changed)


# ---------------------------------------------------------------- likelihood

def compare_likelihood(base, config: CompareConfig, progress: Progress | None = None, *, models=None):
    """Per pair: log p(y+), log p(y−), CHES and length-normalised CHES in A and B (a DataFrame)."""
    import pandas as pd

    from analysis.likelihood import LikelihoodConfig, load_shipped, score_pairs

    check_state(config.a), check_state(config.b)
    pairs = list(load_shipped(config.preference_set, base.tokenizer).pairs)[: config.max_pairs]
    cols = {}
    for i, spec in enumerate((config.a, config.b)):
        report(progress, 0.5 * i, f"scoring pairs in state {'AB'[i]}")
        with activate(base, spec, models=models) as lm:
            s = score_pairs(lm, pairs, LikelihoodConfig(top_k=config.top_k))
        side = "ab"[i]
        cols.update({f"logp_chosen_{side}": s.chosen.logp, f"logp_rejected_{side}": s.rejected.logp,
                     f"ches_{side}": s.ches, f"ches_ln_{side}": s.ches_ln})
    frame = pd.DataFrame({"pair": range(len(pairs)), "prompt": [p.prompt for p in pairs], **cols})
    frame["delta_logp_chosen"] = frame.logp_chosen_b - frame.logp_chosen_a
    frame["delta_logp_rejected"] = frame.logp_rejected_b - frame.logp_rejected_a
    report(progress, 1.0, "done")
    return frame


COMPUTE = {"bias": compare_bias, "concepts": compare_concepts, "lens": compare_lens, "likelihood": compare_likelihood}


def compare(base, config: CompareConfig, progress: Progress | None = None, *, models=None):
    """Run ``config.view``; the result type depends on the view (see each ``compare_*``)."""
    return COMPUTE[config.view](base, config, progress, models=models)
