"""``repscope ches`` (rank preference pairs by CHES, export the filtered set) and
``repscope dpo`` (a few DPO steps on a copy of the model, per-step CSV and figures)."""

from __future__ import annotations

import sys
from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args, write_figure


def _data(args, lm):
    from analysis.likelihood.preferences import load_preferences, load_shipped, shipped_sets

    if args.file in shipped_sets():
        return load_shipped(args.file, lm.tokenizer)
    return load_preferences(Path(args.file), lm.tokenizer)


def _ches(args) -> int:
    from analysis.likelihood.figures import ches_histogram_figure, ches_similarity_figure
    from analysis.likelihood.ches import LikelihoodConfig, filter_by_percentile, score_pairs, scores_frame
    from analysis.likelihood.preferences import export_jsonl
    from analysis.recipes import make_recipe

    lm = load_from_args(args)
    data = _data(args, lm)
    scores = score_pairs(lm, data, LikelihoodConfig(top_k=args.top_k, batch_size=args.batch_size))
    frame = scores_frame(data, scores)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(data.name).stem
    (out / f"{stem}.ches.csv").write_text(frame.to_csv(index=False))
    score = scores.ches_ln if args.normalised else scores.ches
    kept = filter_by_percentile(data, score, args.percentile)
    kept_path = out / f"{stem}.ches_p{args.percentile:g}.jsonl"
    kept_path.write_bytes(export_jsonl(kept))
    print(out / f"{stem}.ches.csv")
    print(kept_path)
    print(f"kept {len(kept)} of {len(data)} pairs (CHES at or below the {args.percentile:g}th percentile)", file=sys.stderr)
    config = {"source": args.file, "top_k": args.top_k, "score": "ches_length_normalised" if args.normalised else "ches"}
    if args.formats:
        formats = args.formats.split(",")
        for kind, fig in (("ches_histogram", ches_histogram_figure(frame, score=config["score"])),
                          ("ches_vs_similarity", ches_similarity_figure(frame, score=config["score"]))):
            for path in write_figure(fig, frame, make_recipe(kind, lm.name, config), out, f"{stem}.{kind}", formats):
                print(path)
    return 0


def _dpo(args) -> int:
    from analysis.likelihood.dpo import DPOConfig, DPOMemoryError, config_dict, history_frame, run_dpo
    from analysis.likelihood.figures import dpo_curves_figure, dpo_indicators_figure
    from analysis.recipes import make_recipe

    cfg = DPOConfig(beta=args.beta, lr=args.lr, steps=args.steps, watch_tokens=tuple(args.watch or [" Yes"]),
                    top_k=args.top_k, batch_size=args.batch_size)
    lm = load_from_args(args)
    data = _data(args, lm)
    if args.pairs:
        data = data.subset(range(min(args.pairs, len(data))))

    def progress(row: dict) -> None:
        watch = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("p_watch"))
        print(f"step {row['step']:3d} loss {row['loss']:.4f} logp+ {row['logp_chosen']:.3f} "
              f"logp- {row['logp_rejected']:.3f} {watch} ({row['seconds']:.0f}s)", file=sys.stderr, flush=True)

    try:
        result = run_dpo(lm, data, cfg, callback=progress)
    except DPOMemoryError as err:
        print(f"repscope dpo: error: {err}", file=sys.stderr)
        return 1
    frame = history_frame(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(data.name).stem}.dpo"
    (out / f"{stem}.csv").write_text(frame.to_csv(index=False))
    print(out / f"{stem}.csv")
    config = {"source": args.file, **config_dict(cfg)}
    if args.formats:
        formats = args.formats.split(",")
        for kind, fig in (("dpo_curves", dpo_curves_figure(frame)), ("dpo_indicators", dpo_indicators_figure(frame))):
            for path in write_figure(fig, frame, make_recipe(kind, lm.name, config), out, f"{stem}.{kind}", formats):
                print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("ches", help="rank preference pairs by CHES; write scores CSV and the filtered .jsonl")
    p.add_argument("file", help="preference .jsonl/.csv (dpo or conversational layout) or a shipped set name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--percentile", type=float, default=90.0, help="keep pairs with CHES at or below this percentile")
    p.add_argument("--normalised", action="store_true", help="filter on length-normalised CHES")
    p.add_argument("--top-k", type=int, default=10, help="k of the top-k mass/entropy indicators")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--formats", default="", help="also write figures: comma-separated png,svg,pdf")
    add_model_args(p)
    p.set_defaults(func=_ches)

    p = sub.add_parser("dpo", help="a few DPO steps on a copy of the model; per-step CSV and figures")
    p.add_argument("file", help="preference .jsonl/.csv or a shipped set name (e.g. displacement_demo)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--watch", action="append", help="watched next token (repeatable; default ' Yes')")
    p.add_argument("--pairs", type=int, default=0, help="use only the first N pairs (0: all)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward/backward chunk")
    p.add_argument("--formats", default="png", help="figure formats, comma-separated (empty: none)")
    add_model_args(p)
    p.set_defaults(func=_dpo)
