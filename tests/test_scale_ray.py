"""Corpus extraction on Ray Data, in-process on this machine's CPUs, with the tiny HF model.

Ray is the optional extra ``scale``; ``make setup`` installs it, so these run in CI.
The oracle is single-process ``extract`` with the same batch size (1: every text
alone, so batch composition cannot change a bit) and the actors' thread count (Ray
gives a 1-CPU actor one thread; float32 CPU matmuls round by thread count) — shards
must equal it exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from analysis.activations import extract
from analysis.scale import load_shards
from analysis.scale.ray_extract import ExtractJob, extract_corpus, start_local_ray

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post")


def oracle(lm, texts):
    """Single-process extract, one text per pass, one thread like each 1-CPU actor."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return extract(lm, texts, list(HOOKS), batch_size=1, use_cache=False)
    finally:
        torch.set_num_threads(threads)


def corpus(n: int) -> list[str]:
    from tests.conftest import TINY_WORDS

    rng = np.random.default_rng(1)
    return [" ".join(rng.choice(TINY_WORDS[:60], size=int(rng.integers(1, 10)))) for _ in range(n)]


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(2)
    yield
    ray.shutdown()


def test_two_cpu_workers_write_the_shards_extract_computes(tiny_bridge_lm, tmp_path, local_ray):
    lm, _ = tiny_bridge_lm
    texts = corpus(10)
    job = ExtractJob(model=lm.name, hook_names=HOOKS, batch_size=1, device="cpu")
    run = extract_corpus(job, texts, tmp_path, workers=2, shard_size=3)
    assert run.complete and run.computed == (0, 1, 2, 3) and run.n_shards == 4
    pids = run.details["actor_pids"]
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids  # the model ran in actors, not here
    got = load_shards(tmp_path)
    want = oracle(lm, texts)
    for name in HOOKS:
        assert np.array_equal(got.values[name], want.values[name]), name
    assert np.array_equal(got.n_tokens, want.n_tokens)


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from analysis.scale.ray_extract import ExtractJob, extract_corpus
texts = {texts!r}
job = ExtractJob(model={model!r}, hook_names={hooks!r}, batch_size=1, device="cpu")
seen = []
def die_after_two(fraction, stage):
    seen.append(stage)
    if len(seen) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash: no cleanup, no finally
extract_corpus(job, texts, {out!r}, workers=2, shard_size=2, progress=die_after_two)
"""


def test_a_killed_run_resumes_without_recomputing_finished_shards(tiny_bridge_lm, tmp_path, local_ray):
    lm, _ = tiny_bridge_lm
    texts = corpus(12)
    out = tmp_path / "out"
    script = textwrap.dedent(_KILLED_RUN).format(tests=str(ROOT / "tests"), texts=texts, model=lm.name,
                                                  hooks=HOOKS, out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "RAY_ADDRESS": ""})
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the killed driver's own Ray processes
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    finished = sorted(int(k) for k in manifest["shards"])
    assert len(finished) >= 2 and not manifest["complete"]
    stamps = {i: (out / f"shard-{i:05d}.safetensors").stat().st_mtime_ns for i in finished}

    job = ExtractJob(model=lm.name, hook_names=HOOKS, batch_size=1, device="cpu")
    run = extract_corpus(job, texts, out, workers=2, shard_size=2)
    assert run.complete and set(finished) <= set(run.skipped)
    assert set(run.computed) | set(run.skipped) == set(range(6)) and not set(run.computed) & set(run.skipped)
    assert {i: (out / f"shard-{i:05d}.safetensors").stat().st_mtime_ns for i in finished} == stamps
    want = oracle(lm, texts)
    got = load_shards(out)
    for name in HOOKS:
        assert np.array_equal(got.values[name], want.values[name]), name
