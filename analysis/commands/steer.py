"""``repscope steer``: build a steering vector, search layers, sweep α, write figures and numbers.

Default pipeline (the issue's "default ``repscope steer``"): vectors of every layer from
the training pairs; the behavioural layer search over the first half of the layers; an
α sweep on the held-out pairs with a random-direction null band and side effects (loss
and KL on a capped background sample, CAV projection shifts); the paper preset's
generations next to unsteered ones with ``--generate``. ``summary.json`` has every number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args, write_figure


def _floats(text: str, what: str = "--alpha") -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"{what} {text!r}: give comma-separated numbers, e.g. -2,-1,0,1,2") from err


def _config(args):
    from analysis.steering.search import SearchConfig
    from analysis.steering.vector import SteeringConfig

    search = SearchConfig(rule=args.rule, strengths=tuple(_floats(args.strengths, "--strengths")),
                          loss_budget=args.loss_budget, max_background=args.search_background, seed=args.seed)
    return SteeringConfig(position=args.position, score=args.score, search=search,
                          search_layers=tuple(args.search_layers) if args.search_layers else None)


def _progress(quiet: bool):
    import sys
    import time

    start = time.perf_counter()
    last = [""]

    def show(fraction: float, stage: str) -> None:
        if not quiet and stage != last[0]:
            last[0] = stage
            print(f"[{time.perf_counter() - start:6.1f}s {100 * fraction:3.0f}%] {stage}", file=sys.stderr, flush=True)
    return show


def run_steer(lm, args) -> list[Path]:
    """The whole pipeline on a loaded model; returns the files written."""
    import time

    from analysis.progress import scaled
    from analysis.recipes import make_recipe
    from analysis.steering.evaluation import compute_alpha_sweep, fit_cav_probe
    from analysis.steering.figures import alpha_sweep_figure, cav_shift_figure, search_figure
    from analysis.steering.pairs import load_pair_set

    timings = {}
    t0 = time.perf_counter()
    progress = _progress(getattr(args, "quiet", False))
    out = Path(args.out)
    formats = [f for f in args.formats.split(",") if f]
    pair_set = load_pair_set(args.pairs)
    cfg = _config(args)
    from analysis.concepts import background_texts

    background = list(background_texts())
    vec, search, acts = _build(lm, pair_set, cfg, args, background, scaled(progress, 0.0, 0.5))
    timings["vectors_and_search"] = time.perf_counter() - t0
    layer = vec.layers[0]
    config = {"pairs": args.pairs, "position": args.position, "score": args.score, "layer": layer}
    written = [vec.save(out / "steering_vector.safetensors")]
    written += write_figure(search_figure(search, chosen=layer), _search_frame(search), make_recipe(
        "steering_layer_search", lm.name, {k: v for k, v in config.items() if k != "layer"}),
        out, "layer_search", formats)
    t1 = time.perf_counter()
    cavs, cav_error = None, None
    if args.cav_shifts:
        try:
            cavs = fit_cav_probe(lm, max_texts=args.cav_texts, progress=scaled(progress, 0.5, 0.6))
        except ValueError as err:  # e.g. a workspace concept too small to fit: report it, keep the run
            cav_error = str(err)
    timings["cav_probe"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    alphas = _floats(args.alpha)
    test = pair_set.test or pair_set.pairs
    sweep = compute_alpha_sweep(lm, vec, test, alphas, background=background, max_background=args.background,
                                n_null=args.null, cavs=cavs, seed=args.seed, progress=scaled(progress, 0.6, 0.95))
    timings["alpha_sweep"] = time.perf_counter() - t1
    written += write_figure(alpha_sweep_figure(sweep), sweep.frame(),
                            make_recipe("steering_alpha_sweep", lm.name, {**config, "alphas": alphas}),
                            out, "alpha_sweep", formats)
    if sweep.cav_shift is not None:
        written += write_figure(cav_shift_figure(sweep), sweep.frame(), make_recipe(
            "steering_alpha_sweep", lm.name, {**config, "alphas": alphas}), out, "cav_shift", formats)
    summary = {
        "model": lm.name, "pairs": pair_set.name, "n_train": len(pair_set.train or pair_set.pairs),
        "n_test": len(test), "position": args.position, "score": args.score,
        "search_rule": vec.meta["rule"], "degenerate": vec.meta["degenerate"],
        "chosen_layer": layer, "best_layer": search.best, "search": search.summary(),
        "behavioural_scores": (dict(zip(map(str, search.layers.tolist()), search.summary()["scores"]))
                               if search.score == "behavioural" else None),
        "distributional_scores": {"layers": list(vec.meta["search_layers"]), **vec.meta["distributional"]},
        "vector_norms": [float(x) for x in (vec.vectors.astype("float64") ** 2).sum(1) ** 0.5],
        "alpha_sweep": sweep.summary(),
    }
    if cav_error:
        summary["alpha_sweep"]["cav_shift_error"] = cav_error
    if args.generate:
        t1 = time.perf_counter()
        summary["generations"] = _generations(lm, vec, layer, args, scaled(progress, 0.95, 1.0))
        timings["generation"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    summary["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    path = out / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(summary), indent=2, allow_nan=False))
    tmp.replace(path)
    written.append(path)
    return written


def _jsonable(x):
    """Strict JSON: NaN/inf (a cell not run, a stopped step) become null; numpy scalars become floats."""
    import math

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _build(lm, pair_set, cfg, args, background, progress):
    from analysis.steering.vector import build_steering_vector

    return build_steering_vector(lm, pair_set, cfg, layer=args.layer, background=background, progress=progress)


def _search_frame(search):
    import pandas as pd

    if search.score != "behavioural":
        return pd.DataFrame({"layer": search.layers, "score": search.scores})
    rows = [{"layer": int(l), "strength": float(s), "alpha": float(search.alphas[i, j]),
             "gain": search.gain[i, j], "gain_sem": search.gain_sem[i, j], "loss_cost": search.cost[i, j],
             "loss_cost_sem": search.cost_sem[i, j], "layer_score": search.scores[i]}
            for i, l in enumerate(search.layers) for j, s in enumerate(search.strengths)]
    return pd.DataFrame(rows)


def _generations(lm, vec, layer, args, progress) -> dict:
    """The paper preset on each prompt: unsteered and steered side by side."""
    from dataclasses import replace

    from analysis.steering.generation import PRESETS, Steering, generate_side_by_side

    preset = PRESETS["paper"]
    cfg = replace(preset.config, max_new_tokens=args.max_new_tokens)
    prompts = args.prompt or ["I went to the new restaurant downtown and", "My weekend was"]
    out = {"preset": "paper", "description": preset.description, "alpha": preset.alpha, "layer": layer,
           "repetition_penalty": cfg.repetition_penalty, "max_new_tokens": cfg.max_new_tokens, "items": []}
    for i, prompt in enumerate(prompts):
        progress(i / len(prompts), f"generating {i + 1}/{len(prompts)} (paper preset)")
        plain, steered = generate_side_by_side(lm, prompt, cfg, Steering(vec, preset.alpha, (layer,)))
        out["items"].append({"prompt": prompt, "unsteered": plain.text, "steered": steered.text})
    return out


def _steer(args) -> int:
    from analysis.steering.pairs import load_pair_set

    load_pair_set(args.pairs)  # bad input exits before the model loads
    _config(args)
    _floats(args.alpha)
    lm = load_from_args(args)
    for path in run_steer(lm, args):
        print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("steer", help="build a steering vector from contrastive pairs; layer search and α sweep")
    p.add_argument("--pairs", required=True, help="a shipped set (sentiment, register, facts, future_past) or a .jsonl/.csv file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", default="-2,-1,0,1,2", help="comma-separated α (multipliers of v) for the sweep; write --alpha=-2,2 when the first is negative")
    p.add_argument("--position", default="minus2", help="minus2 (the paper's), last or completion_mean")
    p.add_argument("--score", default="behavioural", help="layer search: behavioural (default), auto (behavioural when the paper score is degenerate), paper (the authors' heuristic), exact (JS) or centred (JS of z-scored activations)")
    p.add_argument("--rule", default="budget", help="behavioural rule: budget (largest gain within --loss-budget) or ratio (gain per nat of loss)")
    p.add_argument("--strengths", default="0.25,0.5,1", help="behavioural search strengths, in units of each layer's mean residual norm")
    p.add_argument("--loss-budget", type=float, default=0.25, help="background-loss increase allowed by the budget rule (nats/token)")
    p.add_argument("--search-background", type=int, default=8, help="background texts in the search's seeded sample")
    p.add_argument("--background", type=int, default=16, help="background texts in the sweep's seeded sample (0: all)")
    p.add_argument("--null", type=int, default=4, help="random directions for the null band (0: none)")
    p.add_argument("--cav-shifts", action=argparse.BooleanOptionalAction, default=True, help="measure projection shifts on the shipped concepts' CAVs (last layer)")
    p.add_argument("--cav-texts", type=int, default=32, help="texts per concept for those CAVs")
    p.add_argument("--seed", type=int, default=0, help="seed of every sample and random direction")
    p.add_argument("--layer", type=int, default=None, help="use this layer instead of the search's best")
    p.add_argument("--search-layers", type=int, nargs="+", default=None, help="candidate layers (default: first half)")
    p.add_argument("--generate", action="store_true", help="also generate with the paper preset (α −1.6, greedy, repetition penalty 1.5)")
    p.add_argument("--prompt", action="append", default=None, help="prompt for --generate (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="new tokens for --generate (the paper: 200)")
    p.add_argument("--formats", default="png", help="figure formats, comma-separated: png,svg,pdf ('' for none)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_model_args(p)
    p.set_defaults(func=_steer)
