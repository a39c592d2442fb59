"""Upload parsing: good files of each type, and every rejection with its wording."""

from __future__ import annotations

import json
import pickle
import time

import pytest

from analysis.uploads import UploadError, parse_concept_upload, parse_records, parse_texts

STEERING = [("prompt", "positive", "negative")]
PREFERENCE = [("prompt", "chosen", "rejected")]


def jsonl(*objects) -> bytes:
    return "\n".join(json.dumps(o, ensure_ascii=False) for o in objects).encode()


# --- good files -------------------------------------------------------------------


def test_txt_one_text_per_line_blank_lines_skipped():
    data = "The nurse said\n\n  The engineer said  \r\n\t\nLa médica dijo\n".encode()
    assert parse_texts("prompts.txt", data) == ["The nurse said", "The engineer said", "La médica dijo"]


def test_txt_with_utf8_bom():
    assert parse_texts("p.txt", b"\xef\xbb\xbfhello\nworld") == ["hello", "world"]


def test_csv_text_column():
    data = b'id,text\n1,"Hello, world"\n2,"multi\nline"\n3,\n'
    assert parse_texts("p.csv", data) == ["Hello, world", "multi\nline"]


def test_csv_prompt_column_case_insensitive():
    assert parse_texts("p.CSV", b"ID, Prompt \n1,a\n2,b\n") == ["a", "b"]


def test_jsonl_text_or_prompt_field():
    data = jsonl({"text": "a"}, {"prompt": "b", "meta": 1}) + b"\n\n" + jsonl({"text": "c"})
    assert parse_texts("p.jsonl", data) == ["a", "b", "c"]


def test_custom_column_names():
    assert parse_texts("p.csv", b"sentence\nx\n", column_names=("sentence",)) == ["x"]


def test_records_jsonl_steering_pairs():
    data = jsonl(
        {"prompt": "I think", "positive": " love", "negative": " hate", "source": "hand"},
        {"prompt": "She is", "positive": "kind", "negative": "cruel"},
    )
    records = parse_records("pairs.jsonl", data, required=STEERING)
    assert records == [
        {"prompt": "I think", "positive": "love", "negative": "hate", "source": "hand"},
        {"prompt": "She is", "positive": "kind", "negative": "cruel"},
    ]


def test_records_csv_preference_pairs():
    data = b"prompt,chosen,rejected,note\nQ1,good,bad,x\n,,,\nQ2,fine,worse,\n"
    records = parse_records("prefs.csv", data, required=PREFERENCE)
    assert records == [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "note": "x"},
        {"prompt": "Q2", "chosen": "fine", "rejected": "worse", "note": ""},
    ]


def test_records_accept_any_alternative():
    required = [("prompt", "chosen", "rejected"), ("prompt", "positive", "negative")]
    data = jsonl(
        {"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "positive": "b", "negative": "c"}
    )
    assert len(parse_records("mixed.jsonl", data, required=required)) == 2


def test_concepts_from_txt_named_after_file():
    assert parse_concept_upload("dir/female names.txt", b"Mary\nAnna\n") == {"female names": ["Mary", "Anna"]}


def test_concepts_from_csv_with_concept_column():
    data = b"concept,text\nfemale,Mary\nmale,John\nfemale,Anna\n"
    assert parse_concept_upload("names.csv", data) == {"female": ["Mary", "Anna"], "male": ["John"]}


def test_concepts_from_jsonl_without_concept_use_stem():
    assert parse_concept_upload("jobs.jsonl", jsonl({"text": "nurse"}, {"text": "pilot"})) == {
        "jobs": ["nurse", "pilot"]
    }


def test_concepts_from_jsonl_with_concept():
    data = jsonl({"text": "nurse", "concept": "care"}, {"text": "pilot", "concept": "travel"})
    assert parse_concept_upload("jobs.jsonl", data) == {"care": ["nurse"], "travel": ["pilot"]}


# --- rejections -------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"  \n\n\t"])
def test_empty_file(data):
    with pytest.raises(UploadError, match=r"p.txt is empty\. Upload a file with at least one non-blank text"):
        parse_texts("p.txt", data)


def test_binary_file_with_nul_bytes():
    data = pickle.dumps({"text": ["a"]})
    with pytest.raises(UploadError, match=r"looks like a binary file \(NUL byte at offset \d+\).*UTF-8 text"):
        parse_texts("evil.txt", data)


def test_pickle_is_never_loaded(monkeypatch):
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    with pytest.raises(UploadError):
        parse_texts("evil.jsonl", pickle.dumps(["a"], protocol=0))


def test_invalid_utf8_reports_byte_offset():
    data = b"fine line\ncaf\xe9 latin-1\n"
    with pytest.raises(
        UploadError, match=r"not valid UTF-8: byte 0xe9 at offset 13 \(line 2\)\. Re-save the file with UTF-8"
    ):
        parse_texts("p.txt", data)


def test_too_large_says_limit():
    with pytest.raises(UploadError, match=r"p.csv is 0\.0 MB; the limit is 0\.0 MB\. Split it"):
        parse_texts("p.csv", b"text\n" + b"a\n" * 20, max_bytes=10)


def test_50_mb_upload_rejected_quickly_without_decoding(monkeypatch):
    data = b"x" * 50_000_000

    class Spy(bytes):
        def decode(self, *args, **kwargs):  # noqa: ARG002
            pytest.fail("oversized upload was decoded")

    started = time.perf_counter()
    with pytest.raises(UploadError, match=r"big.txt is 50\.0 MB; the limit is 20\.0 MB"):
        parse_texts("big.txt", Spy(data))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("p.txt", b"a\nb\nc\n"),
        ("p.csv", b"text\na\nb\nc\n"),
        ("p.jsonl", jsonl({"text": "a"}, {"text": "b"}, {"text": "c"})),
    ],
)
def test_too_many_items_says_limit_and_split(filename, data):
    with pytest.raises(
        UploadError,
        match=rf"{filename} has more than 2 texts \(the limit\)\. Split it into files of at most 2",
    ):
        parse_texts(filename, data, max_items=2)


def test_too_many_records():
    data = jsonl(*[{"prompt": "p", "positive": "a", "negative": "b"}] * 3)
    with pytest.raises(UploadError, match=r"more than 2 records \(the limit\)\. Split"):
        parse_records("pairs.jsonl", data, required=STEERING, max_items=2)


def test_csv_missing_column_lists_found_and_expected():
    with pytest.raises(
        UploadError,
        match=r"p.csv: missing column\. Found columns: \['label', 'sentence'\]; expected one of 'text', 'prompt'\. Rename",
    ):
        parse_texts("p.csv", b"sentence,label\nhi,1\n")


def test_jsonl_missing_field_gives_line():
    data = jsonl({"text": "ok"}, {"sentence": "no"})
    with pytest.raises(
        UploadError, match=r"line 2 has fields \['sentence'\]; expected one of 'text', 'prompt'"
    ):
        parse_texts("p.jsonl", data)


def test_records_csv_missing_columns():
    with pytest.raises(
        UploadError,
        match=r"missing columns\. Found columns: \['chosen', 'prompt'\]; expected \(prompt, chosen, rejected\)",
    ):
        parse_records("prefs.csv", b"prompt,chosen\na,b\n", required=PREFERENCE)


def test_records_jsonl_missing_fields_lists_alternatives():
    data = jsonl({"prompt": "a", "positive": "b"})
    required = [("prompt", "positive", "negative"), ("prompt", "chosen", "rejected")]
    with pytest.raises(
        UploadError,
        match=r"line 1 has fields \['positive', 'prompt'\]; expected \(prompt, positive, negative\) or \(prompt, chosen, rejected\)",
    ):
        parse_records("pairs.jsonl", data, required=required)


def test_records_empty_required_field():
    with pytest.raises(UploadError, match=r"row 3 field 'negative' is empty; it must be non-empty text"):
        parse_records("pairs.csv", b"prompt,positive,negative\na,b,c\nd,e\n", required=STEERING)


def test_records_non_string_field():
    data = jsonl({"prompt": "a", "positive": "b", "negative": 3})
    with pytest.raises(UploadError, match=r"line 1 field 'negative' is a int; it must be non-empty text"):
        parse_records("pairs.jsonl", data, required=STEERING)


def test_malformed_json_gives_line_number():
    data = b'{"text": "ok"}\n{"text": "broken",}\n'
    with pytest.raises(
        UploadError, match=r"p.jsonl: line 2 is not valid JSON \(.*\)\. Each line must be one JSON object"
    ):
        parse_texts("p.jsonl", data)


def test_jsonl_deep_nesting_is_rejected_not_crashing():
    with pytest.raises(UploadError, match=r"line 1 is nested too deeply"):
        parse_texts("p.jsonl", b"[" * 100_000)


def test_unicode_line_separator_inside_a_text_is_kept():
    text = "first\u2028still first"
    assert parse_texts("p.jsonl", jsonl({"text": text}, {"text": "second"})) == [text, "second"]
    assert parse_texts("p.txt", f"{text}\nsecond".encode()) == [text, "second"]


def test_jsonl_line_not_an_object():
    with pytest.raises(UploadError, match=r"line 1 is a JSON list, not an object"):
        parse_texts("p.jsonl", b'["a", "b"]\n')


def test_jsonl_text_must_be_string():
    with pytest.raises(UploadError, match=r"line 1 field 'text' is a int; it must be a string"):
        parse_texts("p.jsonl", b'{"text": 5}\n')


def test_csv_too_many_fields_in_row():
    with pytest.raises(
        UploadError, match=r"line 2 has 3 fields but the header has 1\. Quote fields that contain commas"
    ):
        parse_texts("p.csv", b"text\nhello, big, world\n")


def test_unsupported_extension_lists_valid_types():
    with pytest.raises(
        UploadError, match=r"unsupported file type '\.pkl'\. Valid types are \.txt, \.csv, \.jsonl"
    ):
        parse_texts("model.pkl", b"data")


def test_records_reject_txt():
    with pytest.raises(UploadError, match=r"unsupported file type '\.txt'\. Valid types are \.csv, \.jsonl"):
        parse_records("pairs.txt", b"a\n", required=STEERING)


def test_header_only_csv_has_no_texts():
    with pytest.raises(UploadError, match=r"p.csv: no texts found"):
        parse_texts("p.csv", b"text\n\n")


def test_concept_column_blank_cell():
    with pytest.raises(UploadError, match=r"row 3 has text but no concept name"):
        parse_concept_upload("c.csv", b"concept,text\nfemale,Mary\n,John\n")


def test_upload_error_is_a_value_error():
    assert issubclass(UploadError, ValueError)


def test_required_must_not_be_empty():
    with pytest.raises(ValueError, match="required must list"):
        parse_records("p.jsonl", b'{"a": "b"}', required=[])
