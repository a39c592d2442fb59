"""``repscope extract``: a corpus file -> sharded activations (+ manifest) in a folder.

``--workers N`` runs N model actors on Ray Data (``pip install 'repscope[scale]'``);
``--workers 0`` runs the same shards in this process. A rerun with the same
options resumes: finished shards are skipped.
"""

from __future__ import annotations

import sys
import time

from analysis.commands.core import add_model_args


def parse_hooks(spec: str, n_layers: int | None = None) -> list[str]:
    """``blocks.3.hook_resid_post,ln_final.hook_normalized``, or ``resid:0-5`` / ``resid:all``
    (``resid_post`` of those layers; ``all`` needs ``n_layers``)."""
    hooks: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.startswith("resid:"):
            rng = part[len("resid:"):]
            if rng == "all":
                if n_layers is None:
                    raise ValueError("--hooks resid:all needs a catalogue model (its layer count)")
                layers = range(n_layers)
            else:
                lo, _, hi = rng.partition("-")
                try:
                    layers = range(int(lo), int(hi or lo) + 1)
                except ValueError:
                    raise ValueError(f"--hooks {part!r}: write resid:3, resid:0-5 or resid:all") from None
            hooks += [f"blocks.{l}.hook_resid_post" for l in layers]
        else:
            hooks.append(part)
    if not hooks:
        raise ValueError("--hooks: give at least one hook point, e.g. blocks.3.hook_resid_post or resid:0-5")
    return list(dict.fromkeys(hooks))


def _progress(fraction: float, stage: str) -> None:
    print(f"\r[repscope] {100 * fraction:5.1f}%  {stage}", end="", file=sys.stderr, flush=True)


def _extract(args) -> int:
    from analysis.activations import POOLINGS
    from analysis.models import CATALOGUE, DEFAULT_MODEL
    from analysis.scale import ExtractJob, check_fits, extract_corpus, parse_device_map, parse_max_memory
    from analysis.scale.shards import read_corpus

    # Validate everything before any model loads.
    if args.pooling not in POOLINGS:
        raise ValueError(f"--pooling {args.pooling!r}: valid poolings are {', '.join(POOLINGS)}")
    if args.workers < 0 or args.shard_size < 1 or args.batch_size < 1:
        raise ValueError("--workers must be >= 0, --shard-size and --batch-size >= 1")
    spec = CATALOGUE.get((args.model or DEFAULT_MODEL).strip())
    hooks = parse_hooks(args.hooks, spec.n_layers if spec else None)
    texts = read_corpus(args.corpus, field=args.field)
    device_map, max_memory = parse_device_map(args.device_map), parse_max_memory(args.max_memory)
    longest = max(len(t.encode()) for t in texts[:100_000])  # ~3+ bytes per token: an upper bound
    check_fits(args.model, device=args.device, dtype=args.dtype, device_map=device_map, max_memory=max_memory,
               batch_size=args.batch_size, seq_len=max(8, longest // 3 + 2), n_hooks=len(hooks))
    if args.workers > 0:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--workers N needs Ray: pip install 'repscope[scale]' (or --workers 0)") from None
    job = ExtractJob(model=args.model or "", hook_names=tuple(hooks), pooling=args.pooling,
                     batch_size=args.batch_size, device=None if device_map else args.device, dtype=args.dtype,
                     device_map=device_map, max_memory=max_memory)
    start = time.perf_counter()
    run = extract_corpus(job, texts, args.out, workers=args.workers, shard_size=args.shard_size,
                         progress=_progress, address=args.address)
    print(file=sys.stderr)
    print(f"{run.out}: {run.n_shards} shards ({len(run.computed)} computed, {len(run.skipped)} already done), "
          f"{run.n_texts} texts, {run.texts_per_second:.1f} texts/s over {time.perf_counter() - start:.1f}s "
          f"with {run.workers} worker(s); read with analysis.scale.load_shards({str(run.out)!r})")
    return 0 if run.complete else 1


def register(sub) -> None:
    p = sub.add_parser("extract", help="corpus -> sharded activations (Ray Data actors), resumable")
    p.add_argument("--corpus", required=True, help="a .txt (one text per line), .jsonl or .parquet file")
    p.add_argument("--field", default="text", help="the text field of .jsonl/.parquet rows (default: text)")
    p.add_argument("--hooks", required=True, help="comma-separated hook points, or resid:0-5 / resid:all")
    p.add_argument("--pooling", default="last", help="last, mean or all (every token)")
    p.add_argument("--out", required=True, help="output folder (shards + manifest.json); rerun to resume")
    p.add_argument("--workers", type=int, default=1, help="model actors on Ray (0: this process, no Ray)")
    p.add_argument("--shard-size", type=int, default=256, help="texts per shard (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default 16)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (ray://host:10001); default: local")
    add_model_args(p)
    p.set_defaults(func=_extract)
