"""``repscope inspect``: the live-inspection figures of one prompt, headless.

``--text`` writes the four figures (residual norms, logit lens, attention,
next token), each with its CSV and recipe. ``--file`` (.txt/.csv/.jsonl, one
prompt per line or a ``text``/``prompt`` column) also writes ``prompt_losses.csv``
(mean next-token loss per prompt) and the figures of prompt ``--index``.
"""

from __future__ import annotations

from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args, write_figure


def _read_prompts(path: str) -> list[str]:
    from analysis.commands.checks import read_upload
    from analysis.uploads import parse_texts

    return parse_texts(*read_upload(path))


def _formats(value: str) -> list[str]:
    from analysis.figures.export import FORMATS

    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"--formats: unknown {bad}; valid formats are {', '.join(FORMATS)} (comma-separated)")
    return formats


def _inspect(args) -> int:
    from analysis.inspection.lens import InspectConfig, inspect_prompt, score_prompts
    from analysis.inspection.recipes import RECIPE_KINDS, build_figure
    from analysis.recipes import make_recipe

    formats = _formats(args.formats)
    out = Path(args.out)
    prompts = _read_prompts(args.file) if args.file else [args.text]
    if not 0 <= args.index < len(prompts):
        raise ValueError(f"--index {args.index}: the file has {len(prompts)} prompts (valid 0..{len(prompts) - 1})")
    cfg = InspectConfig(text=prompts[args.index], top_k=args.top_k, layer=args.layer,
                        head=args.head, metric=args.metric, log_norms=args.log_norms)
    lm = load_from_args(args)
    n_heads = int(lm.model.cfg.n_heads)
    if not 0 <= args.layer < lm.n_layers or not 0 <= args.head < n_heads:
        raise ValueError(
            f"--layer {args.layer} --head {args.head}: {lm.name} has layers 0..{lm.n_layers - 1} "
            f"and heads 0..{n_heads - 1}"
        )
    if args.file:
        table = score_prompts(lm, prompts, batch_size=args.batch_size)
        from analysis.atomic import write_atomic
        from analysis.figures.export import frame_to_csv

        path = write_atomic(out / "prompt_losses.csv", frame_to_csv(table.reset_index(drop=True)))
        print(path)
    insp = inspect_prompt(lm, cfg.text, cfg.top_k)
    for kind in RECIPE_KINDS:
        fig, frame = build_figure(kind, insp, cfg)
        recipe = make_recipe(kind, lm.name, cfg.to_dict())
        for path in write_figure(fig, frame, recipe, out, kind, formats):
            print(path)
    return 0


def register(sub) -> None:
    p = sub.add_parser("inspect", help="residual norms, logit lens, attention and next token of a prompt")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the prompt to inspect")
    src.add_argument("--file", help="prompts file (.txt one per line, .csv/.jsonl with a text column)")
    p.add_argument("--index", type=int, default=0, help="with --file: which prompt gets figures (0-based)")
    p.add_argument("--out", default=".", help="output folder (default: current folder)")
    p.add_argument("--formats", default="png,svg,pdf", help="comma-separated: png,svg,pdf")
    p.add_argument("--top-k", type=int, default=10, help="top-k tokens for the lens and next token")
    p.add_argument("--layer", type=int, default=0, help="attention figure: layer")
    p.add_argument("--head", type=int, default=0, help="attention figure: head")
    p.add_argument("--metric", default="prob", choices=("prob", "rank"), help="logit-lens colour")
    p.add_argument("--log-norms", action="store_true", help="residual norms on a log10 colour scale")
    p.add_argument("--batch-size", type=int, default=4, help="with --file: prompts per forward pass")
    add_model_args(p)
    p.set_defaults(func=_inspect)

