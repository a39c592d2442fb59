"""SAE subcommands: ``train-sae``, ``sae-info``, ``sae-probe``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args


def _train(args) -> int:
    from dataclasses import fields

    import shutil

    from analysis.atomic import staged_dir
    from analysis.saes.training import SAETrainConfig, default_out_dir, train_and_save

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = SAETrainConfig(**{f.name: getattr(args, f.name) for f in fields(SAETrainConfig)})
    lm = load_from_args(args)
    # Default: the workspace, never the shipped assets/saes (read-only to every command).
    out = Path(args.out) if args.out else default_out_dir(lm.name, cfg)
    progress = lambda msg: print(f"[train-sae] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    with staged_dir(out) as stage:  # a failed or killed run leaves the previous SAE intact
        if (out / "corpus.json").is_file():
            shutil.copy2(out / "corpus.json", stage / "corpus.json")  # reused: the generations are slow
        quality = train_and_save(lm, cfg, stage, progress)
    print(json.dumps(quality, indent=2))
    print(out)
    return 0


def _info(args) -> int:
    from analysis.saes.loading import load_sae

    loaded = load_sae(args.source)
    print(json.dumps(loaded.describe(), indent=2))
    return 0


def _probe(args) -> int:
    from analysis.commands.core import write_figure
    from analysis.recipes import make_recipe
    from analysis.saes.recipes import ConceptLatentsConfig, probe_recipe

    try:
        config = ConceptLatentsConfig(sae=args.sae, concept=args.concept, pooling=args.pooling,
                                      top=args.top).to_dict()
    except ValueError as err:
        print(f"repscope sae-probe: {err}", file=sys.stderr)
        return 2
    lm = load_from_args(args)
    fig, frame = probe_recipe(lm, config)
    recipe = make_recipe("sae_probe_accuracy", lm.name, config)
    if args.out:
        for path in write_figure(fig, frame, recipe, Path(args.out), f"sae-probe-{args.concept}",
                                 args.formats.split(",")):
            print(path)
    else:
        print(frame.to_string(index=False))
    return 0


def register(sub) -> None:
    from analysis.saes.training import SAETrainConfig

    d = SAETrainConfig()
    p = sub.add_parser("train-sae", help="train a TopK residual SAE offline and save it in sae-lens format")
    add_model_args(p)
    p.add_argument("--layer", type=int, default=d.layer, help="resid_post layer")
    p.add_argument("--d-sae", type=int, default=d.d_sae, help="number of latents")
    p.add_argument("--k", type=int, default=d.k, help="active latents per token (TopK)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--aux-k", type=int, default=d.aux_k)
    p.add_argument("--aux-coef", type=float, default=d.aux_coef)
    p.add_argument("--dead-steps", type=int, default=d.dead_steps)
    p.add_argument("--n-samples", type=int, default=d.n_samples, help="generated continuations per seed prompt")
    p.add_argument("--gen-tokens", type=int, default=d.gen_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--held-out-fraction", type=float, default=d.held_out_fraction)
    p.add_argument("--eval-texts", type=int, default=d.eval_texts, help="held-out texts quality is measured on")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=None, help="output folder (default <workspace>/saes/<model>-res<layer>-<n>k; shipped assets are never written)")
    p.set_defaults(func=_train)

    p = sub.add_parser("sae-info", help="load an SAE and print its facts and quality numbers")
    p.add_argument("source", help="shipped SAE name, local sae-lens folder, or release:sae_id")
    p.set_defaults(func=_info)

    p = sub.add_parser("sae-probe", help="sparse probe accuracy vs k for a concept on an SAE's latents")
    add_model_args(p)
    p.add_argument("concept", help="concept set name (assets/concepts/<name>.yaml)")
    p.add_argument("--sae", default="gemma-3-270m-offline-res6-2k", help="SAE source (see sae-info)")
    p.add_argument("--pooling", default="max", help="max or mean over tokens")
    p.add_argument("--top", type=int, default=20, help="latents listed")
    p.add_argument("--out", default=None, help="write figure files here (else print the table)")
    p.add_argument("--formats", default="png,svg")
    p.set_defaults(func=_probe)
