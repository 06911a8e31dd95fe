"""The one atomic writer: all or nothing, no temporary file left behind."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tune_dsr.files import atomic_write, atomic_write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.bin"
    assert atomic_write(target, lambda out: out.write(b"first")) == target.resolve()
    assert target.read_bytes() == b"first"

    def broken(out) -> None:
        out.write(b"half of a new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_text_goes_through_with_the_newline_the_caller_asks_for(tmp_path: Path) -> None:
    target = tmp_path / "rows.csv"

    def rows(out) -> None:
        writer = csv.writer(out)
        writer.writerow(["probe", "similarity"])
        writer.writerow(["Ana-Maria_0001.jpg", "0.5"])

    atomic_write_text(target, rows, newline="")
    assert target.read_bytes() == b"probe,similarity\r\nAna-Maria_0001.jpg,0.5\r\n"
    with open(target, newline="") as f:
        assert list(csv.reader(f))[1] == ["Ana-Maria_0001.jpg", "0.5"]
