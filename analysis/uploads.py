"""Parse user uploads (prompt sets, concept examples, steering/preference pairs) safely.

Only plain text formats are read (.txt, .csv, .jsonl); nothing is ever
unpickled or evaluated. Every rejection raises `UploadError` whose message says
what is wrong, what is valid and how to fix it, ready to show to the user.

Footguns:
- The size limit is checked before anything is decoded, so an oversized upload
  is rejected at once; ``data`` is still fully in memory (Streamlit's
  ``server.maxUploadSize`` bounds that).
- Texts are stripped and blank ones skipped, in every format.
- CSV column names are matched case-insensitively after stripping spaces; the
  returned records use the names as the file spells them, stripped.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_ITEMS = 5000
TEXT_COLUMNS = ("text", "prompt")
TEXT_SUFFIXES = (".txt", ".csv", ".jsonl")
RECORD_SUFFIXES = (".csv", ".jsonl")

_UTF8_BOM = b"\xef\xbb\xbf"


class UploadError(ValueError):
    """An upload was rejected; the message is written for the person who uploaded it."""


def parse_texts(
    filename: str,
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    column_names: Sequence[str] = TEXT_COLUMNS,
) -> list[str]:
    """Texts from a .txt (one per line), .csv or .jsonl (a column/field in `column_names`)."""
    name, suffix = _name_and_suffix(filename, TEXT_SUFFIXES)
    text = _decode(name, data, max_bytes)
    if suffix == ".txt":
        return _checked_items(name, _txt_lines(text), max_items, "texts")
    texts = []
    for _, item, _ in _column_texts(name, suffix, text, column_names):
        texts.append(item)
        _check_count(name, len(texts), max_items, "texts")
    return _checked_items(name, texts, max_items, "texts")


def parse_records(
    filename: str,
    data: bytes,
    *,
    required: Sequence[Sequence[str]],
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> list[dict]:
    """Records from .jsonl objects or .csv rows that hold every field of one of the `required` sets.

    E.g. ``required=[("prompt", "positive", "negative")]`` for steering pairs.
    The required fields must be non-empty strings; other fields are kept as they are.
    """
    if not required or not all(required):
        raise ValueError("required must list at least one non-empty set of field names.")
    name, suffix = _name_and_suffix(filename, RECORD_SUFFIXES)
    text = _decode(name, data, max_bytes)
    expected = " or ".join("(" + ", ".join(fields) + ")" for fields in required)
    records = []
    if suffix == ".csv":
        header, rows = _csv_rows(name, text)
        fields = _first_satisfied(required, header)
        if fields is None:
            raise UploadError(
                f"{name}: missing columns. Found columns: {sorted(header)}; expected {expected}. "
                "Rename the columns in the header row to match."
            )
        for line, row in rows:
            if _is_blank_row(row):
                continue
            records.append(_required_strings(name, line, row, fields, "row"))
            _check_count(name, len(records), max_items, "records")
    else:
        for line, obj in _jsonl_objects(name, text):
            fields = _first_satisfied(required, obj)
            if fields is None:
                raise UploadError(
                    f"{name}: line {line} has fields {sorted(obj)}; expected {expected}. "
                    "Add the missing fields to every line."
                )
            records.append(_required_strings(name, line, obj, fields, "line"))
            _check_count(name, len(records), max_items, "records")
    return _checked_items(name, records, max_items, "records")


def parse_concept_upload(
    filename: str,
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> dict[str, list[str]]:
    """Example texts per concept name.

    A .txt is one concept named after the file stem. A .csv/.jsonl needs a
    ``text`` (or ``prompt``) column and may have a ``concept`` column; without
    one, every text belongs to the concept named after the file stem.
    """
    name, suffix = _name_and_suffix(filename, TEXT_SUFFIXES)
    stem = Path(name).stem.strip() or "concept"
    text = _decode(name, data, max_bytes)
    if suffix == ".txt":
        return {stem: _checked_items(name, _txt_lines(text), max_items, "texts")}
    concepts: dict[str, list[str]] = {}
    rows = _column_texts(name, suffix, text, TEXT_COLUMNS, extra="concept")
    for count, (line, item, record) in enumerate(rows, start=1):
        concept = record.get("concept", stem)
        if not isinstance(concept, str) or not concept.strip():
            where = "row" if suffix == ".csv" else "line"
            raise UploadError(
                f"{name}: {where} {line} has text but no concept name. "
                "Fill in its concept, or drop the concept column to put every text under the file name."
            )
        concepts.setdefault(concept.strip(), []).append(item)
        _check_count(name, count, max_items, "texts")
    if not concepts:
        raise UploadError(f"{name}: no texts found. Add at least one non-blank text.")
    return concepts


# --- decoding -----------------------------------------------------------------


def _name_and_suffix(filename: str, allowed: Sequence[str]) -> tuple[str, str]:
    name = Path(filename or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise UploadError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}. "
            f"Valid types are {', '.join(allowed)}. Save or rename the file with one of these extensions."
        )
    return name, suffix


def _decode(name: str, data: bytes, max_bytes: int) -> str:
    """UTF-8 text of `data`; size is checked first so huge uploads are never decoded."""
    if len(data) > max_bytes:
        raise UploadError(
            f"{name} is {_megabytes(len(data))}; the limit is {_megabytes(max_bytes)}. "
            "Split it into smaller files or remove unneeded rows."
        )
    if not data.strip():
        raise UploadError(f"{name} is empty. Upload a file with at least one non-blank text.")
    nul = data.find(b"\x00")
    if nul != -1:
        raise UploadError(
            f"{name} looks like a binary file (NUL byte at offset {nul}), not text. "
            "Upload UTF-8 text (.txt, .csv or .jsonl); if it is UTF-16 text, re-save it as UTF-8."
        )
    if data.startswith(_UTF8_BOM):  # Excel writes one; it is not part of the first text
        data = data[len(_UTF8_BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UploadError(
            f"{name} is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}). "
            "Re-save the file with UTF-8 encoding (e.g. 'CSV UTF-8' in Excel)."
        ) from None


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


# --- formats -------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    # Not str.splitlines: it also splits on U+2028, form feeds etc., which may sit inside a text.
    return text.split("\n")


def _txt_lines(text: str) -> list[str]:
    return [line.strip() for line in _lines(text) if line.strip()]


def _csv_rows(name: str, text: str) -> tuple[dict[str, str], Iterator[tuple[int, dict[str, str]]]]:
    """Map of lower-cased column name -> column name as spelled, and (line, row) pairs."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise UploadError(
            f"{name}: could not read the CSV header row ({exc}). The first row must name the columns."
        ) from None
    columns = [column.strip() for column in header]
    by_lower = {column.lower(): column for column in columns if column}

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise UploadError(
                    f"{name}: CSV error at line {reader.line_num}: {exc}. "
                    "Check the quoting of that row (a field holding commas or newlines must be in double quotes)."
                ) from None
            if len(values) > len(columns):
                raise UploadError(
                    f"{name}: line {reader.line_num} has {len(values)} fields but the header has {len(columns)}. "
                    "Quote fields that contain commas."
                )
            values += [""] * (len(columns) - len(values))  # short rows: missing cells are empty
            yield reader.line_num, dict(zip(columns, values, strict=True))

    return by_lower, rows()


def _jsonl_objects(name: str, text: str) -> Iterator[tuple[int, dict]]:
    for line_no, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UploadError(
                f"{name}: line {line_no} is not valid JSON ({exc.msg} at column {exc.colno}). "
                'Each line must be one JSON object, e.g. {"text": "..."}.'
            ) from None
        except RecursionError:  # absurdly deep nesting: hostile or broken input
            raise UploadError(
                f"{name}: line {line_no} is nested too deeply to read. "
                'Each line must be one flat JSON object, e.g. {"text": "..."}.'
            ) from None
        if not isinstance(obj, dict):
            raise UploadError(
                f"{name}: line {line_no} is a JSON {type(obj).__name__}, not an object. "
                'Each line must be one JSON object, e.g. {"text": "..."}.'
            )
        yield line_no, obj


def _column_texts(
    name: str, suffix: str, text: str, column_names: Sequence[str], extra: str | None = None
) -> Iterator[tuple[int, str, dict]]:
    """(line, text, record) for each non-blank text in the first of `column_names` present.

    `extra` names one more field to carry through in `record` (e.g. "concept").
    """
    expected = ", ".join(repr(c) for c in column_names)
    if suffix == ".csv":
        header, rows = _csv_rows(name, text)
        column = next((header[c.lower()] for c in column_names if c.lower() in header), None)
        if column is None:
            raise UploadError(
                f"{name}: missing column. Found columns: {sorted(header.values())}; expected one of {expected}. "
                f"Rename the column that holds your texts to {column_names[0]!r}."
            )
        extra_column = header.get(extra.lower()) if extra else None
        for line, row in rows:
            value = (row.get(column) or "").strip()
            if value:
                record = {extra: row.get(extra_column, "")} if extra_column else {}
                yield line, value, record
        return
    for line, obj in _jsonl_objects(name, text):
        field = next((c for c in column_names if c in obj), None)
        if field is None:
            raise UploadError(
                f"{name}: line {line} has fields {sorted(obj)}; expected one of {expected}. "
                f'Write each line as {{"{column_names[0]}": "..."}}.'
            )
        value = obj[field]
        if not isinstance(value, str):
            raise UploadError(
                f"{name}: line {line} field {field!r} is a {type(value).__name__}; it must be a string. "
                "Put the text in double quotes."
            )
        if value.strip():
            yield line, value.strip(), ({extra: obj[extra]} if extra and extra in obj else {})


def _first_satisfied(required: Sequence[Sequence[str]], present) -> Sequence[str] | None:
    """The first field set all present (CSV headers compare lower-cased)."""
    lowered = {str(key).lower() for key in present}
    for fields in required:
        if all(field.lower() in lowered for field in fields):
            return fields
    return None


def _required_strings(name: str, line: int, record: dict, fields: Sequence[str], where: str) -> dict:
    by_lower = {key.lower(): key for key in record}
    out = dict(record)
    for field in fields:
        key = by_lower[field.lower()]
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            got = "empty" if isinstance(value, str) or value is None else f"a {type(value).__name__}"
            raise UploadError(
                f"{name}: {where} {line} field {field!r} is {got}; it must be non-empty text. "
                f"Fill it in or remove the {where}."
            )
        out[key] = value.strip()
    return out


def _is_blank_row(row: dict[str, str]) -> bool:
    return not any((value or "").strip() for value in row.values())


def _check_count(name: str, count: int, max_items: int, what: str) -> None:
    # Raised while parsing, so a huge file stops at the first item over the limit.
    if count > max_items:
        raise UploadError(
            f"{name} has more than {max_items} {what} (the limit). "
            f"Split it into files of at most {max_items} {what} each and upload them one at a time."
        )


def _checked_items(name: str, items: list, max_items: int, what: str) -> list:
    if not items:
        raise UploadError(f"{name}: no {what} found. Add at least one non-blank {what[:-1]}.")
    _check_count(name, len(items), max_items, what)
    return items
