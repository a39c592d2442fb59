"""``repscope steer``: build a steering vector, search layers, sweep α, write figures and numbers."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args, write_figure


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--alpha {text!r}: give comma-separated numbers, e.g. -2,-1,0,1,2") from err


def run_steer(lm, args) -> list[Path]:
    """The whole pipeline on a loaded model; returns the files written."""
    import pandas as pd

    from analysis.steering.figures import alpha_sweep_figure, layer_search_figure
    from analysis.steering.pairs import load_pair_set
    from analysis.recipes import make_recipe
    from analysis.steering.vector import SteeringConfig, build_steering_vector, layer_search
    from analysis.steering.evaluation import compute_alpha_sweep

    out = Path(args.out)
    formats = [f for f in args.formats.split(",") if f]
    pair_set = load_pair_set(args.pairs)
    cfg = SteeringConfig(position=args.position, score=args.score,
                         search_layers=tuple(args.search_layers) if args.search_layers else None)
    vec, search, acts = build_steering_vector(lm, pair_set, cfg, layer=args.layer)
    config = {"pairs": args.pairs, "position": args.position, "score": args.score, "layer": vec.layers[0]}
    written = [vec.save(out / "steering_vector.safetensors")]
    frame = pd.DataFrame({"layer": search.layers, "score": search.scores})
    written += write_figure(layer_search_figure(search, chosen=vec.layers[0]), frame,
                            make_recipe("steering_layer_search", lm.name, config), out, "layer_search", formats)
    every = {s: layer_search(acts, s).scores.tolist() for s in ("paper", "exact")}
    alphas = _floats(args.alpha)
    test = pair_set.test or pair_set.pairs
    sweep = compute_alpha_sweep(lm, vec, test, alphas)
    written += write_figure(alpha_sweep_figure(sweep), sweep.frame(),
                            make_recipe("steering_alpha_sweep", lm.name, {**config, "alphas": alphas}),
                            out, "alpha_sweep", formats)
    summary = {
        "model": lm.name, "pairs": pair_set.name, "n_train": len(pair_set.train), "n_test": len(test),
        "position": args.position, "score": args.score, "chosen_layer": vec.layers[0], "best_layer": search.best,
        "search": {"layers": search.layers.tolist(), "scores": search.scores.tolist()},
        "all_layer_scores": every, "vector_norms": [float(x) for x in (vec.vectors ** 2).sum(1) ** 0.5],
        "alpha_sweep": sweep.frame().to_dict(orient="list"),
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    written.append(path)
    return written


def _steer(args) -> int:
    from analysis.steering.pairs import load_pair_set

    load_pair_set(args.pairs)  # bad input exits before the model loads
    lm = load_from_args(args)
    for path in run_steer(lm, args):
        print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("steer", help="build a steering vector from contrastive pairs; layer search and α sweep")
    p.add_argument("--pairs", required=True, help="a shipped set (sentiment, register, facts, future_past) or a .jsonl/.csv file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", default="-4,-2,-1,0,1,2,4", help="comma-separated α values for the sweep; write --alpha=-2,2 when the first is negative")
    p.add_argument("--position", default="minus2", help="minus2 (the paper's), last or completion_mean")
    p.add_argument("--score", default="paper", help="layer-search score: paper (the authors' variant) or exact (JS)")
    p.add_argument("--layer", type=int, default=None, help="use this layer instead of the search's best")
    p.add_argument("--search-layers", type=int, nargs="+", default=None, help="candidate layers (default: first half)")
    p.add_argument("--formats", default="png", help="figure formats, comma-separated: png,svg,pdf ('' for none)")
    add_model_args(p)
    p.set_defaults(func=_steer)
