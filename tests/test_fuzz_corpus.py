"""Run the generated malformed-input corpus (tests/fuzz_corpus.py) through every parser.

Each input must either parse into a well-formed result or raise the parser's
documented error (UploadError for uploads, pairs and preferences; SAELoadError
for SAE configs and headers), within 10 s. The count is printed.
"""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from analysis.likelihood.preferences import PreferenceData
from analysis.saes.loading import SAELoadError
from analysis.steering.pairs import PairSet
from analysis.uploads import UploadError, text_problem
from tests.fuzz_corpus import PARSERS, corpus

DOCUMENTED = {"texts": UploadError, "concepts": UploadError, "records": UploadError, "pairs": UploadError,
              "preferences": UploadError, "sae_cfg": SAELoadError, "sae_header": SAELoadError}
TIME_LIMIT_S = 10


def _good_text(t) -> bool:
    return isinstance(t, str) and t == t.strip() and t != "" and text_problem(t) is None


def check_result(parser: str, result) -> None:
    """The invariants of an accepted input (a silent mis-parse fails here)."""
    if parser == "texts":
        assert isinstance(result, list) and result and all(_good_text(t) for t in result)
    elif parser == "concepts":
        assert isinstance(result, dict) and result
        assert all(_good_text(k) and v and all(_good_text(t) for t in v) for k, v in result.items())
    elif parser == "records":
        assert result and all(k == k.strip().lower() for r in result for k in r)
        assert all(_good_text(r[f]) for r in result for f in ("prompt", "positive", "negative"))
    elif parser == "pairs":
        assert isinstance(result, PairSet) and len(result.pairs) >= 2
        assert all(text_problem(p.prompt + p.positive + p.negative) is None for p in result.pairs)
    elif parser == "preferences":
        assert isinstance(result, PreferenceData) and len(result) >= 1
        assert all(text_problem(p.prompt) is None and p.chosen != p.rejected for p in result.pairs)
    elif parser == "sae_cfg":
        assert isinstance(result, dict) and isinstance(result["d_in"], int)
    elif parser == "sae_header":
        assert isinstance(result, dict)
        assert all(isinstance(v, dict) and isinstance(v["dtype"], str) for v in result.values())


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def test_every_corpus_input_parses_or_raises_the_documented_error(capsys):
    import sae_lens.registry  # noqa: F401 - its first import takes seconds; the time limit is per input

    cases = corpus()
    failures, outcomes = [], Counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for parser, label, filename, data in cases:
            signal.alarm(TIME_LIMIT_S)
            try:
                result = PARSERS[parser](filename, data)
                check_result(parser, result)
                outcomes["accepted"] += 1
            except DOCUMENTED[parser] as err:
                assert str(err).strip(), "empty message"
                outcomes["rejected"] += 1
            except _Timeout:
                failures.append(f"{parser}/{label}: over {TIME_LIMIT_S} s")
            except Exception as err:  # noqa: BLE001 - any other type is a finding
                failures.append(f"{parser}/{label} ({filename}): {type(err).__name__}: {str(err)[:160]}")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    by_parser = Counter(parser for parser, *_ in cases)
    with capsys.disabled():
        print(f"\n[fuzz corpus] {len(cases)} inputs ({dict(by_parser)}): {outcomes['accepted']} accepted, "
              f"{outcomes['rejected']} rejected with the documented error, {len(failures)} failures")
    assert failures == [], "\n".join(failures)
    assert len(cases) >= 500
    assert outcomes["accepted"] >= len(by_parser)  # each parser's seeds still parse: the corpus is not all junk


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_seed_files_parse(parser):
    for p, label, filename, data in corpus():
        if p == parser and label in ("seed", "cfg0", "header0"):
            check_result(parser, PARSERS[parser](filename, data))
