"""Property-based fuzz (hypothesis) of every parser: only the documented exception type comes out.

Inputs are raw bytes, text files built from hostile lines and line endings,
CSV files with random headers, JSONL with random (nested, duplicate-prone)
objects, SAE cfg dicts with random values, and safetensors headers with random
entries and length fields. Accepted inputs must satisfy the parser's
invariants (tests/test_fuzz_corpus.check_result).
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_corpus import CFG, HEADER, PARSERS
from tests.test_fuzz_corpus import DOCUMENTED, check_result

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

_HOSTILE_CHARS = st.sampled_from(list("abc ,\"'\t\r\n{}[]:\\=+-@<>&`*_#!") +
                                 ["\u200b", "\ufeff", "\ud800", "\u2028", "\x00", "\x1b", "é", "\U0001f600"])
_LINE = st.text(alphabet=st.one_of(_HOSTILE_CHARS, st.characters()), max_size=30)
_ENDING = st.sampled_from(["\n", "\r\n", "\r"])
_KEYS = st.sampled_from(["text", "Text", " TEXT ", "prompt", "Prompt", "positive", "negative", "chosen", "rejected",
                         "concept", "positive_prompt", "negative_prompt", "split", "kind", "x"])
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _LINE),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=8)
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]), "content": _LINE})


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@st.composite
def text_files(draw):
    lines = draw(st.lists(_LINE, min_size=0, max_size=8))
    ending = draw(_ENDING)
    bom = draw(st.sampled_from(["", "\ufeff", "\ufeff\ufeff"]))
    return _encode(bom + ending.join(lines))


@st.composite
def csv_files(draw):
    header = draw(st.lists(_KEYS, min_size=1, max_size=4))
    rows = draw(st.lists(st.lists(_LINE, min_size=0, max_size=5), max_size=6))
    ending = draw(_ENDING)
    return _encode(ending.join([",".join(header)] + [",".join(r) for r in rows]))


@st.composite
def jsonl_files(draw):
    objects = draw(st.lists(st.one_of(st.dictionaries(_KEYS, _JSON, max_size=5), _JSON), max_size=5))
    conversational = draw(st.booleans())
    if conversational:
        objects.insert(0, {"prompt": draw(st.lists(_MESSAGE, max_size=2)), "chosen": draw(st.lists(_MESSAGE, max_size=2)),
                           "rejected": draw(st.lists(_MESSAGE, max_size=2))})
    ending = draw(_ENDING)
    lines = [json.dumps(o, ensure_ascii=draw(st.booleans())) for o in objects]
    return _encode(ending.join(lines))


UPLOAD_FILES = st.one_of(
    st.tuples(st.just("p.txt"), text_files()),
    st.tuples(st.just("p.csv"), csv_files()),
    st.tuples(st.just("p.jsonl"), jsonl_files()),
    st.tuples(st.sampled_from(["p.txt", "p.csv", "p.jsonl", "p.bin"]), st.binary(max_size=300)),
)


def _run(parser: str, filename: str, data: bytes) -> None:
    try:
        result = PARSERS[parser](filename, data)
    except DOCUMENTED[parser] as err:
        assert str(err).strip()
        return
    check_result(parser, result)


@pytest.mark.parametrize("parser", ["texts", "concepts", "records", "pairs", "preferences"])
@FUZZ
@given(upload=UPLOAD_FILES)
def test_upload_parsers_raise_only_upload_error(parser, upload):
    _run(parser, *upload)


@st.composite
def sae_cfgs(draw):
    cfg = dict(CFG)
    for key in draw(st.lists(st.sampled_from(sorted(CFG) + ["hook_name", "rescale_acts_by_decoder_norm"]),
                             max_size=3)):
        cfg[key] = draw(_JSON)
    return json.dumps(cfg).encode()


@FUZZ
@given(data=st.one_of(sae_cfgs(), st.binary(max_size=200), _JSON.map(lambda v: json.dumps(v).encode())))
def test_sae_cfg_raises_only_sae_load_error(data):
    _run("sae_cfg", "cfg.json", data)


@st.composite
def safetensors_files(draw):
    header = dict(HEADER)
    for name in draw(st.lists(st.sampled_from(["W_enc", "W_dec", "b_dec", "__metadata__", "extra"]), max_size=3)):
        header[name] = draw(st.one_of(_JSON, st.fixed_dictionaries({
            "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "F64", "I8"]), _JSON),
            "shape": st.one_of(st.lists(st.integers(-2, 10), max_size=3), _JSON),
            "data_offsets": st.one_of(st.lists(st.integers(-5, 300), min_size=2, max_size=2), _JSON)})))
    raw = json.dumps(header).encode()
    length = draw(st.one_of(st.just(len(raw)), st.integers(0, 2**64 - 1)))
    return struct.pack("<Q", length) + raw + b"\0" * draw(st.integers(0, 300))


@FUZZ
@given(data=st.one_of(safetensors_files(), st.binary(max_size=120)))
def test_safetensors_header_raises_only_sae_load_error(data):
    _run("sae_header", "sae_weights.safetensors", data)
