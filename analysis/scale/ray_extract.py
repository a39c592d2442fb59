"""Corpus-scale extraction: shards of a corpus through ``extract`` on a pool of model actors.

``extract_corpus`` cuts the corpus into shards of ``shard_size`` texts, skips the
shards already finished in ``out`` (see :mod:`analysis.scale.shards`), and runs the
rest as a Ray dataset of shards through ``map_batches`` with one model actor per
worker (``ActorPoolStrategy(size=workers)``, one GPU per actor when the cluster
has GPUs). Each actor loads the model once, runs ``analysis.activations.extract``
on one shard at a time and writes the shard itself, so activations never travel
through the driver. ``workers=0`` runs the same shards in this process without Ray.

Ray: an already initialised Ray (``ray.init(address="ray://head:10001")`` or the
``RAY_ADDRESS`` variable, or ``address=``) is used as it is; otherwise a local Ray
starts in-process with this machine's CPUs and stops at the end.
Footgun: actors load the model by name (a catalogue key, hub id or a folder that
every node can read), not from an object in this process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.progress import Progress, Stopped, report
from analysis.scale import shards as sh


@dataclass(frozen=True)
class ExtractRun:
    out: Path
    n_texts: int
    n_shards: int
    computed: tuple[int, ...]
    skipped: tuple[int, ...]
    seconds: float
    texts_per_second: float
    complete: bool
    workers: int
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractJob:
    """What each worker needs to load the model and extract a shard (picklable)."""

    model: str
    hook_names: tuple[str, ...]
    pooling: str = "last"
    batch_size: int = 16
    device: str | None = None
    dtype: str | None = None
    device_map: object = None
    max_memory: object = None


def job_fingerprint(job: ExtractJob) -> str:
    """``LoadedModel.fingerprint`` of the model the workers will load, without loading it."""
    from analysis.models import DEFAULT_MODEL, pick_dtype

    return f"{(job.model or DEFAULT_MODEL).strip()}|bridge|{pick_dtype(job.device or 'cpu', job.dtype)}"


def _load(job: ExtractJob):
    from analysis.models import load_model

    return load_model(job.model, device=job.device, dtype=job.dtype, device_map=job.device_map,
                      max_memory=job.max_memory, progress=lambda msg: None)


def _extract_shard(lm, job: ExtractJob, texts: list[str]):
    from analysis.activations import extract

    return extract(lm, texts, list(job.hook_names), pooling=job.pooling, batch_size=job.batch_size, use_cache=False)


class ShardWorker:
    """A Ray Data actor: one model, one shard per call, the shard written by the actor."""

    def __init__(self, job: ExtractJob, out: str, settings: dict):
        self.job, self.out, self.settings = job, out, settings
        self.lm = _load(job)
        if self.lm.fingerprint != settings["fingerprint"]:
            raise RuntimeError(f"worker loaded {self.lm.fingerprint}, the run expects {settings['fingerprint']}")

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()
        done = []
        for row in rows:
            start = time.perf_counter()
            shard = sh.Shard(row["index"], row["start"], row["stop"], row["digest"])
            acts = _extract_shard(self.lm, self.job, list(row["texts"]))
            sh.write_shard(self.out, shard, acts, self.settings)
            done.append({"index": shard.index, "seconds": time.perf_counter() - start, "pid": os.getpid()})
        return pa.Table.from_pylist(done)


def extract_corpus(
    job: ExtractJob, texts: list[str], out: str | Path, *, workers: int = 1, shard_size: int = 256,
    progress: Progress | None = None, address: str | None = None, lm=None, fingerprint: str | None = None,
) -> ExtractRun:
    """Extract ``texts`` into shards under ``out``; resumable, stoppable (``Stopped`` from ``progress``).

    ``lm``: a loaded model for ``workers=0`` (else the job's model is loaded here).
    ``fingerprint``: the model's cache fingerprint, checked against the manifest on
    resume; computed from a loaded model when not given.
    """
    if workers < 0:
        raise ValueError(f"workers={workers}: use 0 (this process, no Ray) or more")
    if not texts:
        raise ValueError("the corpus holds no texts")
    out = Path(out)
    start = time.perf_counter()
    if workers == 0 and lm is None:
        lm = _load(job)
    if fingerprint is None:
        fingerprint = lm.fingerprint if lm is not None else job_fingerprint(job)
    settings = sh.run_settings(fingerprint, list(job.hook_names), job.pooling, shard_size, texts)
    manifest = sh.open_run(out, settings)
    plan = sh.plan_shards(texts, shard_size)
    skipped = []
    for s in plan:
        if sh.shard_is_done(out, s, settings):
            skipped.append(s.index)
            if str(s.index) not in manifest["shards"]:
                sh.record(out, manifest, s, 0.0)
    todo = [s for s in plan if s.index not in set(skipped)]
    computed: list[int] = []
    done_texts = sum(s.stop - s.start for s in plan if s.index in set(skipped))
    n_texts_todo = sum(s.stop - s.start for s in todo)
    run_start = time.perf_counter()
    details: dict = {}

    finish_times: list[float] = []

    def finished(shard: sh.Shard, seconds: float) -> None:
        nonlocal done_texts
        computed.append(shard.index)
        finish_times.append(time.perf_counter() - run_start)
        sh.record(out, manifest, shard, seconds)
        done_texts += shard.stop - shard.start
        new = sum(plan[i].stop - plan[i].start for i in computed)
        rate = new / max(1e-9, time.perf_counter() - run_start)
        report(progress, done_texts / len(texts),
               f"shard {len(computed) + len(skipped)}/{len(plan)}, {rate:.1f} texts/s")

    stopped = False
    try:
        if todo and workers == 0:
            for s in todo:
                t0 = time.perf_counter()
                sh.write_shard(out, s, _extract_shard(lm, job, texts[s.start: s.stop]), settings)
                finished(s, time.perf_counter() - t0)
        elif todo:
            details = _run_ray(job, texts, todo, out, settings, workers, address, finished)
    except Stopped:
        stopped = True
    sh.finish(out, manifest, len(plan))
    details["finish_seconds"] = [round(t, 3) for t in finish_times]  # since the run began, per shard
    elapsed = time.perf_counter() - run_start
    new = sum(plan[i].stop - plan[i].start for i in computed)
    return ExtractRun(out, len(texts), len(plan), tuple(sorted(computed)), tuple(skipped),
                      time.perf_counter() - start, new / elapsed if computed else 0.0,
                      manifest["complete"] and not stopped, workers, details)


def start_local_ray(num_cpus: int) -> None:
    """A new Ray instance inside this process (``address="local"``: never joins another)."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20, configure_logging=False)


def _run_ray(job, texts, todo, out, settings, workers, address, finished) -> dict:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--workers N needs Ray: pip install 'repscope[scale]' (or --workers 0 for no Ray)") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, log_to_driver=False)
        else:
            start_local_ray(max(workers, os.cpu_count() or 1))
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        gpus = float(ray.cluster_resources().get("GPU", 0)) if job.device not in ("cpu", "mps") else 0.0
        per_gpu = 1.0 if gpus >= workers else (gpus / workers if gpus else 0.0)
        cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)) // workers)
        if per_gpu and job.device in (None, "", "auto") and job.device_map is None:
            job = ExtractJob(**{**job.__dict__, "device": "cuda"})  # Ray shows each actor its own GPU
        rows = [{"index": s.index, "start": s.start, "stop": s.stop, "digest": s.digest,
                 "texts": texts[s.start: s.stop]} for s in todo]
        by_index = {s.index: s for s in todo}
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardWorker, fn_constructor_args=(job, str(out), settings), batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=per_gpu,
        )
        pids = set()
        for row in ds.iter_rows():
            pids.add(row["pid"])
            finished(by_index[row["index"]], row["seconds"])
        return {"actor_pids": sorted(pids), "gpus_per_actor": per_gpu, "cpus_per_actor": cpus}
    finally:
        if started_here:
            ray.shutdown()
