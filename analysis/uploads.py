"""Parse user uploads (prompt sets, concept examples, steering/preference pairs) safely.

Only plain text formats are read (.txt, .csv, .jsonl); nothing is ever
unpickled or evaluated. Every rejection raises `UploadError` (a ValueError)
whose message names the file, the line (or offset), what is wrong, what is
valid and how to fix it, ready to show to the user. No other exception type
leaves these parsers.

Footguns:
- The size limit is checked before anything is decoded or split, so an
  oversized upload is rejected at once; ``data`` is still fully in memory
  (Streamlit's ``server.maxUploadSize`` bounds that).
- Leading byte-order marks (one or several) are dropped; ``\\r\\n`` and a lone
  ``\\r`` both end a line (old Mac files, mixed endings).
- Texts are stripped and blank ones skipped, in every format. A text made only
  of invisible characters (zero-width, control, format) or holding a lone
  UTF-16 surrogate (``"\\ud800"`` in JSON) is rejected with its line.
- Column (CSV) and field (JSONL) names are matched case-insensitively after
  stripping spaces, and records come back under those normalised (lower-case)
  names; two columns or keys that normalise to the same name are an error,
  never "last one wins".
- CSV is read strictly: an unterminated quote is an error naming the line the
  quoted field starts on, not a field that swallows the rest of the file.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_ITEMS = 5000
MAX_JSON_DEPTH = 64
TEXT_COLUMNS = ("text", "prompt")
TEXT_SUFFIXES = (".txt", ".csv", ".jsonl")
RECORD_SUFFIXES = (".csv", ".jsonl")

_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


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
    text = decode_text(name, data, max_bytes)
    if suffix == ".txt":
        return _checked_items(name, [t for _, t in _txt_lines(name, text, max_items)], max_items, "texts")
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
    strip: bool = True,
) -> list[dict]:
    """Records from .jsonl objects or .csv rows that hold every field of one of the `required` sets.

    E.g. ``required=[("prompt", "positive", "negative")]`` for steering pairs.
    Keys come back lower-cased and stripped. The required fields must be
    non-blank strings (returned stripped unless ``strip=False``: a leading
    space can matter to tokenisation); other fields are kept as they are.
    """
    if not required or not all(required):
        raise ValueError("required must list at least one non-empty set of field names.")
    required = [tuple(f.strip().lower() for f in fields) for fields in required]
    name, suffix = _name_and_suffix(filename, RECORD_SUFFIXES)
    text = decode_text(name, data, max_bytes)
    expected = " or ".join("(" + ", ".join(fields) + ")" for fields in required)
    records = []
    if suffix == ".csv":
        columns, rows = _csv_rows(name, text)
        fields = _first_satisfied(required, columns)
        if fields is None:
            raise UploadError(
                f"{name}: missing columns. Found columns: {sorted(c for c in columns if c)}; expected {expected}. "
                "Rename the columns in the header row to match."
            )
        for line, row in rows:
            if _is_blank_row(row):
                continue
            records.append(_required_strings(name, line, row, fields, "row", strip))
            _check_count(name, len(records), max_items, "records")
    else:
        for line, obj in _jsonl_objects(name, text):
            fields = _first_satisfied(required, obj)
            if fields is None:
                raise UploadError(
                    f"{name}: line {line} has fields {sorted(obj)}; expected {expected}. "
                    "Add the missing fields to every line."
                )
            records.append(_required_strings(name, line, obj, fields, "line", strip))
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
    text = decode_text(name, data, max_bytes)
    if suffix == ".txt":
        return {stem: _checked_items(name, [t for _, t in _txt_lines(name, text, max_items)], max_items, "texts")}
    concepts: dict[str, list[str]] = {}
    rows = _column_texts(name, suffix, text, TEXT_COLUMNS, extra="concept")
    for count, (line, item, record) in enumerate(rows, start=1):
        concept = record.get("concept", stem)
        where = "row" if suffix == ".csv" else "line"
        if not isinstance(concept, str) or not concept.strip():
            raise UploadError(
                f"{name}: {where} {line} has text but no concept name. "
                "Fill in its concept, or drop the concept column to put every text under the file name."
            )
        _check_text(name, f"{where} {line} field 'concept'", concept)
        concepts.setdefault(concept.strip(), []).append(item)
        _check_count(name, count, max_items, "texts")
    if not concepts:
        raise UploadError(f"{name}: no texts found. Add at least one non-blank text.")
    return concepts


# --- shared checks (also used by other parsers: preferences, SAE headers) ----------


def check_size(name: str, data: bytes | int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raise UploadError when ``data`` (bytes, or a size in bytes) is over ``max_bytes``; nothing is decoded."""
    size = data if isinstance(data, int) else len(data)
    if size > max_bytes:
        raise UploadError(
            f"{name} is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}. "
            "Split it into smaller files or remove unneeded rows."
        )


def decode_text(name: str, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """UTF-8 text of `data` with BOMs dropped and line endings made ``\\n``; size is checked first."""
    check_size(name, data, max_bytes)
    data = _strip_boms(data)
    if not data.strip():
        raise UploadError(f"{name} is empty. Upload a file with at least one non-blank text.")
    nul = data.find(b"\x00")
    if nul != -1:
        raise UploadError(
            f"{name} looks like a binary file (NUL byte at offset {nul}), not text. "
            "Upload UTF-8 text (.txt, .csv or .jsonl); if it is UTF-16 text, re-save it as UTF-8."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UploadError(
            f"{name} is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}). "
            "Re-save the file with UTF-8 encoding (e.g. 'CSV UTF-8' in Excel)."
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be used as a model input, or None: lone surrogates, only invisible characters."""
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return f"holds a lone UTF-16 surrogate U+{ord(ch):04X} at character {i + 1} (not a real character)"
    if text and all(_invisible(ch) for ch in text):
        first = ord(text[0])
        return (f"has only invisible characters (zero-width, control or format characters such as "
                f"U+{first:04X}) and no visible text")
    return None


def json_depth(raw: bytes) -> int:
    """Deepest ``[``/``{`` nesting in JSON bytes, strings ignored; cheap (no recursion, vectorised)."""
    body = _JSON_STRING.sub(b'""', raw)
    codes = np.frombuffer(body, dtype=np.uint8)
    step = (codes == ord("[")).astype(np.int64) + (codes == ord("{"))
    step -= (codes == ord("]")).astype(np.int64) + (codes == ord("}"))
    return int(np.cumsum(step).max()) if len(step) else 0


def loads_json(raw: str | bytes, where: str, *, max_depth: int = MAX_JSON_DEPTH, example: str = "") -> object:
    """``json.loads`` that raises only UploadError, rejects duplicate keys and bounds nesting depth.

    ``where`` prefixes every message (e.g. ``"p.jsonl: line 3"``).
    """
    hint = f" {example}" if example else ""
    raw_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if json_depth(raw_bytes) > max_depth:
        raise UploadError(f"{where} is nested too deeply to read (more than {max_depth} levels of [ or {{).{hint}")
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise UploadError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno}).{hint}") from None
    except RecursionError:
        raise UploadError(f"{where} is nested too deeply to read.{hint}") from None
    except _DuplicateKey as exc:
        raise UploadError(f"{where} has the key {exc.args[0]!r} twice (names compare ignoring case and spaces); "
                          f"keep one.{hint}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # e.g. Python's 4300-digit integer limit
        raise UploadError(f"{where} holds a value JSON cannot be read into ({_short(exc)}); "
                          f"write huge numbers as strings or remove them.{hint}") from None


def sniff_jsonl(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> object | None:
    """The first non-blank line of a .jsonl upload as JSON, or None when unreadable.

    Reads only up to that line (no full decode): for format detection.
    """
    if len(data) > max_bytes:
        return None
    data = _strip_boms(data)
    start = 0
    while start < len(data):
        ends = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i != -1]
        end = min(ends) if ends else len(data)
        line = data[start:end]
        start = end + 1
        if line.strip():
            try:
                return loads_json(line, "sniff")
            except UploadError:
                return None
    return None


def jsonl_objects(name: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a .jsonl upload; UploadError otherwise."""
    yield from _jsonl_objects(name, decode_text(name, data, max_bytes))


# --- decoding -----------------------------------------------------------------


def _name_and_suffix(filename: str, allowed: Sequence[str]) -> tuple[str, str]:
    name = Path(str(filename or "upload")).name or "upload"
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise UploadError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}. "
            f"Valid types are {', '.join(allowed)}. Save or rename the file with one of these extensions."
        )
    return name, suffix


def _strip_boms(data: bytes) -> bytes:
    while data.startswith(_UTF8_BOM):  # Excel writes one; tools that re-save add more
        data = data[len(_UTF8_BOM):]
    return data


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def _invisible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me")


def _short(exc: BaseException) -> str:
    msg = str(exc).split(";")[0]
    return msg[:120]


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    seen: set[str] = set()
    for key, value in pairs:
        norm = key.strip().lower()
        if norm in seen:
            raise _DuplicateKey(key)
        seen.add(norm)
        out[key] = value
    return out


def _check_text(name: str, where: str, text: str) -> None:
    problem = text_problem(text)
    if problem:
        raise UploadError(f"{name}: {where} {problem}. Fix or remove that text.")


# --- formats -------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    # Not str.splitlines: it also splits on U+2028, form feeds etc., which may sit inside a text.
    return text.split("\n")


def _txt_lines(name: str, text: str, max_items: int) -> Iterator[tuple[int, str]]:
    count = 0
    for line_no, line in enumerate(_lines(text), start=1):
        item = line.strip()
        if item:
            _check_text(name, f"line {line_no}", item)
            count += 1
            _check_count(name, count, max_items, "texts")
            yield line_no, item


def _csv_rows(name: str, text: str) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Normalised (stripped, lower-case) column names, and (line, row) pairs keyed by them."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise UploadError(
            f"{name}: could not read the CSV header row ({exc}). The first row must name the columns."
        ) from None
    columns = [column.strip().lower() for column in header]
    seen: dict[str, int] = {}
    for i, column in enumerate(columns, start=1):
        if column:
            _check_text(name, f"header column {i}", column)
        if column and column in seen:
            raise UploadError(
                f"{name}: the header names column {header[i - 1].strip()!r} twice (columns {seen[column]} and {i}; "
                "names compare ignoring case and spaces). Rename or delete one of them."
            )
        seen[column] = i

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if "end of data" in str(exc):
                    raise UploadError(
                        f"{name}: line {start} opens a quoted field (\") that is never closed. "
                        "Add the closing double quote, or write a quote inside a field as two (\"\")."
                    ) from None
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
            yield start, {c: v for c, v in zip(columns, values, strict=True) if c}

    return [c for c in columns if c], rows()


def _jsonl_objects(name: str, text: str) -> Iterator[tuple[int, dict]]:
    example = 'Each line must be one JSON object, e.g. {"text": "..."}.'
    for line_no, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        obj = loads_json(line, f"{name}: line {line_no}", example=example)
        if not isinstance(obj, dict):
            raise UploadError(
                f"{name}: line {line_no} is a JSON {type(obj).__name__}, not an object. {example}"
            )
        yield line_no, {str(k).strip().lower(): v for k, v in obj.items()}


def _column_texts(
    name: str, suffix: str, text: str, column_names: Sequence[str], extra: str | None = None
) -> Iterator[tuple[int, str, dict]]:
    """(line, text, record) for each non-blank text in the first of `column_names` present.

    `extra` names one more field to carry through in `record` (e.g. "concept").
    """
    wanted = [c.strip().lower() for c in column_names]
    expected = ", ".join(repr(c) for c in column_names)
    if suffix == ".csv":
        columns, rows = _csv_rows(name, text)
        column = next((c for c in wanted if c in columns), None)
        if column is None:
            raise UploadError(
                f"{name}: missing column. Found columns: {sorted(columns)}; expected one of {expected}. "
                f"Rename the column that holds your texts to {column_names[0]!r}."
            )
        for line, row in rows:
            value = (row.get(column) or "").strip()
            if value:
                _check_text(name, f"row {line}", value)
                yield line, value, ({extra: row.get(extra, "")} if extra and extra in columns else {})
        return
    for line, obj in _jsonl_objects(name, text):
        field = next((c for c in wanted if c in obj), None)
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
            _check_text(name, f"line {line} field {field!r}", value.strip())
            yield line, value.strip(), ({extra: obj[extra]} if extra and extra in obj else {})


def _first_satisfied(required: Sequence[Sequence[str]], present) -> Sequence[str] | None:
    """The first field set all present (names are already normalised)."""
    present = set(present)
    for fields in required:
        if all(field in present for field in fields):
            return fields
    return None


def _required_strings(name: str, line: int, record: dict, fields: Sequence[str], where: str, strip: bool) -> dict:
    out = dict(record)
    for field in fields:
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            got = "empty" if isinstance(value, str) or value is None else f"a {type(value).__name__}"
            raise UploadError(
                f"{name}: {where} {line} field {field!r} is {got}; it must be non-empty text. "
                f"Fill it in or remove the {where}."
            )
        _check_text(name, f"{where} {line} field {field!r}", value.strip())
        out[field] = value.strip() if strip else value
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
