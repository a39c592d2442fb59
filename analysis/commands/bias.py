"""``repscope bias``: bias asymmetry (BiasLens) of targets between two references, headless.

``--preset NAME`` or ``--targets a,b --refs r1,r2`` (or ``--recipe FILE`` from an
exported bias figure) writes into ``--out``: the heatmap, summary, shared-latents
and behaviour figures (each with CSV and recipe), ``bias_layers.csv`` and
``bias.json`` with every number (per-layer Bias, CIs and p-values, accuracies,
summaries with their permutation p-values, the differential test when two targets are
compared, shared latents, behavioural scores, Spearman ρ with n and CI).
Whenever ``--targets`` names exactly two concepts (or ``--compare X,Y`` picks two of a
preset's), the differential test Bias(X) − Bias(Y) runs too.
"""

from __future__ import annotations

import argparse
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
    from analysis.bias import BiasConfig, load_presets
    from analysis.recipes import read_recipe

    options = dict(
        representation=args.representation, top_k=args.top_k, signed=not args.absolute,
        layer_rule="layer" if args.layer is not None else "threshold", layer=args.layer,
        acc_threshold=args.acc_threshold, n_bootstrap=args.n_bootstrap, n_permutations=args.n_permutations,
        seed=args.seed, cav_method=args.cav_method, max_texts=args.max_texts, max_background=args.max_background,
        baseline=args.baseline, standardise=args.standardise, units=args.units, alpha=args.alpha,
    )
    compare = _names(args.compare, "--compare") if args.compare else None
    if compare is not None and len(compare) != 2:
        raise ValueError(f"--compare needs exactly two targets X,Y, got {len(compare)}: {', '.join(compare)}")
    templates = args.templates
    if args.recipe:
        recipe = read_recipe(args.recipe)
        if not recipe["figure"].startswith("bias_") or recipe["figure"] == "bias_behaviour":
            raise ValueError(f"{args.recipe}: a {recipe['figure']!r} recipe; give a bias_heatmap, bias_summary or "
                             "bias_differential recipe")
        return BiasConfig.from_dict(recipe["config"]), templates
    if args.preset:
        presets = load_presets()
        if args.preset not in presets:
            raise ValueError(f"unknown preset {args.preset!r}; valid presets are {sorted(presets)}")
        p = presets[args.preset]
        return BiasConfig(targets=p.targets, ref1=p.ref1, ref2=p.ref2, differential=compare, **options), \
            templates or p.templates
    if not (args.targets and args.refs):
        raise ValueError("give --preset NAME, or --targets a,b and --refs r1,r2, or --recipe FILE")
    refs = _names(args.refs, "--refs")
    if len(refs) != 2:
        raise ValueError(f"--refs needs exactly two concepts (r1,r2), got {len(refs)}: {', '.join(refs)}")
    targets = _names(args.targets, "--targets")
    if compare is None and len(targets) == 2:
        compare = targets
    return BiasConfig(targets=targets, ref1=refs[0], ref2=refs[1], differential=compare, **options), templates


def _bias(args) -> int:
    from analysis.bias import behaviour_data, behaviour_rows, compute_bias, differential_verdict, layer_frame, \
        load_templates, summary_frame
    from analysis.commands.inspect import _formats
    from analysis.bias.figures import behaviour_figure, differential_figure, heatmap_figure, shared_latents_figure, \
        summary_figure
    from analysis.recipes import make_recipe

    formats = _formats(args.formats)
    config, template_set = config_from_args(args)
    templates = load_templates(template_set)  # fail on a bad name before loading the model
    from analysis.concepts import load_concepts

    known = load_concepts()
    missing = [c for c in config.concepts if c not in known]
    if missing:
        raise ValueError(f"unknown concepts {missing}; available concepts are {sorted(known)}")
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
    ]
    if result.differential is not None:
        import pandas as pd

        d = result.differential
        frame = pd.DataFrame({"layer": list(result.layers), "effect": d.layer_effect, "p_value": d.layer_p,
                              "p_adjusted": d.layer_p_adjusted})
        figures.append(("bias_differential", differential_figure(result), frame,
                        make_recipe("bias_differential", lm.name, cfg)))
    figures += [
        ("bias_shared_latents", shared_latents_figure(result.shared),
         None if result.shared is None else result.shared.to_frame(), make_recipe("bias_summary", lm.name, cfg)),
    ]
    behaviour = None
    if not args.no_behaviour:
        behaviour = behaviour_data(behaviour_rows(lm, result, args.preset or "custom", templates, args.aggregate,
                                                  args.behaviour), args.behaviour)
        overrides = {k: v for k, v in cfg.items() if k not in ("targets", "ref1", "ref2", "differential")}
        recipe = (make_recipe("bias_behaviour", lm.name, {"presets": [args.preset], "aggregate": args.aggregate,
                                                           "bias": overrides, "mode": args.behaviour})
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
        print(f"{row.target:24s} Bias {row.bias:+.3f}  CI [{row.ci_low:+.3f}, {row.ci_high:+.3f}]  {row.verdict}")
    if result.differential is not None:
        print(differential_verdict(result.differential, result.alpha))
    if behaviour is not None:
        print(f"Spearman rho (conceptual vs behavioural, n={behaviour.n}): {behaviour.rho:.3f} "
              f"[{behaviour.rho_low:.3f}, {behaviour.rho_high:.3f}]")
    return 0


def result_json(result, behaviour=None, templates=()) -> dict:
    """Every number of a run as plain JSON (NaN where undefined)."""
    def num(v):
        return None if v is None or v != v else float(v)

    def arr(a):
        return [[None if v != v else float(v) for v in row] for row in a] if getattr(a, "ndim", 1) == 2 else \
            [None if v != v else float(v) for v in a]

    doc = {
        "model": result.model, "config": result.config, "targets": list(result.targets), "refs": list(result.refs),
        "layers": list(result.layers), "concepts": list(result.concepts),
        "summary": arr(result.summary), "ci_low": arr(result.ci_low), "ci_high": arr(result.ci_high),
        "p_value": arr(result.p_value), "p_holm": arr(result.p_holm), "n_permutations": result.n_permutations,
        "p_resolution": 1.0 / (result.n_permutations + 1), "minimum_detectable_effect": arr(result.minimum_detectable),
        "per_target": {t: {
            "bias": num(result.summary[i]), "ci_low": num(result.ci_low[i]), "ci_high": num(result.ci_high[i]),
            "p_value": num(result.p_value[i]), "p_holm": num(result.p_holm[i]),
            "n_permutations": result.n_permutations, "minimum_detectable_effect": num(result.minimum_detectable[i]),
            "layers": result.chosen_layers(t),
            "layers_surviving": [l for l, s in zip(result.layers, result.surviving[i]) if s],
            "n_units": result.n_units.get(t), "verdict": result.verdict(i),
        } for i, t in enumerate(result.targets)},
        "n_units": result.n_units,
        "chosen_layers": {t: result.chosen_layers(t) for t in result.targets}, "messages": result.messages,
        "bias": arr(result.bias), "bias_ci_low": arr(result.bias_low), "bias_ci_high": arr(result.bias_high),
        "layer_p_value": arr(result.layer_p), "layer_p_adjusted": arr(result.layer_p_adjusted),
        "correction": "max-|T| (Westfall-Young) over every (target, layer) cell; Holm over targets for summaries",
        "accuracy": arr(result.accuracy), "bootstrap_summaries": arr(result.boot), "null_summaries": arr(result.perm),
    }
    if result.differential is not None:
        doc["differential"] = result.differential.to_json()
    if result.shared is not None:
        doc["shared_latents"] = {
            "layer": result.shared.layer,
            "latents": {c: [int(i) for i in ids] for c, ids in result.shared.latents.items()},
            "values": {c: arr(v) for c, v in result.shared.values.items()},
            "overlap": {f"{t}&{r}": [int(i) for i in ids] for (t, r), ids in result.shared.overlap.items()},
        }
    if behaviour is not None:
        doc["behaviour"] = {"templates": list(templates), **{k: v for k, v in behaviour.to_frame().to_dict("list").items()},
                            "mode": behaviour.mode, "spearman_r": num(behaviour.rho), "spearman_n": behaviour.n,
                            "spearman_ci_low": num(behaviour.rho_low), "spearman_ci_high": num(behaviour.rho_high)}
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
    p.add_argument("--compare", help="two of the targets X,Y for the differential test (automatic with two --targets)")
    p.add_argument("--cav-method", default="mean_diff", choices=("mean_diff", "logistic"),
                   help="concept vector; the permutation null refits the same one (logistic: slow)")
    p.add_argument("--baseline", default="background", choices=("background", "contrast"),
                   help="negatives: the background set, or the pooled other concepts of the analysis")
    p.add_argument("--standardise", action=argparse.BooleanOptionalAction, default=False,
                   help="z-score every dimension with the background's mean and sd (tames massive dimensions)")
    p.add_argument("--units", default="auto", choices=("auto", "text"),
                   help="resampling units: auto keeps a word's template sentences together; text: single texts")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level for the verdicts and heatmap marks")
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--n-permutations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-texts", type=int, default=None, help="use the first N texts of each concept (quick runs)")
    p.add_argument("--max-background", type=int, default=None, help="use the first N background texts")
    p.add_argument("--templates", default=None, help="behavioural template set (default: the preset's)")
    p.add_argument("--aggregate", default="logmeanexp", choices=("logmeanexp", "mean"))
    p.add_argument("--behaviour", default="templates", choices=("templates", "paper"),
                   help="behavioural metric: r1 vs r2 words after target templates, or target words after r1 vs r2 texts")
    p.add_argument("--no-behaviour", action="store_true", help="skip the behavioural check")
    p.add_argument("--out", default=".", help="output folder")
    p.add_argument("--formats", default="png,svg,pdf", help="comma-separated: png,svg,pdf")
    add_model_args(p)
    p.set_defaults(func=_bias)
