"""Past one machine: memory estimates before loading, device placement options,
corpus-scale sharded extraction (Ray Data, optional extra ``scale``) and a
remote-capable extraction backend (nnsight, optional extra ``remote``).

Ray and nnsight are imported only inside the functions that need them.
"""

from analysis.scale.memory import (
    InsufficientMemory, MemoryNeed, MemoryPlan, check_fits, estimate, free_memory, plan, spec_for,
)
from analysis.scale.nnsight_backend import NnsightError, extract_nnsight, module_path
from analysis.scale.placement import parse_device_map, parse_max_memory
from analysis.scale.ray_extract import ExtractJob, ExtractRun, extract_corpus
from analysis.scale.shards import iter_shards, load_shards, read_corpus

__all__ = [
    "ExtractJob", "ExtractRun", "InsufficientMemory", "MemoryNeed", "MemoryPlan", "NnsightError", "check_fits",
    "estimate", "extract_corpus", "extract_nnsight", "free_memory", "iter_shards", "load_shards", "module_path",
    "parse_device_map", "parse_max_memory", "plan", "read_corpus", "spec_for",
]
