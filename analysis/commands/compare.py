"""``repscope compare``: two model states in one view, concept drift during DPO, or a steering audit.

``--a``/``--b`` are state specs: ``base``, ``steer:PATH.safetensors@alpha=-1.6[@layers=6]``,
``ckpt:NAME`` (a saved DPO checkpoint) or ``model:NAME``. ``--view`` is one of
bias, concepts, lens, likelihood (B − A), ``drift`` (a short DPO run from the base
model; --a/--b unused) or ``audit`` (--b must be a steered state). Writes the
figure(s) with CSV and recipe into ``--out`` and prints a JSON summary. States,
names and numbers are checked before the model is loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from analysis.commands.core import add_model_args, load_from_args, write_figure

CLI_VIEWS = ("bias", "concepts", "lens", "likelihood", "drift", "audit")


def _ints(value: str | None, flag: str) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag}: give comma-separated integers, e.g. 0,2,4") from None


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (value or "").split(",") if n.strip())


def _configs(args):
    """Validated configs for the view (nothing loaded yet)."""
    from analysis.compare import CompareConfig, DriftConfig, check_state

    common = dict(preset=args.preset, concepts=_names(args.concepts), acc_threshold=args.acc_threshold,
                  n_bootstrap=args.n_bootstrap, ci=args.ci, seed=args.seed, max_texts=args.max_texts or None,
                  max_background=args.max_background or None)
    if args.view == "drift":
        return DriftConfig(preference_set=args.preference_set, max_pairs=args.max_pairs, steps=_ints(args.steps, "--steps"),
                           beta=args.beta, lr=args.lr, **common)
    check_state(args.a), check_state(args.b)
    view = "concepts" if args.view == "audit" else args.view
    return CompareConfig(a=args.a, b=args.b, view=view, n_permutations=args.n_permutations, prompt=args.prompt,
                         top_k=args.top_k, preference_set=args.preference_set, max_pairs=args.max_pairs, **common)


def _compare(args) -> int:
    from analysis.commands.inspect import _formats
    from analysis.recipes import make_recipe

    formats = _formats(args.formats)
    if args.view not in CLI_VIEWS:
        raise ValueError(f"--view {args.view!r}: valid views are {CLI_VIEWS}")
    if args.view == "audit" and not args.b.startswith("steer:"):
        raise ValueError("--view audit needs --b steer:PATH.safetensors@alpha=A")
    if args.layer is not None and args.layer < 0:
        raise ValueError("--layer must be ≥ 0")
    cfg = _configs(args)
    lm = load_from_args(args)
    from analysis.compare import compare, compute_audit, compute_drift
    from analysis.compare import figures as F

    out = Path(args.out)
    progress = (lambda f, stage: print(f"[{f:4.0%}] {stage}", file=sys.stderr, flush=True)) if args.verbose else None
    written, summary = [], {}
    if args.view == "drift":
        result = compute_drift(lm, cfg, progress)
        written += write_figure(F.drift_figure(result), result.frame(), make_recipe("compare_drift", lm.name, cfg.to_dict()),
                                out, "compare_drift", formats)
        summary = {"steps": result.steps, "stopped": result.stopped, "messages": result.messages,
                   "axes": result.frame().to_dict("records"), "dpo": result.history}
    elif args.view == "audit":
        result = compute_audit(lm, args.b, cfg, progress, n_random=args.n_random)
        recipe = make_recipe("compare_audit", lm.name, {**cfg.to_dict(), "state": args.b, "n_random": args.n_random})
        written += write_figure(F.audit_figure(result, args.b), result.frame(), recipe, out, "compare_audit", formats)
        summary = {"concepts": result.frame().to_dict("records")}
    else:
        result = compare(lm, cfg, progress)
        recipe = make_recipe(f"compare_{cfg.view}", lm.name, cfg.to_dict())
        if cfg.view == "bias":
            fig, frame = F.delta_bias_figure(result, cfg.a, cfg.b), result.frame()
        elif cfg.view == "concepts":
            fig, frame = F.delta_concepts_figure(result, cfg.a, cfg.b), result.layer_frame()
            layer = args.layer if args.layer is not None else result.layers[len(result.layers) // 2]
            if layer not in result.layers:
                raise ValueError(f"--layer {layer}: valid layers are 0..{max(result.layers)}")
            written += write_figure(F.delta_cosine_figure(result, layer, cfg.a, cfg.b), result.frame(),
                                    make_recipe("compare_concepts_cosine", lm.name, {**cfg.to_dict(), "layer": layer}),
                                    out, "compare_concepts_cosine", formats)
        elif cfg.view == "lens":
            fig, frame = F.lens_kl_figure(result, cfg.a, cfg.b), result.frame()
        else:
            fig, frame = F.likelihood_figure(result, cfg.a, cfg.b), result
        written += write_figure(fig, frame, recipe, out, f"compare_{cfg.view}", formats)
        if cfg.view == "bias":
            summary = {"targets": result.frame().to_dict("records")}
        elif cfg.view == "concepts":
            summary = {"concepts": result.frame().to_dict("records")}
        elif cfg.view == "lens":
            summary = {"kl_last_position": result.kl[:, -1].tolist(), "changed": result.changed.to_dict("records")}
        else:
            summary = {"mean_delta_logp_chosen": float(frame.delta_logp_chosen.mean()),
                       "mean_delta_logp_rejected": float(frame.delta_logp_rejected.mean())}
    (out / "compare.json").write_text(json.dumps({"view": args.view, "a": args.a, "b": args.b, **summary},
                                                 indent=2, default=float))
    print(json.dumps({"written": [str(p) for p in written], **summary}, indent=2, default=float))
    return 0


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare two model states (B − A) in one view; drift during DPO; steering audit",
                       description=__doc__)
    add_model_args(p)
    p.add_argument("--a", default="base", help="state A (default: base)")
    p.add_argument("--b", default="base", help="state B, e.g. steer:vec.safetensors@alpha=-1.6 or ckpt:NAME")
    p.add_argument("--view", required=True, help=", ".join(CLI_VIEWS))
    p.add_argument("--preset", default="professions_gender", help="bias preset (bias view, drift's bias axes)")
    p.add_argument("--concepts", default=None, help="comma-separated concepts (default: the preset's)")
    p.add_argument("--prompt", default="The nurse said that", help="prompt for the lens view")
    p.add_argument("--preference-set", default="displacement_demo", help="shipped preference set")
    p.add_argument("--max-pairs", type=int, default=None)
    p.add_argument("--steps", default="0,2,4", help="drift: DPO steps to measure")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--n-random", type=int, default=19, help="audit: random directions of matched norm")
    p.add_argument("--layer", type=int, default=None, help="concepts view: layer of the Δ cosine figure")
    p.add_argument("--acc-threshold", type=float, default=0.9)
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--n-permutations", type=int, default=200)
    p.add_argument("--ci", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-texts", type=int, default=32, help="texts per concept (0: all)")
    p.add_argument("--max-background", type=int, default=64, help="background texts (0: all)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--formats", default="png", help="comma-separated: png, svg, pdf (empty: none)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--verbose", action="store_true", help="print progress to stderr")
    p.set_defaults(func=_compare)
