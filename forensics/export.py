"""Write tables for people and programs downstream: CSV, Parquet or JSON, with a side file of provenance.

The values come from data an attacker may have written (sample ids, source names, texts, notes), so CSV output
is neutralized against formula injection (OWASP "CSV Injection"; CWE-1236): a string cell that a spreadsheet
would read as a formula gets a leading single quote. That is the case when the cell starts with ``=``, ``+``,
``-``, ``@``, a tab, a carriage return, a line feed or a NUL, or with one of ``= + - @`` (or their full-width
forms) after leading spaces, other whitespace or invisible format characters, which some spreadsheets trim
before they evaluate a cell. A cell that already starts with a single quote gets one more, so the rule can
be undone exactly: :func:`restore_cell` drops one leading quote. Every string cell is checked, ids and column
names included; numbers are left as numbers. Every string field is written quoted, so separators and quotes
inside a value never open a new cell (RFC 4180).

Parquet and JSON keep the exact values: they are read by programs, not evaluated by spreadsheets.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from . import _io
from .audit import to_json_object, utc_now
from .errors import InputError

FORMATS = ("csv", "parquet", "json")
_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json"}

_FORMULA_CHARS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")  # and their full-width forms
_LEADING_CONTROL = frozenset("\t\r\n\x00")


def _skippable(c: str) -> bool:
    return c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def needs_neutralizing(cell: str) -> bool:
    """Whether a spreadsheet could read this text cell as a formula (or it starts with a single quote)."""
    if not cell or cell[0].isalnum():  # the common case, decided on the first character
        return False
    if cell[0] in _LEADING_CONTROL or cell[0] == "'" or cell[0] in _FORMULA_CHARS:
        return True
    for c in cell:
        if not _skippable(c):
            return c in _FORMULA_CHARS
    return False


def neutralize_cell(cell: str) -> str:
    """``cell`` with a leading single quote when a spreadsheet could read it as a formula, else unchanged."""
    return "'" + cell if needs_neutralizing(cell) else cell


def restore_cell(cell: str) -> str:
    """Undo :func:`neutralize_cell`: the original text of a cell read back from an exported CSV."""
    return cell[1:] if cell.startswith("'") else cell


def _is_number(v: Any) -> bool:
    return isinstance(v, (bool, int, float, complex, np.number, np.bool_))


def _neutralize_column(col: pd.Series) -> pd.Series:
    def cell(v: Any) -> Any:
        if isinstance(v, str):
            return "'" + v if needs_neutralizing(v) else v
        if v is None or v is pd.NA or v is pd.NaT or _is_number(v):
            return v  # missing values are written empty, numbers as numbers
        return neutralize_cell(str(v))

    return pd.Series([cell(v) for v in col.to_numpy(dtype=object)], index=col.index, dtype=object, name=col.name)


def _written_as_is(dtype: Any) -> bool:
    if isinstance(dtype, pd.CategoricalDtype):
        return False
    return (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
            or pd.api.types.is_datetime64_any_dtype(dtype))


def neutralize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text cell and every column name neutralized (see :func:`neutralize_cell`).

    Numeric, boolean and datetime columns are kept: their cells are written as numbers or ISO dates, which no
    spreadsheet evaluates. Every other column (strings, objects, categories, time spans such as "-1 days") is
    treated as text.
    """
    out = {}
    for i, (_, col) in enumerate(df.items()):
        out[i] = col if _written_as_is(col.dtype) else _neutralize_column(col)
    result = pd.DataFrame(out, index=df.index)
    result.columns = [neutralize_cell(str(c)) for c in df.columns]
    return result


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise InputError(f"format must be one of {list(FORMATS)} or None; got {format!r}")
        return format
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {path} from its extension {path.suffix!r}; use .csv, .parquet or .json, "
            "or pass format='csv' | 'parquet' | 'json'"
        )
    return fmt


def _check_target(path: Path) -> None:
    parent = path.parent
    if path.is_dir():
        raise InputError(f"cannot write the export {path}: it is a folder")
    if not parent.is_dir():
        raise InputError(f"cannot write the export {path}: its folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the export {path}: no permission to write in {parent}")


def export_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    format: Literal["csv", "parquet", "json"] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``df`` to ``path`` as CSV, Parquet or JSON, with a side file ``<path>.meta.json``.

    Parameters
    ----------
    df : DataFrame
        A named index (such as ``sample_id``) is written as the first column; a default row-number index is not.
    path : path-like
        The target file; its folder must exist. Written atomically: a reader never sees half a file.
    format : {"csv", "parquet", "json"}, optional
        By default taken from the extension (.csv, .parquet or .pq, .json).
    meta : dict, optional
        JSON-serializable provenance stored in the side file (layer, parameters, ...).

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    CSV: UTF-8 without a byte-order mark, a header row, every text field quoted and neutralized against formula
    injection (see the module description), numbers unquoted, missing values empty. JSON: a list of records,
    one object per row, dates in ISO 8601. The side file holds the toolkit's version, the time (UTC), the
    format, the row count, the column names, the file's blake2b checksum and ``meta``.
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"df must be a pandas DataFrame; got {type(df).__name__}")
    path = Path(path)
    fmt = _format_of(path, format)
    meta = {} if meta is None else to_json_object(meta, name="meta")
    _check_target(path)

    table = df
    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        table = df.reset_index()
    if table.columns.duplicated().any():
        dups = list(table.columns[table.columns.duplicated()])
        raise InputError(f"df has duplicate column names {dups[:5]!r}; give each column a distinct name")

    if fmt == "csv":
        table = neutralize_frame(table)

        def writer(tmp: Path) -> None:
            table.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC, encoding="utf-8", lineterminator="\r\n")
    elif fmt == "parquet":
        table = table.copy()
        table.columns = [str(c) for c in table.columns]

        def writer(tmp: Path) -> None:
            table.to_parquet(tmp, index=False)
    else:
        def writer(tmp: Path) -> None:
            table.to_json(tmp, orient="records", date_format="iso", date_unit="us", force_ascii=True, indent=1)

    try:
        digest = _io.atomic_write_with(path, writer)
        from ._version import __version__

        side = {
            "toolkit": "poison-forensics",
            "version": __version__,
            "created": utc_now(),
            "file": path.name,
            "format": fmt,
            "rows": int(len(table)),
            "columns": [str(c) for c in table.columns],
            "blake2b": digest,
            "csv_formula_neutralized": fmt == "csv",
            "meta": meta,
        }
        _io.atomic_write_text(meta_path(path), json.dumps(side, indent=1, ensure_ascii=True) + "\n")
    except UnicodeEncodeError as e:
        # A lone surrogate ("\ud800") is a valid Python str but no UTF-8 text: no format can store it.
        raise InputError(
            f"cannot write the export {path}: a text holds {e.object[e.start:e.end]!r}, which UTF-8 cannot encode "
            "(a lone surrogate); clean that value first"
        ) from None
    except PermissionError as e:
        raise InputError(f"cannot write the export {path}: {e.strerror}") from e
    except OSError as e:
        if isinstance(e, (IsADirectoryError, NotADirectoryError, FileNotFoundError)) or e.errno == errno.EROFS:
            raise InputError(f"cannot write the export {path}: {e.strerror or e}") from e
        raise
    return path


def meta_path(path: str | os.PathLike) -> Path:
    """The side file of an export: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")
