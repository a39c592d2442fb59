"""Issue 14, "Parsers": one regression test per reported row (uploads, pairs, preferences)."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from analysis.likelihood.preferences import parse_preferences
from analysis.steering.pairs import parse_pair_upload
from analysis.uploads import UploadError, parse_concept_upload, parse_records, parse_texts

STEERING = [("prompt", "positive", "negative")]


def jsonl(*objects) -> bytes:
    return "\n".join(json.dumps(o) for o in objects).encode()


# --- capitalised pair headers ------------------------------------------------------


def test_capitalised_csv_pair_headers_parse():
    pairs = parse_pair_upload("p.csv", b"Prompt,Positive,Negative\np,a,b\nq,c,d\n")
    assert [(p.prompt, p.positive, p.negative) for p in pairs.pairs] == [("p", "a", "b"), ("q", "c", "d")]


def test_capitalised_jsonl_pair_keys_parse():
    data = jsonl({"Prompt": "p", "POSITIVE": "a", " Negative ": "b"}, {"prompt": "q", "positive": "c", "negative": "d"})
    assert [p.prompt for p in parse_pair_upload("p.jsonl", data).pairs] == ["p", "q"]


def test_capitalised_prompt_pair_headers_parse():
    pairs = parse_pair_upload("p.csv", b"Positive_Prompt,Negative_Prompt\nI love,I hate\nGreat,Awful\n")
    assert [(p.positive, p.negative) for p in pairs.pairs] == [("I love", "I hate"), ("Great", "Awful")]


def test_records_come_back_under_normalised_keys():
    assert parse_records("p.csv", b" Prompt ,POSITIVE,negative,Note\na,b,c,x\n", required=STEERING) == [
        {"prompt": "a", "positive": "b", "negative": "c", "note": "x"}
    ]


# --- bare ValueErrors: the 4300-digit integer limit ---------------------------------


@pytest.mark.parametrize("parse", [
    lambda d: parse_texts("p.jsonl", d),
    lambda d: parse_records("p.jsonl", d, required=STEERING),
    lambda d: parse_concept_upload("p.jsonl", d),
    lambda d: parse_pair_upload("p.jsonl", d),
    lambda d: parse_preferences("p.jsonl", d),
])
def test_huge_integer_is_an_upload_error_with_file_and_line(parse):
    data = b'{"text": "ok", "prompt": "p", "positive": "a", "negative": "b", "chosen": "c", "rejected": "d"}\n' \
           b'{"text": "ok", "n": ' + b"7" * 5000 + b"}\n"
    with pytest.raises(UploadError, match=r"p\.jsonl: line 2 holds a value JSON cannot be read"):
        parse(data)


def test_huge_integer_in_a_conversational_file():
    first = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "A"}],
             "rejected": [{"role": "assistant", "content": "B"}]}
    data = json.dumps(first).encode() + b'\n{"prompt": ' + b"1" * 5000 + b"}\n"
    with pytest.raises(UploadError, match=r"line 2"):
        parse_preferences("c.jsonl", data)


# --- silent mis-parses ----------------------------------------------------------------


@pytest.mark.parametrize("sep", [b"\r", b"\r\n", b"\n"])
def test_cr_only_and_crlf_line_endings_split_texts(sep):
    assert parse_texts("p.txt", sep.join([b"one", b"two", b"three"])) == ["one", "two", "three"]


def test_mixed_line_endings_split_texts_in_every_format():
    assert parse_texts("p.txt", b"a\rb\r\nc\nd") == ["a", "b", "c", "d"]
    assert parse_texts("p.csv", b"text\ra\r\nb\nc\r") == ["a", "b", "c"]
    assert parse_texts("p.jsonl", b'{"text": "a"}\r{"text": "b"}\r\n{"text": "c"}') == ["a", "b", "c"]


def test_unterminated_csv_quote_is_an_error_naming_its_line():
    data = b'text\nfine\n"this quote never closes\nswallowed\nrows\n'
    with pytest.raises(UploadError, match=r"p\.csv: line 3 opens a quoted field .* never closed"):
        parse_texts("p.csv", data)


def test_quoted_multiline_field_still_parses():
    assert parse_texts("p.csv", b'text\n"two\nlines"\nnext\n') == ["two\nlines", "next"]


@pytest.mark.parametrize("header", [b"text,text", b"Text,text", b"text, TEXT "])
def test_duplicate_text_columns_are_an_error(header):
    with pytest.raises(UploadError, match=r"names column .* twice .*Rename or delete one"):
        parse_texts("p.csv", header + b"\na,b\n")


def test_duplicate_chosen_column_is_an_error():
    with pytest.raises(UploadError, match=r"names column 'chosen' twice \(columns 2 and 4"):
        parse_preferences("p.csv", b"prompt,chosen,rejected,chosen\nq,a,b,c\n")


def test_duplicate_jsonl_keys_are_an_error():
    with pytest.raises(UploadError, match=r"line 1 has the key 'Text' twice"):
        parse_texts("p.jsonl", b'{"text": "a", "Text": "b"}\n')


@pytest.mark.parametrize("boms", [1, 2, 3])
def test_one_or_more_boms_are_stripped(boms):
    data = b"\xef\xbb\xbf" * boms + b"first\nsecond\n"
    assert parse_texts("p.txt", data) == ["first", "second"]
    assert parse_texts("p.csv", b"\xef\xbb\xbf" * boms + b"text\nfirst\n") == ["first"]


def test_utf8_bom_keeps_conversational_detection():
    rec = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Yes"}],
           "rejected": [{"role": "assistant", "content": "No"}]}
    data = b"\xef\xbb\xbf" + json.dumps(rec).encode() + b"\n"
    assert parse_preferences("c.jsonl", data).layout == "conversational"


def test_unstripped_preference_texts_survive_capitalised_headers_and_cr_endings():
    data = b"Prompt,Chosen,Rejected\rQ:, Yes, No\r"
    pair = parse_preferences("p.csv", data).pairs[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Q:", " Yes", " No")


# --- garbage accepted -------------------------------------------------------------------


@pytest.mark.parametrize(("filename", "data"), [
    ("p.jsonl", b'{"text": "fine"}\n{"text": "\\ud800"}\n'),
    ("c.jsonl", b'{"text": "fine"}\n{"text": "abc\\udfffdef"}\n'),
])
def test_lone_surrogate_is_rejected_with_its_line(filename, data):
    with pytest.raises(UploadError, match=r"line 2 field 'text' holds a lone UTF-16 surrogate U\+D[8-F]"):
        parse_texts(filename, data)
    with pytest.raises(UploadError, match=r"line 2 .*surrogate"):
        parse_concept_upload(filename, data)


def test_lone_surrogate_in_a_pair_is_rejected():
    data = jsonl({"prompt": "a", "positive": "b", "negative": "c"}, {"prompt": "\ud83d", "positive": "b", "negative": "c"})
    with pytest.raises(UploadError, match=r"line 2 field 'prompt' holds a lone UTF-16 surrogate"):
        parse_pair_upload("p.jsonl", data)


def test_lone_surrogate_in_a_conversational_message_is_rejected():
    rec = {"prompt": [{"role": "user", "content": "Hi \ud800"}], "chosen": [{"role": "assistant", "content": "A"}],
           "rejected": [{"role": "assistant", "content": "B"}]}
    with pytest.raises(UploadError, match=r"line 1 field 'prompt' message 0 content holds a lone UTF-16 surrogate"):
        parse_preferences("c.jsonl", json.dumps(rec).encode())


@pytest.mark.parametrize("text", ["\u200b", "\u200b\u200c\u200d", "\ufeff\u2060", "\x01\x02", "\u00ad", "\x1b"])
def test_invisible_only_texts_are_rejected_with_position(text):
    data = ("visible line\n" + text + "\n").encode()
    with pytest.raises(UploadError, match=r"p\.txt: line 2 has only invisible characters"):
        parse_texts("p.txt", data)


def test_invisible_only_csv_cell_names_its_row():
    with pytest.raises(UploadError, match=r"p\.csv: row 3 has only invisible characters"):
        parse_texts("p.csv", "text\nok\n\u200b\u200b\n".encode())


def test_text_with_a_zero_width_joiner_inside_is_kept():
    assert parse_texts("p.txt", "family \U0001f468\u200d\U0001f469\n".encode()) == ["family \U0001f468\u200d\U0001f469"]


def test_surrogate_concept_cannot_be_saved(tmp_path, monkeypatch):
    from analysis.concepts import sets as cs

    monkeypatch.setenv("REPSCOPE_WORKSPACE", str(tmp_path))
    texts = [f"a fine example text {i}" for i in range(9)] + ["bad \ud800 text"]
    with pytest.raises(ValueError, match=r"text 10 holds a lone UTF-16 surrogate"):
        cs.save_uploaded_concepts({"my_topic": texts})
    assert not (tmp_path / "concepts" / "my_topic.yaml").exists()


# --- memory --------------------------------------------------------------------------


def test_60_mb_preference_jsonl_is_refused_before_decoding():
    line = b'{"prompt": "question here", "chosen": "yes", "rejected": "no"}\n'
    data = line * (60_000_000 // len(line) + 1)
    tracemalloc.start()
    try:
        with pytest.raises(UploadError, match=r"p\.jsonl is 60\.0 MB; the limit is 20\.0 MB"):
            parse_preferences("p.jsonl", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The file itself is not traced (allocated before start); refusing must not copy or decode it.
    assert peak < 5_000_000, f"refusing a 60 MB upload allocated {peak / 1e6:.1f} MB"


def test_oversized_conversational_file_is_refused_before_decoding():
    rec = {"prompt": [{"role": "user", "content": "x" * 100}], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    line = json.dumps(rec).encode() + b"\n"
    data = line * (21_000_000 // len(line) + 1)
    tracemalloc.start()
    try:
        with pytest.raises(UploadError, match=r"the limit is 20\.0 MB"):
            parse_preferences("c.jsonl", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
