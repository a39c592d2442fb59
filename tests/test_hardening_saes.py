"""Issue 14, "SAE cfg/header validation" and "valid safetensors refused": one test per row.

Every malformed cfg.json or safetensors header raises SAELoadError (a
ValueError) with a clear message, never TypeError/RecursionError/KeyError, and
out-of-range values are refused at load time instead of failing in ``encode``.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from analysis.saes.loading import SAELoadError, load_sae, load_sae_upload, safetensors_header, validate_cfg
from analysis.saes.training import build_sae


def _pair(tmp_path, k=2):
    g = torch.Generator().manual_seed(0)
    state = {"W_enc": torch.randn(4, 6, generator=g), "b_enc": torch.zeros(6),
             "W_dec": torch.randn(6, 4, generator=g), "b_dec": torch.zeros(4)}
    folder = tmp_path / "sae"
    build_sae(state, k, "blocks.0.hook_resid_post", "tiny").save_model(folder)
    return json.loads((folder / "cfg.json").read_text()), (folder / "sae_weights.safetensors").read_bytes()


def _cfg(base: dict, **change) -> bytes:
    cfg = {**base, **change}
    return json.dumps(cfg).encode()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _pair(tmp_path_factory.mktemp("sae"))


@pytest.mark.parametrize(("change", "message"), [
    ({"architecture": ["topk"]}, r"'architecture' must be a string"),
    ({"architecture": None}, r"'architecture' must be a string"),
    ({"k": 0}, r"'k' .* must be an integer in 1\.\.d_sae=6, got 0"),
    ({"k": 999}, r"'k' .* got 999"),
    ({"k": -3}, r"'k' .* got -3"),
    ({"k": "4"}, r"'k' .* got '4'"),
    ({"k": True}, r"'k' .* got True"),
    ({"k": 2.0}, r"'k' .* got 2\.0"),
    ({"apply_b_dec_to_input": "yes"}, r"'apply_b_dec_to_input' must be true or false, got 'yes'"),
    ({"rescale_acts_by_decoder_norm": 1}, r"'rescale_acts_by_decoder_norm' must be true or false"),
    ({"dtype": ["F32"]}, r"'dtype' must be one of"),
    ({"dtype": "float8"}, r"'dtype' must be one of"),
    ({"d_in": True}, r"'d_in' must be a positive integer"),
    ({"d_sae": 10**30}, r"'d_sae' must be a positive integer"),
    ({"metadata": {"hook_name": 6}}, r"'metadata\.hook_name' must be a string"),
    ({"metadata": ["x"]}, r"'metadata' must be a JSON object"),
    ({"hook_name": {"a": 1}}, r"'hook_name' must be a string"),
])
def test_bad_cfg_values_are_sae_load_errors(pair, change, message):
    cfg, weights = pair
    with pytest.raises(SAELoadError, match=message):
        load_sae_upload(_cfg(cfg, **change), weights)


@pytest.mark.parametrize("raw", [b"[1, 2]", b"null", b'"cfg"', b"3", b"\xff\xfe", b"{" * 10_000, b"[" * 10_000,
                                 b'{"d_in": ' + b"9" * 5000 + b"}", b'{"d_in": 4, "d_in": 5}'])
def test_garbage_cfg_json_is_an_sae_load_error(raw):
    with pytest.raises(SAELoadError):
        validate_cfg(raw)


def _header_file(header, body=b"") -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.mark.parametrize("header", [[1, 2], None, "tensors", 77])
def test_header_that_is_not_an_object(header):
    with pytest.raises(SAELoadError, match=r"the header must be a JSON object"):
        safetensors_header(_header_file(header))


@pytest.mark.parametrize(("entry", "message"), [
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, r"dtype \['F32'\]"),
    ({"dtype": "F32", "shape": [1], "data_offsets": "ab"}, r"'data_offsets' must be two integers"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}, r"'data_offsets' must be two integers"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, True]}, r"'data_offsets' must be two integers"),
    ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, r"'shape' must be a list"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, r"'shape' must be a list of non-negative"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, r"offsets span 4 bytes but shape \[2\]"),
    ("not an entry", r"entry must be an object"),
])
def test_malformed_tensor_entries(entry, message):
    with pytest.raises(SAELoadError, match=message):
        safetensors_header(_header_file({"W_enc": entry}, b"\0" * 8))


def test_deep_nesting_is_refused_without_recursion():
    raw = b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(SAELoadError, match=r"nested too deeply"):
        safetensors_header(_header_file(raw))


def test_huge_integer_in_header_is_clear():
    raw = b'{"W_enc": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    with pytest.raises(SAELoadError, match=r"sae_weights\.safetensors header holds a value JSON cannot be read"):
        safetensors_header(_header_file(raw, b"\0" * 4))


def _padded_header(n_bytes: int) -> bytes:
    """A valid one-tensor header padded with spaces to exactly ``n_bytes`` (safetensors allows trailing spaces)."""
    raw = json.dumps({"W_enc": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return raw + b" " * (n_bytes - len(raw))


@pytest.mark.parametrize(("n", "start"), [(384, b"\x80"), (0x80, b"\x80"), (0x4B50, b"PK"), (0x14B50, b"PK")])
def test_valid_header_lengths_whose_first_bytes_looked_like_a_pickle(n, start):
    """0x80 is pickle's first byte, b"PK" (0x4B50 little-endian) a zip's: both are valid lengths."""
    data = struct.pack("<Q", n) + _padded_header(n) + b"\0" * 4
    assert data.startswith(start)
    header = safetensors_header(data)
    assert header["W_enc"]["shape"] == [1]


def test_safetensors_library_reads_the_same_files():
    """The oracle: the safetensors library accepts exactly the padded headers we accept."""
    from safetensors.numpy import load

    for n in (384, 0x4B50):
        data = struct.pack("<Q", n) + _padded_header(n) + np.float32(1.5).tobytes()
        assert load(data)["W_enc"].tolist() == [1.5]
        assert safetensors_header(data)["W_enc"]["data_offsets"] == [0, 4]


def test_real_pickles_are_still_named_as_pickles():
    import io
    import pickle

    buf = io.BytesIO()
    torch.save({"W_enc": torch.zeros(2)}, buf)
    for data in (buf.getvalue(), pickle.dumps({"W_enc": [1, 2]})):
        with pytest.raises(SAELoadError, match=r"pickle"):
            safetensors_header(data)


def test_k_zero_no_longer_loads_from_a_folder(tmp_path):
    cfg, weights = _pair(tmp_path)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({**cfg, "k": 0}))
    (folder / "sae_weights.safetensors").write_bytes(weights)
    with pytest.raises(SAELoadError, match=r"'k'"):
        load_sae(str(folder))


def test_unreadable_quality_json_is_an_sae_load_error(tmp_path):
    cfg, weights = _pair(tmp_path)
    folder = tmp_path / "sae"
    (folder / "quality.json").write_text("{broken")
    with pytest.raises(SAELoadError, match=r"quality\.json"):
        load_sae(str(folder))


def test_valid_pair_still_loads_and_encodes(tmp_path):
    cfg, weights = _pair(tmp_path, k=3)
    loaded = load_sae_upload(json.dumps(cfg).encode(), weights)
    assert loaded.sae.cfg.k == 3
