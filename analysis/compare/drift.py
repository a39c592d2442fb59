"""Concept drift during a DPO run, and the steering audit against random directions.

Drift (``compute_drift``): CAVs are fitted on the base model. At each chosen
step t of a DPO run (``analysis.likelihood.run_dpo`` on a copy, one deterministic
run per chosen step, so the cost is the sum of the steps; the base model is never
trained) the texts of every concept and the background are run
through the trained copy, and the change h_t − h_0 is projected onto

* each concept's own CAV (kind ``concept``), averaged over the layers where its
  CAV accuracy is ≥ ``acc_threshold``;
* each bias axis unit(CAV_r1) − unit(CAV_r2) of the preset, for every target
  (kind ``bias``), over the layers where all three pass.

The statistic is ``analysis.compare.shifts``' background-subtracted relative
shift (units of the concept's separation at step 0); the band is its bootstrap
interval over texts (same draws at every step). A row is ``flagged`` when the
band excludes 0: the concept moved more along its axis than neutral text did.
Stopping (a progress callback raising :class:`Stopped`) keeps the steps done.

Audit (``compute_audit``): a steered state's raw shift (no background term)
along each concept's CAV, against ``n_random`` random directions with the same
norm at the same layers and α; ``p = (1 + #{|random| ≥ |steered|}) / (1 + n_random)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from analysis.activations import resid_hook
from analysis.compare.shifts import (
    boot_weights,
    excludes_zero,
    interval,
    project,
    relative,
    shift,
)
from analysis.compare.views import activations, fit_state_cavs, pick_texts
from analysis.progress import Progress, Stopped, report, scaled
from analysis.recipes import check_config_keys


@dataclass(frozen=True)
class DriftConfig:
    preset: str = "professions_gender"
    concepts: tuple[str, ...] = ()
    preference_set: str = "displacement_demo"
    max_pairs: int | None = None
    steps: tuple[int, ...] = (0, 2, 4)
    beta: float = 0.1
    lr: float = 1e-5
    acc_threshold: float = 0.9
    max_texts: int | None = 24
    max_background: int | None = 48
    n_bootstrap: int = 200
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.steps, (str, int)) or not self.steps or any(int(s) < 0 for s in self.steps):
            raise ValueError(f"steps {self.steps!r}: give non-negative step numbers, e.g. (0, 2, 4)")
        if max(self.steps) > 1000:
            raise ValueError("steps: at most 1000")
        if not self.beta > 0 or not self.lr > 0:
            raise ValueError("beta and lr must be positive (e.g. beta=0.1, lr=1e-5)")
        if not 0.0 < self.acc_threshold <= 1.0 or not 0.5 <= self.ci < 1.0:
            raise ValueError("acc_threshold must be in (0, 1] and ci in [0.5, 1)")
        if self.n_bootstrap < 20:
            raise ValueError(f"n_bootstrap={self.n_bootstrap}: need at least 20")
        for cap in ("max_texts", "max_background", "max_pairs"):
            v = getattr(self, cap)
            if v is not None and v < (1 if cap == "max_pairs" else 4):
                raise ValueError(f"{cap}={v} is too small; use None for all")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["concepts"], d["steps"] = list(self.concepts), list(self.steps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DriftConfig:
        check_config_keys(cls, d, "drift")
        d = dict(d)
        d["concepts"] = tuple(d.get("concepts") or ())
        d["steps"] = tuple(int(s) for s in d.get("steps") or (0,))
        return cls(**d)


@dataclass
class Axis:
    """A direction to follow: ``name`` (concept or 'target → ref1 vs ref2'), whose texts, per-layer unit
    vectors (l, d) and the layers it is averaged over."""

    kind: str
    name: str
    texts: str
    direction: np.ndarray
    mask: np.ndarray


def axes(cavs, preset, acc_threshold: float) -> list[Axis]:
    from analysis.vectors import unit

    idx = {c: i for i, c in enumerate(cavs.concepts)}
    acc = np.asarray(cavs.accuracy) >= acc_threshold
    out = [Axis("concept", c, c, cavs.vectors[i], acc[i]) for c, i in idx.items()]
    if preset is not None and {preset.ref1, preset.ref2} <= set(idx):
        r1, r2 = idx[preset.ref1], idx[preset.ref2]
        for t in preset.targets:
            if t in idx:
                axis = unit(cavs.vectors[r1]) - unit(cavs.vectors[r2])
                out.append(Axis("bias", f"{t}: {preset.ref1} vs {preset.ref2}", t, axis,
                                acc[idx[t]] & acc[r1] & acc[r2]))
    return out


@dataclass
class DriftResult:
    """``drift``/``low``/``high``/``flagged``: (axes, steps done); ``history``: the DPO rows."""

    axes: list[tuple[str, str]]
    steps: list[int]
    drift: np.ndarray
    low: np.ndarray
    high: np.ndarray
    flagged: np.ndarray
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    messages: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def frame(self):
        import pandas as pd

        return pd.DataFrame([{"kind": k, "axis": n, "step": s, "drift": self.drift[i, j], "ci_low": self.low[i, j],
                              "ci_high": self.high[i, j], "flagged": bool(self.flagged[i, j])}
                             for i, (k, n) in enumerate(self.axes) for j, s in enumerate(self.steps)])


def _hook_paths(lm) -> list[str]:
    """Module path of each layer's resid_post HookPoint inside the module that DPO copies."""
    root = getattr(lm.model, "original_model", None) or lm.model
    names = {id(m): n for n, m in root.named_modules()}
    hooks = lm.model.hook_dict  # a property that rebuilds the bridge's aliases: read it once
    return [names[id(hooks[resid_hook(l)])] for l in range(lm.n_layers)]


class _Done(Exception):
    """Raised by the last layer's hook: every wanted activation is captured."""


@torch.inference_mode()
def module_activations(lm, module: torch.nn.Module, texts: list[str], batch_size: int = 16) -> np.ndarray:
    """Last-token ``resid_post`` of ``texts`` at every layer (l, n, d) in a trained copy ``module`` of ``lm``."""
    paths = _hook_paths(lm)
    captured: dict[int, torch.Tensor] = {}
    last_layer = len(paths) - 1

    def capture(mod, args, out, l):
        captured[l] = out.detach()
        if l == last_layer:  # skip the final norm and the (262k-wide, for Gemma) unembedding
            raise _Done

    handles = [module.get_submodule(p).register_forward_hook(
        lambda mod, args, out, l=l: capture(mod, args, out, l)) for l, p in enumerate(paths)]
    rows = []
    try:
        for start in range(0, len(texts), batch_size):
            ids, mask = lm.tokenize(texts[start: start + batch_size])
            try:
                if hasattr(module, "hook_dict"):
                    module(ids, attention_mask=mask, return_type=None)
                else:
                    module(input_ids=ids, attention_mask=mask)
            except _Done:
                pass
            last = mask.sum(1) - 1
            ar = torch.arange(ids.shape[0])
            rows.append(torch.stack([captured[l][ar, last].float().cpu() for l in range(len(paths))]))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(rows, 1).numpy()


def _measure(axes_, proj0, pos_t, neg_t, weights, ci):
    """Per axis: relative drift, band and flag from one step's activations."""
    out = []
    for ax in axes_:
        p_pos0, p_neg0 = proj0[ax.name]
        s = shift(p_pos0, project(pos_t[ax.texts], ax.direction), p_neg0, project(neg_t, ax.direction),
                  weights[ax.texts], weights["__background__"])
        point, draws = relative(s, ax.mask)
        lo, hi = interval(draws, ci)
        out.append((point, lo, hi, excludes_zero(lo, hi)))
    return out


def compute_drift(base, config: DriftConfig, progress: Progress | None = None) -> DriftResult:
    from analysis.bias import load_presets
    from analysis.compare.views import concept_names
    from analysis.likelihood import DPOConfig, load_shipped, run_dpo

    presets = load_presets()
    if config.preset not in presets:
        raise ValueError(f"unknown preset {config.preset!r}; valid presets are {sorted(presets)}")
    names = concept_names(config)
    pairs = list(load_shipped(config.preference_set, base.tokenizer).pairs)[: config.max_pairs]
    texts, background = pick_texts(config, names)
    pos0, neg0 = activations(base, texts, background, scaled(progress, 0.0, 0.15))
    report(progress, 0.15, "fitting CAVs on the base model")
    cavs = fit_state_cavs(pos0, neg0, names, config.seed)
    axes_ = [a for a in axes(cavs, presets[config.preset], config.acc_threshold)]
    messages = [f"{a.name}: no layer passes the accuracy rule; not followed" for a in axes_ if not a.mask.any()]
    axes_ = [a for a in axes_ if a.mask.any()]
    proj0 = {a.name: (project(pos0[a.texts], a.direction), project(neg0, a.direction)) for a in axes_}
    weights = {n: boot_weights(len(t), config.n_bootstrap, config.seed, n) for n, t in texts.items()}
    weights["__background__"] = boot_weights(len(background), config.n_bootstrap, config.seed, "background")
    wanted = sorted(set(int(s) for s in config.steps))
    done: dict[int, list] = {}
    all_texts = [t for n in texts for t in texts[n]]
    history: list[dict] = []
    stopped = False
    for i, step in enumerate(wanted):
        part = scaled(progress, 0.2 + 0.8 * i / len(wanted), 0.2 + 0.8 * (i + 1) / len(wanted))
        try:
            if step == 0:
                pos_t, neg_t = pos0, neg0
            else:
                # A run of `step` steps from the same seed ends where step `step` of a longer
                # run is (full-batch DPO on CPU is deterministic), so each step is its own run.
                dpo = DPOConfig(beta=config.beta, lr=config.lr, steps=step)
                run = run_dpo(base, pairs, dpo, progress=scaled(part, 0.0, 0.9), keep_model=True)
                if run.stopped_early or run.module is None:
                    raise Stopped(f"stopped during the run to step {step}")
                history = [dict(r) for r in run.history]
                report(part, 0.95, f"activations at step {step}")
                acts = module_activations(base, run.module, all_texts + background)
                del run
                pos_t, k = {}, 0
                for n, t in texts.items():
                    pos_t[n], k = acts[:, k: k + len(t)], k + len(t)
                neg_t = acts[:, k:]
            done[step] = _measure(axes_, proj0, pos_t, neg_t, weights, config.ci)
            report(part, 1.0, f"step {step} measured")
        except Stopped:
            stopped = True
            break
    steps = sorted(done)
    arr = np.array([[done[s][i] for s in steps] for i in range(len(axes_))], dtype=float).reshape(len(axes_), len(steps), 4)
    return DriftResult(
        axes=[(a.kind, a.name) for a in axes_], steps=steps, drift=arr[..., 0], low=arr[..., 1], high=arr[..., 2],
        flagged=arr[..., 3].astype(bool), history=history, stopped=stopped, messages=messages, config=config.to_dict(),
    )


# ---------------------------------------------------------------- steering audit

@dataclass(frozen=True)
class AuditResult:
    concepts: tuple[str, ...]
    shift: np.ndarray  # (c,) relative raw shift along each concept's CAV
    random: np.ndarray  # (c, n_random)
    p_value: np.ndarray
    messages: dict = field(default_factory=dict)

    def frame(self):
        import pandas as pd

        return pd.DataFrame([{"concept": c, "shift": self.shift[i], "random_abs_q95": np.nanquantile(np.abs(self.random[i]), 0.95)
                              if np.isfinite(self.random[i]).any() else np.nan, "p_value": self.p_value[i],
                              "message": self.messages.get(c, "")} for i, c in enumerate(self.concepts)])


def random_like(vector, layers, seed: int):
    """A SteeringVector with a random Gaussian direction of the same norm at each of ``layers``."""
    from analysis.sampling import rng
    from analysis.steering import SteeringVector

    g = rng(seed, "audit-random")
    out = np.zeros_like(vector.vectors)
    for l in layers:
        r = g.standard_normal(vector.vectors.shape[1])
        out[l] = r / np.linalg.norm(r) * np.linalg.norm(vector.vectors[l])
    return SteeringVector(model=vector.model, vectors=out.astype(np.float32), layers=tuple(layers))


def compute_audit(base, spec: str, config, progress: Progress | None = None, *, n_random: int = 19) -> AuditResult:
    """Raw shift of each concept (``config``: a :class:`CompareConfig`) under steered state ``spec`` vs random."""
    from pathlib import Path

    from analysis.compare.states import check_state
    from analysis.steering import SteeringVector, apply

    spec = check_state(spec)
    if spec.kind != "steer":
        raise ValueError(f"the audit needs a steered state (steer:PATH@alpha=A), not {str(spec)!r}")
    if n_random < 1:
        raise ValueError("n_random must be ≥ 1 (19 allows p = 0.05)")
    from analysis.concepts import load_concepts

    names = tuple(config.concepts) or tuple(sorted(load_concepts()))
    texts, background = pick_texts(config, names)
    pos0, neg0 = activations(base, texts, background, scaled(progress, 0.0, 0.05))
    cavs = fit_state_cavs(pos0, neg0, names, config.seed)
    chosen = np.asarray(cavs.accuracy) >= config.acc_threshold
    vector = SteeringVector.load(Path(spec.target).expanduser())
    layers = tuple(spec.layers or vector.layers)
    vectors = [vector] + [random_like(vector, layers, config.seed * 1000 + k) for k in range(n_random)]
    shifts = np.full((len(vectors), len(names)), np.nan)
    for k, vec in enumerate(vectors):
        report(progress, 0.05 + 0.95 * k / len(vectors), "steered state" if k == 0 else f"random direction {k}/{n_random}")
        digest = hashlib.sha256(vec.vectors.tobytes()).hexdigest()[:12]
        view = dataclasses.replace(base, name=f"{base.name}+steer[{digest}]@{spec.alpha:g}@{layers}", lock=base.lock)
        with apply(base, vec, spec.alpha, layers):
            pos, neg = activations(view, texts, background)
        for i, n in enumerate(names):
            u = cavs.vectors[i]
            w = np.ones((1, pos0[n].shape[1])) / pos0[n].shape[1]
            s = shift(project(pos0[n], u), project(pos[n], u), project(neg0, u), project(neg, u), w,
                      np.ones((1, neg0.shape[1])) / neg0.shape[1], subtract_background=False)
            shifts[k, i] = relative(s, chosen[i])[0] if chosen[i].any() else np.nan
    report(progress, 1.0, "done")
    steered, rand = shifts[0], shifts[1:].T
    p = (1 + np.sum(np.abs(rand) >= np.abs(steered)[:, None], 1)) / (1 + n_random)
    messages = {n: f"{n}: no layer has CAV accuracy ≥ {config.acc_threshold}" for i, n in enumerate(names) if not chosen[i].any()}
    p = np.where(np.isfinite(steered), p, np.nan)
    return AuditResult(names, steered, rand, p, messages)
