"""``repscope ches`` (rank preference pairs by CHES, single-token geometry, export the filtered set)
and ``repscope dpo`` (DPO runs on copies of the model: per-step CSVs, the page's figures, a checkpoint)."""

from __future__ import annotations

import sys
from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args, write_figure
from analysis.figures.export import frame_to_csv  # CSV cells that look like formulas are neutralised


def _fail(command: str, message: str) -> int:
    print(f"repscope {command}: error: {message}", file=sys.stderr)
    return 2


def _check_file(args) -> str | None:
    """Validate the pair file before any model is loaded (bad input: exit status 2)."""
    from analysis.likelihood.preferences import load_preferences, shipped_sets
    from analysis.uploads import UploadError

    if args.file in shipped_sets():
        return None
    try:
        load_preferences(Path(args.file), None)
    except (UploadError, OSError, ValueError) as err:
        return f"{args.file}: {err} (shipped sets: {', '.join(shipped_sets())})"
    return None


def _data(args, lm):
    from analysis.likelihood.preferences import load_preferences, load_shipped, shipped_sets

    if args.file in shipped_sets():
        return load_shipped(args.file, lm.tokenizer)
    return load_preferences(Path(args.file), lm.tokenizer)


def _ches(args) -> int:
    from analysis.likelihood import (
        FilterConfig, LikelihoodConfig, export_jsonl, filter_pairs, score_pairs, scores_frame, single_token_geometry,
    )
    from analysis.likelihood.figures import ches_histogram_figure, ches_similarity_figure, token_geometry_figure
    from analysis.recipes import make_recipe

    try:
        fcfg = FilterConfig(mode=args.filter, fraction=args.fraction, quantile=args.quantile, window=args.window,
                            percentile=args.percentile, score=args.score)
        lcfg = LikelihoodConfig(top_k=args.top_k, batch_size=args.batch_size, append_eos=args.append_eos)
    except ValueError as err:
        return _fail("ches", str(err))
    bad = _check_file(args)
    if bad:
        return _fail("ches", bad)
    lm = load_from_args(args)
    data = _data(args, lm)
    scores = score_pairs(lm, data, lcfg)
    frame = scores_frame(data, scores)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(data.name).stem
    (out / f"{stem}.ches.csv").write_bytes(frame_to_csv(frame))
    by_input = scores.ches_ln if fcfg.score_name == "ches_length_normalised" else scores.ches
    kept = filter_pairs(data, by_input, fcfg)
    kept_path = out / f"{stem}.ches_{fcfg.mode}.jsonl"
    kept_path.write_bytes(export_jsonl(kept))
    geometry = single_token_geometry(lm, list(data.pairs))
    (out / f"{stem}.token_geometry.csv").write_bytes(frame_to_csv(geometry))
    print(out / f"{stem}.ches.csv")
    print(kept_path)
    print(out / f"{stem}.token_geometry.csv")
    print(f"kept {len(kept)} of {len(data)} pairs ({fcfg.describe()})", file=sys.stderr)
    single = int(geometry["single_token"].sum())
    if single:
        print(f"{single} single-token pairs: their CHES is 0 by definition; see token_geometry.csv "
              f"({int(geometry['may_displace'].sum())} have <W+,W-> > ||W+||^2)", file=sys.stderr)
    config = {"source": args.file, "top_k": args.top_k, "score": fcfg.score_name, "append_eos": args.append_eos}
    if args.formats:
        formats = args.formats.split(",")
        figures = (("ches_histogram", ches_histogram_figure(frame, score=config["score"]), frame, config),
                   ("ches_vs_similarity", ches_similarity_figure(frame, score=config["score"]), frame, config),
                   ("token_geometry", token_geometry_figure(geometry), geometry, {"source": args.file}))
        for kind, fig, fr, cfg in figures:
            for path in write_figure(fig, fr, make_recipe(kind, lm.name, cfg), out, f"{stem}.{kind}", formats):
                print(path)
    return 0


def _parse_ints(text: str, what: str) -> list[int]:
    """'0,3,5' or '0-4' or a mix ('0-2,7')."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition("-")
        if not a.isdigit() or (sep and not b.isdigit()):
            raise ValueError(f"{what} {text!r}: give indices such as 0,3,5 or a range 0-4")
        out.extend(range(int(a), int(b) + 1) if sep else [int(a)])
    return out


def _dpo_config(args):
    from analysis.likelihood import PRESETS, DPOConfig

    values = dict(PRESETS[args.preset]) if args.preset else {}
    given = {
        "beta": args.beta, "lr": args.lr, "steps": args.steps, "optimizer": args.optimizer,
        "minibatch": args.minibatch, "pairs_per_run": args.pairs_per_run, "sft_epochs": args.sft_epochs,
        "sft_lr": args.sft_lr, "discover": args.discover, "top_k": args.top_k, "chunk_size": args.chunk_size,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    if args.seeds is not None:
        values["seeds"] = tuple(_parse_ints(args.seeds, "--seeds"))
    if args.watch:
        values["watch_tokens"] = tuple(args.watch)
    if args.append_eos:
        values["append_eos"] = True
    return DPOConfig.from_dict(values)


def _dpo(args) -> int:
    from analysis.likelihood import (
        DPOMemoryError, check_name_free, discovery_frame, gainers_frame, run_dpo, save_checkpoint, summary_frame,
    )
    from analysis.likelihood.recipes import dpo_figures, dpo_recipe_config
    from analysis.recipes import make_recipe

    try:
        cfg = _dpo_config(args)
        pairs = _parse_ints(args.pairs, "--pairs") if args.pairs else None
        if args.save_checkpoint:
            check_name_free(args.save_checkpoint)
    except (ValueError, FileExistsError) as err:
        return _fail("dpo", str(err))
    bad = _check_file(args)
    if bad:
        return _fail("dpo", bad)
    lm = load_from_args(args)
    data = _data(args, lm)
    if pairs is not None and any(not 0 <= i < len(data) for i in pairs):
        return _fail("dpo", f"--pairs {args.pairs}: {data.name} has pairs 0..{len(data) - 1}")
    pairs = pairs if pairs is not None else list(range(len(data)))

    def on_step(row: dict) -> None:
        watch = " ".join(f"{k[8:-1]!r}={v:.4g}" for k, v in row.items() if k.startswith("p_watch"))
        print(f"seed {row['seed']} step {row['step']:3d} loss {row['loss']:.4f} logp+ {row['logp_chosen']:.4f} "
              f"logp- {row['logp_rejected']:.4f} top gainer {row['top_gainer']!r} {watch} ({row['seconds']:.0f}s)",
              file=sys.stderr, flush=True)

    try:
        result = run_dpo(lm, data, cfg, pairs=pairs, on_step=on_step, keep_model=bool(args.save_checkpoint))
    except DPOMemoryError as err:
        print(f"repscope dpo: error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(data.name).stem}.dpo"
    tables = {"summary": summary_frame(result), "discovery": discovery_frame(result), "gainers": gainers_frame(result)}
    for name, frame in tables.items():
        (out / f"{stem}.{name}.csv").write_bytes(frame_to_csv(frame))
        print(out / f"{stem}.{name}.csv")
    config = dpo_recipe_config(args.file, pairs, cfg)
    formats = args.formats.split(",") if args.formats else []
    for kind, (fig, frame) in dpo_figures(result).items():
        for path in write_figure(fig, frame, make_recipe(kind, lm.name, config), out, f"{stem}.{kind}", formats):
            print(path)
    print(f"{len(result.runs)} run(s), {result.seconds_per_step:.2f} s per update (median)"
          + (", stopped early" if result.stopped_early else ""), file=sys.stderr)
    if args.save_checkpoint and result.module is not None:
        last = result.runs[-1]
        recipe = {"model": lm.name, "backend": lm.backend, "source": args.file, "pairs": last.pairs,
                  "seed": last.seed, "steps_done": len(last.history) - 1, "dpo": cfg.to_dict()}
        print(save_checkpoint(result.module, recipe, args.save_checkpoint))
    return 0


def register(sub) -> None:
    p = sub.add_parser("ches", help="rank preference pairs by CHES; write scores, single-token geometry, the filtered .jsonl")
    p.add_argument("file", help="preference .jsonl/.csv (dpo or conversational layout) or a shipped set name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--filter", default="lowest", choices=["lowest", "window", "percentile"],
                   help="lowest: keep the lowest --fraction by length-normalised CHES (paper §6, default); "
                        "window: --window pairs at --quantile of raw CHES (paper §5); percentile: CHES <= --percentile")
    p.add_argument("--fraction", type=float, default=0.05, help="lowest: fraction kept (paper: 0.05)")
    p.add_argument("--quantile", type=float, default=0.5, help="window: quantile of the window's centre")
    p.add_argument("--window", type=int, default=19, help="window: pairs kept")
    p.add_argument("--percentile", type=float, default=90.0, help="percentile: keep pairs at or below it")
    p.add_argument("--score", default="", choices=["", "ches", "ches_length_normalised"],
                   help="score to filter on (default: the mode's, length-normalised for lowest, raw otherwise)")
    p.add_argument("--append-eos", action="store_true", help="include the EOS-predicting position (the authors' code)")
    p.add_argument("--top-k", type=int, default=10, help="k of the top-k mass/entropy indicators")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--formats", default="", help="also write figures: comma-separated png,svg,pdf")
    add_model_args(p)
    p.set_defaults(func=_ches)

    p = sub.add_parser("dpo", help="DPO runs on copies of the model; per-step CSVs, figures, optional checkpoint")
    p.add_argument("file", help="preference .jsonl/.csv or a shipped set name (e.g. no_never_persona)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preset", choices=["paper", "paper_sft", "quick"], default=None,
                   help="paper: RMSprop lr 1e-7, 101 full-batch steps, beta 0.1, one pair per run, seeds 0,1,2; "
                        "paper_sft: the same after one SFT epoch; options below override it")
    p.add_argument("--optimizer", choices=["rmsprop", "adam", "sgd"], default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="optimizer updates per run")
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--minibatch", type=int, default=None, help="pairs per update (0: full batch)")
    p.add_argument("--seeds", default=None, help="seeds, one run each: 0,1,2 or 0-9")
    p.add_argument("--pairs-per-run", type=int, default=None, help="pairs each seed draws from --pairs (0: all)")
    p.add_argument("--sft-epochs", type=int, default=None, help="SFT epochs on y+ before DPO")
    p.add_argument("--sft-lr", type=float, default=None, help="SFT learning rate (0: --lr)")
    p.add_argument("--watch", action="append", help="watched next token (repeatable, optional; a leading space counts)")
    p.add_argument("--discover", type=int, default=None, help="top tokens by probability gain recorded per step")
    p.add_argument("--pairs", default="", help="pair indices to train on, e.g. 0,3 or 0-4 (default: all)")
    p.add_argument("--append-eos", action="store_true", help="append EOS to responses (the authors' TRL setup)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None, help="pairs per forward/backward chunk (memory only)")
    p.add_argument("--save-checkpoint", default="", metavar="NAME",
                   help="save the last run's trained copy to the workspace as checkpoint NAME")
    p.add_argument("--formats", default="png", help="figure formats, comma-separated (empty: CSV and recipes only)")
    add_model_args(p)
    p.set_defaults(func=_dpo)
