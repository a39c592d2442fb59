"""A generated corpus of malformed uploads, SAE configs and safetensors headers (issue 14).

Nothing here is committed as data: :func:`corpus` rebuilds the same cases from
a seed every run. Each case is ``(parser, filename, data)``; the parsers are
the public entry points users reach (``PARSERS``). Cases come from valid seed
files by targeted edits (the failure classes the issue found: headers, line
endings, quotes, BOMs, surrogates, invisible texts, digit limits, nesting,
duplicate keys, types) and by seeded random byte edits.
"""

from __future__ import annotations

import json
import random
import struct

from analysis.likelihood.preferences import parse_preferences
from analysis.saes.loading import safetensors_header, validate_cfg
from analysis.steering.pairs import parse_pair_upload
from analysis.uploads import parse_concept_upload, parse_records, parse_texts

PARSERS = {
    "texts": lambda name, data: parse_texts(name, data),
    "concepts": lambda name, data: parse_concept_upload(name, data),
    "records": lambda name, data: parse_records(name, data, required=[("prompt", "positive", "negative")]),
    "pairs": lambda name, data: parse_pair_upload(name, data),
    "preferences": lambda name, data: parse_preferences(name, data),
    "sae_cfg": lambda name, data: validate_cfg(data),
    "sae_header": lambda name, data: safetensors_header(data),
}

_CONV = {"prompt": [{"role": "user", "content": "Is it good?"}], "chosen": [{"role": "assistant", "content": "Yes"}],
         "rejected": [{"role": "assistant", "content": "No"}]}

SEEDS = {
    "texts": [("p.txt", b"The nurse said\nThe engineer said\nLa medica dijo\n"),
              ("p.csv", b"id,text\n1,\"Hello, world\"\n2,second\n"),
              ("p.jsonl", b'{"text": "a"}\n{"prompt": "b"}\n')],
    "concepts": [("c.csv", b"concept,text\nfemale,Mary\nmale,John\n"),
                 ("c.jsonl", b'{"text": "nurse", "concept": "care"}\n{"text": "pilot"}\n'),
                 ("c.txt", b"one\ntwo\n")],
    "records": [("r.csv", b"prompt,positive,negative\na,b,c\nd,e,f\n"),
                ("r.jsonl", b'{"prompt": "a", "positive": "b", "negative": "c"}\n')],
    "pairs": [("p.csv", b"prompt,positive,negative\nI think, love, hate\nShe is, kind, cruel\n"),
              ("p.jsonl", b'{"positive_prompt": "I love", "negative_prompt": "I hate"}\n'
                          b'{"positive_prompt": "Great", "negative_prompt": "Awful"}\n')],
    "preferences": [("d.jsonl", b'{"prompt": "Q:", "chosen": " Yes", "rejected": " No"}\n'),
                    ("d.csv", b"prompt,chosen,rejected\nQ:, Yes, No\n"),
                    ("c.jsonl", (json.dumps(_CONV) + "\n").encode())],
}

CFG = {"d_in": 4, "d_sae": 6, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
       "normalize_activations": "none", "metadata": {"hook_name": "blocks.0.hook_resid_post", "model_name": "tiny",
                                                     "prepend_bos": True}, "k": 2, "architecture": "topk"}
HEADER = {"W_enc": {"dtype": "F32", "shape": [4, 6], "data_offsets": [0, 96]},
          "W_dec": {"dtype": "F32", "shape": [6, 4], "data_offsets": [96, 192]},
          "b_dec": {"dtype": "F32", "shape": [4], "data_offsets": [192, 208]},
          "__metadata__": {"format": "pt"}}

ODD_VALUES = [None, True, 0, -1, 2**70, 1.5, float("inf"), "", "x", "4", [], ["topk"], {}, {"a": 1}, "\u200b"]

# Targeted edits: (label, function of bytes -> bytes).
EDITS = [
    ("cr_only", lambda d: d.replace(b"\n", b"\r")),
    ("crlf", lambda d: d.replace(b"\n", b"\r\n")),
    ("mixed_endings", lambda d: d.replace(b"\n", b"\r", 1)),
    ("bom", lambda d: b"\xef\xbb\xbf" + d),
    ("double_bom", lambda d: b"\xef\xbb\xbf" * 2 + d),
    ("bom_only", lambda d: b"\xef\xbb\xbf"),
    ("upper_header", lambda d: d.split(b"\n", 1)[0].upper() + b"\n" + (d.split(b"\n", 1) + [b""])[1]),
    ("title_keys", lambda d: d.replace(b'"prompt"', b'"Prompt"').replace(b'"text"', b'"Text"')),
    ("dup_header", lambda d: d.split(b"\n", 1)[0] + b"," + d.split(b"\n", 1)[0].split(b",")[-1].upper() + b"\n"
     + (d.split(b"\n", 1) + [b""])[1]),
    ("dup_key", lambda d: d.replace(b"{", b'{"TEXT": "x", "text": "y", ', 1)),
    ("unterminated_quote", lambda d: d + b'"never closed\nmore\n'),
    ("quote_mid_field", lambda d: d.replace(b",", b',ab"c', 1)),
    ("surrogate", lambda d: d.replace(b'": "', b'": "\\ud800', 1)),
    ("surrogate_low", lambda d: d.replace(b'": "', b'": "x\\udfffy', 1)),
    ("zero_width_line", lambda d: d + "\u200b\u200c\n".encode()),
    ("control_line", lambda d: d + b"\x01\x02\x03\n"),
    ("zero_width_json", lambda d: d.replace(b'": "', '": "\u200b\u2060'.encode(), 1)),
    ("huge_int", lambda d: d.replace(b"{", b'{"n": ' + b"9" * 5000 + b", ", 1)),
    ("deep_nesting", lambda d: b"[" * 50_000 + b"\n" + d),
    ("deep_object", lambda d: d.replace(b"{", b'{"x": ' + b'{"y": ' * 2000 + b"1" + b"}" * 2000 + b", ", 1)),
    ("nul", lambda d: d[: len(d) // 2] + b"\x00" + d[len(d) // 2:]),
    ("latin1", lambda d: d + "caf\xe9\n".encode("latin-1")),
    ("utf16", lambda d: d.decode("utf-8", "replace").encode("utf-16")),
    ("truncate_half", lambda d: d[: len(d) // 2]),
    ("truncate_one", lambda d: d[:-2]),
    ("empty", lambda d: b""),
    ("blank", lambda d: b" \n\t\r\n"),
    ("header_only", lambda d: d.split(b"\n", 1)[0] + b"\n"),
    ("json_list", lambda d: b"[1, 2, 3]\n"),
    ("json_scalar", lambda d: b'"text"\n'),
    ("json_null", lambda d: b"null\n"),
    ("number_text", lambda d: d.replace(b'": "', b'": 5, "_": "', 1)),
    ("many_commas", lambda d: d + b"a,b,c,d,e,f,g\n"),
    ("long_field", lambda d: d + b"x" * 200_000 + b"\n"),
    ("line_separator", lambda d: d.replace(b"\n", "\u2028".encode(), 1)),
    ("tabs", lambda d: d.replace(b",", b"\t")),
    ("formula", lambda d: d + b"=cmd|' /C calc'!A0,=1,=2\n"),
    ("html", lambda d: d + b"<script>alert(1)</script>,<b>x</b>,<a href=x>y</a>\n"),
    ("pickle", lambda d: b"\x80\x04\x95" + d),
    ("zip", lambda d: b"PK\x03\x04" + d),
    ("messages_not_list", lambda d: d.replace(b'[{"role"', b'{"x": [{"role"', 1)),
    ("bad_role", lambda d: d.replace(b'"user"', b'"admin"')),
    ("content_list", lambda d: d.replace(b'"content": "Yes"', b'"content": ["Yes"]')),
]


def _random_edits(rng: random.Random, data: bytes, n: int) -> list[bytes]:
    specials = [b"\x00", b"\xff", b"\r", b"\n", b'"', b",", b"{", b"}", b"[", b"]", b"\\", b"\xef\xbb\xbf",
                "\u200b".encode(), b"\\ud800", b"9" * 40, b"\xed\xa0\x80"]
    out = []
    for _ in range(n):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randint(0, len(buf)) if buf else 0
            if op < 0.4:
                buf[pos:pos] = rng.choice(specials)
            elif op < 0.7 and buf:
                del buf[pos: pos + rng.randint(1, 8)]
            elif buf:
                buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        out.append(bytes(buf))
    return out


def _cfg_cases(rng: random.Random) -> list[bytes]:
    cases = [json.dumps(CFG).encode()]
    for key in ("d_in", "d_sae", "k", "architecture", "dtype", "apply_b_dec_to_input", "metadata",
                "rescale_acts_by_decoder_norm", "hook_name", "device"):
        for value in ODD_VALUES:
            cases.append(json.dumps({**CFG, key: value}).encode())
    for value in ODD_VALUES:
        cases.append(json.dumps({**CFG, "metadata": {**CFG["metadata"], "hook_name": value}}).encode())
    cases += [b"[1]", b"null", b'"x"', b"{" * 20_000, b'{"d_in": ' + b"1" * 5000 + b"}", b"\xff", b""]
    cases += _random_edits(rng, json.dumps(CFG).encode(), 60)
    return cases


def _header_file(header) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * 208


def _header_cases(rng: random.Random) -> list[bytes]:
    cases = [_header_file(HEADER)]
    for field in ("dtype", "shape", "data_offsets"):
        for value in ODD_VALUES + [[0.0, 4.0], [0], [0, 1, 2], [-4, 0], "ab", [[1], [2]]]:
            cases.append(_header_file({**HEADER, "W_enc": {**HEADER["W_enc"], field: value}}))
    for value in ODD_VALUES:
        cases.append(_header_file({**HEADER, "W_enc": value}))
        cases.append(_header_file(value))
        cases.append(_header_file({**HEADER, "__metadata__": value}))
    cases += [_header_file(b"[" * 10_000), _header_file(b'{"a": ' + b"[" * 10_000), _header_file(b"{" * 60),
              _header_file(b'{"W_enc": ' + b"1" * 5000 + b"}"), b"", b"\x80", b"PK\x03\x04" + b"\0" * 40,
              struct.pack("<Q", 2**63) + b"{}", struct.pack("<Q", 384) + b"{}", struct.pack("<Q", 1) + b"{"]
    good = _header_file(HEADER)
    cases += _random_edits(rng, good, 80)
    cases += [struct.pack("<Q", rng.randrange(2**64)) + good[8:] for _ in range(20)]
    return cases


def corpus(seed: int = 14) -> list[tuple[str, str, str, bytes]]:
    """``(parser, label, filename, data)`` for every generated case (deterministic for a seed)."""
    rng = random.Random(seed)
    cases = []
    for parser, seeds in SEEDS.items():
        for filename, data in seeds:
            cases.append((parser, "seed", filename, data))
            for label, edit in EDITS:
                try:
                    mutated = edit(data)
                except (IndexError, UnicodeError):
                    continue
                cases.append((parser, label, filename, mutated))
            for i, mutated in enumerate(_random_edits(rng, data, 25)):
                cases.append((parser, f"random{i}", filename, mutated))
        cases.append((parser, "bad_suffix", "upload.pkl", seeds[0][1]))
        cases.append((parser, "no_suffix", "upload", seeds[0][1]))
    cases += [("sae_cfg", f"cfg{i}", "cfg.json", d) for i, d in enumerate(_cfg_cases(rng))]
    cases += [("sae_header", f"header{i}", "sae_weights.safetensors", d) for i, d in enumerate(_header_cases(rng))]
    return cases
