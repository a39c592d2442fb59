"""``repscope bias``: bias asymmetry (BiasLens) of targets between two references, headless.

``--preset NAME`` or ``--targets a,b --refs r1,r2`` (or ``--recipe FILE`` from an
exported bias figure) writes into ``--out``: the heatmap, summary, shared-latents
and behaviour figures (each with CSV and recipe), ``bias_layers.csv`` and
``bias.json`` with every number (per-layer Bias and CIs, accuracies, summaries,
bootstrap and null bands, shared latents, behavioural scores, Spearman r).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args, write_figure


def _names(value: str, flag: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ValueError(f"{flag}: give comma-separated concept names, e.g. food_aspect,service_aspect")
    return names


def config_from_args(args):
    """The :class:`BiasConfig` and template-set name the arguments ask for."""
    from analysis.bias.compute import BiasConfig, load_presets
    from analysis.recipes import read_recipe

    options = dict(
        representation=args.representation, top_k=args.top_k, signed=not args.absolute,
        layer_rule="layer" if args.layer is not None else "threshold", layer=args.layer,
        acc_threshold=args.acc_threshold, n_bootstrap=args.n_bootstrap, n_permutations=args.n_permutations,
        seed=args.seed, cav_method=args.cav_method, max_texts=args.max_texts, max_background=args.max_background,
    )
    templates = args.templates
    if args.recipe:
        recipe = read_recipe(args.recipe)
        if not recipe["figure"].startswith("bias_") or recipe["figure"] == "bias_behaviour":
            raise ValueError(f"{args.recipe}: a {recipe['figure']!r} recipe; give a bias_heatmap or bias_summary recipe")
        return BiasConfig.from_dict(recipe["config"]), templates
    if args.preset:
        presets = load_presets()
        if args.preset not in presets:
            raise ValueError(f"unknown preset {args.preset!r}; valid presets are {sorted(presets)}")
        p = presets[args.preset]
        return BiasConfig(targets=p.targets, ref1=p.ref1, ref2=p.ref2, **options), templates or p.templates
    if not (args.targets and args.refs):
        raise ValueError("give --preset NAME, or --targets a,b and --refs r1,r2, or --recipe FILE")
    refs = _names(args.refs, "--refs")
    if len(refs) != 2:
        raise ValueError(f"--refs needs exactly two concepts (r1,r2), got {len(refs)}: {', '.join(refs)}")
    return BiasConfig(targets=_names(args.targets, "--targets"), ref1=refs[0], ref2=refs[1], **options), templates


def _bias(args) -> int:
    from analysis.bias.compute import compute_bias, layer_frame, summary_frame
    from analysis.bias.behaviour import behaviour_data, behaviour_rows, load_templates
    from analysis.commands.inspect import _formats
    from analysis.bias.figures import behaviour_figure, heatmap_figure, shared_latents_figure, summary_figure
    from analysis.recipes import make_recipe

    formats = _formats(args.formats)
    config, template_set = config_from_args(args)
    templates = load_templates(template_set)  # fail on a bad name before loading the model
    lm = load_from_args(args)

    def progress(f: float, msg: str) -> None:
        print(f"\r[{f:4.0%}] {msg[:70]:70s}", end="", file=sys.stderr, flush=True)

    result = compute_bias(lm, config, progress)
    print(file=sys.stderr)
    out = Path(args.out)
    cfg = config.to_dict()
    layers, summary = layer_frame(result), summary_frame(result)
    figures = [
        ("bias_heatmap", heatmap_figure(result), layers, make_recipe("bias_heatmap", lm.name, cfg)),
        ("bias_summary", summary_figure(result), summary, make_recipe("bias_summary", lm.name, cfg)),
        ("bias_shared_latents", shared_latents_figure(result.shared),
         None if result.shared is None else result.shared.to_frame(), make_recipe("bias_summary", lm.name, cfg)),
    ]
    behaviour = None
    if not args.no_behaviour:
        behaviour = behaviour_data(behaviour_rows(lm, result, args.preset or "custom", templates, args.aggregate))
        overrides = {k: v for k, v in cfg.items() if k not in ("targets", "ref1", "ref2")}
        recipe = (make_recipe("bias_behaviour", lm.name, {"presets": [args.preset], "aggregate": args.aggregate,
                                                           "bias": overrides})
                  if args.preset else make_recipe("bias_summary", lm.name, cfg))  # custom triples: no behaviour recipe
        figures.append(("bias_behaviour", behaviour_figure(behaviour), behaviour.to_frame(), recipe))
    for stem, fig, frame, recipe in figures:
        for path in write_figure(fig, frame, recipe, out, stem, formats):
            print(path)
    layers.to_csv(out / "bias_layers.csv", index=False)
    (out / "bias.json").write_text(json.dumps(result_json(result, behaviour, templates), indent=2, allow_nan=True))
    print(out / "bias_layers.csv")
    print(out / "bias.json")
    for row in summary.itertuples():
        print(f"{row.target:24s} Bias {row.bias:+.3f}  CI [{row.ci_low:+.3f}, {row.ci_high:+.3f}]  "
              f"null [{row.perm_low:+.3f}, {row.perm_high:+.3f}]  layers {row.layers or '-'} {row.message}")
    if behaviour is not None:
        print(f"Spearman r (conceptual vs behavioural, n={len(behaviour.targets)}): {behaviour.rho:.3f}")
    return 0


def result_json(result, behaviour=None, templates=()) -> dict:
    """Every number of a run as plain JSON (NaN where undefined)."""
    def arr(a):
        return [[None if v != v else float(v) for v in row] for row in a] if getattr(a, "ndim", 1) == 2 else \
            [None if v != v else float(v) for v in a]

    doc = {
        "model": result.model, "config": result.config, "targets": list(result.targets), "refs": list(result.refs),
        "layers": list(result.layers), "concepts": list(result.concepts),
        "summary": arr(result.summary), "ci_low": arr(result.ci_low), "ci_high": arr(result.ci_high),
        "summary_bootstrap_fit": arr(result.summary_bootstrap_fit),
        "perm_low": arr(result.perm_low), "perm_high": arr(result.perm_high),
        "chosen_layers": {t: result.chosen_layers(t) for t in result.targets}, "messages": result.messages,
        "bias": arr(result.bias), "bias_ci_low": arr(result.bias_low), "bias_ci_high": arr(result.bias_high),
        "accuracy": arr(result.accuracy), "bootstrap_summaries": arr(result.boot), "null_summaries": arr(result.perm),
    }
    if result.shared is not None:
        doc["shared_latents"] = {
            "layer": result.shared.layer,
            "latents": {c: [int(i) for i in ids] for c, ids in result.shared.latents.items()},
            "values": {c: arr(v) for c, v in result.shared.values.items()},
            "overlap": {f"{t}&{r}": [int(i) for i in ids] for (t, r), ids in result.shared.overlap.items()},
        }
    if behaviour is not None:
        doc["behaviour"] = {"templates": list(templates), **{k: v for k, v in behaviour.to_frame().to_dict("list").items()},
                            "spearman_r": None if behaviour.rho != behaviour.rho else behaviour.rho}
    return doc


def register(sub) -> None:
    p = sub.add_parser("bias", help="bias asymmetry of target concepts between two references (BiasLens)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", help="review_sentiment, professions_gender or insurance_sentiment")
    src.add_argument("--recipe", help="a bias_heatmap/bias_summary .recipe.json to re-run")
    p.add_argument("--targets", help="comma-separated target concepts (with --refs)")
    p.add_argument("--refs", help="two comma-separated reference concepts r1,r2 (Bias > 0: leans to r1)")
    p.add_argument("--representation", default="dense", choices=("dense", "sae-diff", "sae-proj"))
    p.add_argument("--top-k", type=int, default=32, help="SAE latents kept by sae-diff/sae-proj")
    p.add_argument("--layer", type=int, default=None, help="summarise this one layer (default: accuracy threshold rule)")
    p.add_argument("--acc-threshold", type=float, default=0.9, help="threshold rule: minimum CAV accuracy")
    p.add_argument("--absolute", action="store_true", help="|Bias| instead of signed Bias")
    p.add_argument("--cav-method", default="logistic", choices=("logistic", "mean_diff"))
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--n-permutations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-texts", type=int, default=None, help="use the first N texts of each concept (quick runs)")
    p.add_argument("--max-background", type=int, default=None, help="use the first N background texts")
    p.add_argument("--templates", default=None, help="behavioural template set (default: the preset's)")
    p.add_argument("--aggregate", default="logmeanexp", choices=("logmeanexp", "mean"))
    p.add_argument("--no-behaviour", action="store_true", help="skip the behavioural check")
    p.add_argument("--out", default=".", help="output folder")
    p.add_argument("--formats", default="png,svg,pdf", help="comma-separated: png,svg,pdf")
    add_model_args(p)
    p.set_defaults(func=_bias)
