"""Concept subcommands: ``concepts`` (list), ``concepts add FILE``, ``concepts remove NAME``, ``cav``."""

from __future__ import annotations

from pathlib import Path

from analysis.commands.checks import parse_layers  # noqa: F401 - re-exported (tests, other commands)
from analysis.commands.core import add_model_args, load_from_args, write_figure


def _list(args) -> int:
    from analysis.concepts.sets import background_texts, load_concepts

    sets = load_concepts()
    print(f"{'name':24s} {'source':9s} {'texts':>5s}  title")
    for name, s in sets.items():
        print(f"{name:24s} {s.source:9s} {len(s.texts):5d}  {s.title}")
    print(f"{'background':24s} {'shipped':9s} {len(background_texts()):5d}  negatives shared by every concept")
    return 0


def _add(args) -> int:
    from analysis.commands.checks import read_upload
    from analysis.concepts.sets import check_name, save_uploaded_concepts, workspace_dir
    from analysis.uploads import parse_concept_upload

    if args.name is not None:
        check_name(args.name)

    parsed = parse_concept_upload(*read_upload(args.file))
    if args.name:
        if len(parsed) != 1:
            raise ValueError(f"--name works for a single-concept file; {path.name} holds {sorted(parsed)}")
        parsed = {args.name: next(iter(parsed.values()))}
    for s in save_uploaded_concepts(parsed, background=args.background):
        print(f"saved {s.name} ({len(s.texts)} texts) to {workspace_dir() / (s.name + '.yaml')}")
    return 0


def _remove(args) -> int:
    from analysis.concepts.sets import delete_workspace_concept

    delete_workspace_concept(args.name)
    print(f"removed {args.name}")
    return 0


def _cav(args) -> int:
    from analysis.concepts.cavs import CavConfig, accuracy_frame, fit_from_config, similarity_frame
    from analysis.concepts.figures import accuracy_figure, similarity_figure
    from analysis.recipes import make_recipe

    concepts = tuple(c.strip() for c in args.concepts.split(",") if c.strip())
    options = dict(concepts=concepts, pooling=args.pooling, method=args.method, n_folds=args.folds,
                   n_random=args.random, C=args.C, seed=args.seed, max_texts=args.max_texts,
                   background=args.background)
    CavConfig(layers=None, **options)  # bad options exit before the model loads
    lm = load_from_args(args)
    config = CavConfig(layers=parse_layers(args.layers, lm.n_layers), **options)
    result = fit_from_config(lm, config, progress=lambda f, msg: print(f"\r{f:4.0%} {msg:60s}", end="", flush=True))
    print()
    out = Path(args.out)
    result.save(out / "cavs")
    frame = accuracy_frame(result)
    formats = [f for f in args.formats.split(",") if f]
    recipe = make_recipe("cav_accuracy", lm.name, config.to_dict())
    written = write_figure(accuracy_figure(result), frame, recipe, out, "cav_accuracy", formats)
    layer = args.similarity_layer if args.similarity_layer is not None else result.best_layer(concepts[0])
    sim = similarity_frame(result, layer)
    recipe = make_recipe("cav_similarity", lm.name, {**config.to_dict(), "layer": layer})
    written += write_figure(similarity_figure(sim.to_numpy(), concepts, layer), sim.reset_index(names="concept"),
                            recipe, out, f"cav_similarity_L{layer}", formats)
    for name in concepts:
        ci = result.concept_index(name)
        best = result.best_layer(name)
        li = result.layer_index(best)
        flag = "significant" if result.significant[ci, li] else "NOT above the random band"
        print(f"{name}: best layer {best}, accuracy {result.accuracy[ci, li]:.3f} "
              f"(random max {result.random_max[ci, li]:.3f}, p={result.p_value[ci, li]:.3f}, {flag})")
    for path in written + [out / "cavs"]:
        print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("concepts", help="list concept sets (shipped + workspace); add or remove uploads")
    p.set_defaults(func=_list)
    csub = p.add_subparsers(dest="concepts_command", metavar="ACTION")
    a = csub.add_parser("add", help="persist a concept upload (.txt, .csv or .jsonl) in the workspace")
    a.add_argument("file")
    a.add_argument("--name", default=None, help="concept name for a single-concept file (default: from the file)")
    a.add_argument("--background", default="background")
    a.set_defaults(func=_add)
    r = csub.add_parser("remove", help="delete a workspace concept")
    r.add_argument("name")
    r.set_defaults(func=_remove)

    p = sub.add_parser("cav", help="fit concept activation vectors per layer with TCAV significance")
    add_model_args(p)
    p.add_argument("--concepts", required=True, help="comma-separated concept names (repscope concepts lists them)")
    p.add_argument("--layers", default=None, help="e.g. 0-17, 3,5,7 or all (default)")
    p.add_argument("--method", default="logistic", help="logistic or mean_diff")
    p.add_argument("--pooling", default="last", help="last or mean")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--random", type=int, default=10, help="random-split runs for the TCAV null")
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-texts", type=int, default=None)
    p.add_argument("--background", default="background")
    p.add_argument("--similarity-layer", type=int, default=None, help="layer of the cosine matrix (default: best)")
    p.add_argument("--out", default="cav_out")
    p.add_argument("--formats", default="png", help="comma-separated: png,svg,pdf (empty for none)")
    p.set_defaults(func=_cav)
