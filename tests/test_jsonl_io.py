"""`common.io_utils` JSONL through `jsonlines`: atomic writes, an appender a kill can only cut at the last line,
and the strict per-line read errors (file:line and what was expected)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.io_utils import iter_jsonl, jsonl_appender, read_jsonl, write_jsonl


def test_write_jsonl_is_one_line_per_record_in_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pairs.jsonl"
    write_jsonl(path, [{"prompt": "Grüße", "score": 0.5}, {"nan": math.nan}])
    assert path.read_text(encoding="utf-8") == '{"prompt": "Grüße", "score": 0.5}\n{"nan": null}\n'
    assert read_jsonl(path) == [{"prompt": "Grüße", "score": 0.5}, {"nan": None}]
    assert not list(path.parent.glob(".*.tmp"))


def test_appender_adds_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with jsonl_appender(path) as writer:
        writer.write({"step": 0})
    with jsonl_appender(path) as writer:
        writer.write_all([{"step": 1}, {"step": 2}])
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n{"step": 2}\n'


def test_blank_lines_are_skipped_and_a_cut_last_line_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n{"a": 2}\n{"a": ')
    assert read_jsonl(path, allow_partial_last_line=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError) as error:
        read_jsonl(path)
    # `{"a": ` is 6 characters: the missing value is at column 7
    assert str(error.value) == (f"{path}:5: invalid JSON line (the line looks cut off): Expecting value at column 7; "
                                "expected one JSON object per line")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"a": 1}\n[1, 2]\n', "2: expected a JSON object per line, got list"),
    (b'null\n', "1: expected a JSON object per line, got NoneType"),
    (b'{"a": 1}\n{"a" 1}\n{"a": 3}\n', "2: invalid JSON line: Expecting ':' delimiter at column 6; expected one JSON "
                                      "object per line"),
    (b'{"a": "\xff"}\n', "1: byte 8 of the line is not UTF-8 (invalid start byte); expected UTF-8 text (re-save "
                         "the file as UTF-8)"),
])
def test_bad_lines_name_the_file_line_and_expectation(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        list(iter_jsonl(path, allow_partial_last_line=True))  # terminated lines never get the leniency
    assert str(error.value) == f"{path}:{message}"
