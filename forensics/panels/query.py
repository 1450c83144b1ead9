"""Selection by query: every sample for which a condition over the investigation's columns holds.

``suspicion > 3 and label_name == 'cat'``, ``cluster in [4, 7] and status == 'unreviewed'``,
``reasons.str.contains('patch')``: pandas' query language (:meth:`pandas.DataFrame.eval`) over
:func:`sample_table`. Only column names, numbers, text, lists of them, comparisons (``in`` included), ``and`` / ``or``
/ ``not`` (``&``, ``|``, ``~``), arithmetic and a few text and missing-value methods are accepted: pandas alone
would call any method of any column it reaches (``x.values.tofile(...)`` writes a file), so the expression is
checked before pandas sees it, and it is evaluated without access to any Python variable.
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError

if TYPE_CHECKING:
    from ..investigation import Investigation

#: Methods a query may call: on a column's ``.str``, and on a column itself.
STR_METHODS = frozenset({"contains", "startswith", "endswith", "match", "fullmatch", "lower", "upper", "strip",
                         "len"})
COLUMN_METHODS = frozenset({"isna", "notna", "isnull", "notnull"})
#: Longest query accepted (a condition, not a program).
MAX_QUERY_CHARS = 2_000

_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name,
                  ast.Load, ast.Constant, ast.List, ast.Tuple, ast.Not, ast.USub, ast.UAdd, ast.Invert, ast.Add,
                  ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitAnd, ast.BitOr, ast.Eq,
                  ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
# A quoted text or a backtick-quoted column name, whichever comes first.
_QUOTED = re.compile(r"""(?P<text>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|`(?P<name>[^`]*)`""")


def sample_table(inv: Investigation) -> pd.DataFrame:
    """Every per-sample column of an investigation in one frame: what a query reads.

    Parameters
    ----------
    inv : Investigation

    Returns
    -------
    DataFrame, shape (n, k)
        One row per sample in the dataset's order (index: row position 0..n-1). Columns: ``sample_id``, the sample
        table's (``label``, ``label_name``, ``source``, ``content_hash``, ``prediction_name``, ``loss`` ...), the
        signals' (``<signal>_score``, ``suspicion``, ``reasons``), the map's (``x``, ``y``, ``cluster``) and the review
        ``status`` ("unreviewed", "suspected", "confirmed", "cleared"). A name already taken by an earlier table is
        prefixed with its own table's name (``signals_label``, ``map_x``, ``review_status``).
    """
    parts = [("samples", inv.samples), ("signals", inv.signals), ("map", inv.map),
             ("review", pd.DataFrame({"status": inv.statuses()}, index=inv.samples.index))]
    columns: dict[str, Any] = {"sample_id": pd.array(inv.dataset.ids, dtype=object)}
    for table, frame in parts:
        for name in frame.columns:
            key = str(name)
            # Each column's own array: a text column read out as Python objects and stored again as text took
            # most of a second at a million rows.
            columns[f"{table}_{key}" if key in columns else key] = frame[name].array
    return pd.DataFrame(columns, index=pd.RangeIndex(len(inv.dataset)), copy=False)


def _placeholders(query: str) -> tuple[str, dict[str, str]]:
    """The query with each backtick-quoted name replaced by a plain identifier (quoted texts left alone), and the
    names they stand for."""
    names: dict[str, str] = {}

    def swap(match: re.Match[str]) -> str:
        if match.group("text") is not None:
            return match.group("text")
        key = f"q_{len(names)}_"
        while key in query:
            key = "q" + key
        names[key] = match.group("name")
        return key

    return _QUOTED.sub(swap, query), names


def check_query(query: Any, columns: Any) -> str:
    """``query`` if it is a condition a query may state over these columns, else :class:`InputError` saying why.

    Parameters
    ----------
    query : str
    columns : iterable of str
        The names the query may use.

    Returns
    -------
    str
        The query, stripped.
    """
    if not isinstance(query, str):
        raise InputError(f"query must be a str such as \"suspicion > 3 and label_name == 'cat'\"; "
                         f"got {type(query).__name__}")
    text = query.strip()
    if not text:
        raise InputError("query is empty; write a condition such as \"suspicion > 3 and label_name == 'cat'\"")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"query has {len(text)} characters; at most {MAX_QUERY_CHARS} are accepted")
    known = {str(c) for c in columns}
    plain, quoted = _placeholders(text)
    # pandas reads "and" / "or" / "not" and "&" / "|" / "~" alike; Python's parser reads the same text.
    try:
        tree = ast.parse(plain, mode="eval")
    except SyntaxError as e:
        raise InputError(f"cannot read the query {text!r}: {e.msg}") from None

    def fail(what: str) -> InputError:
        return InputError(
            f"the query {text!r} uses {what}; a query may use column names, numbers, text, lists, comparisons, "
            f"and/or/not, arithmetic, <column>.str.<{'|'.join(sorted(STR_METHODS))}>(...) and "
            f"<column>.<{'|'.join(sorted(COLUMN_METHODS))}>()")

    def column(node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and quoted.get(node.id, node.id) in known

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Attribute):
                raise fail("a function call")
            on_str = (func.attr in STR_METHODS and isinstance(func.value, ast.Attribute)
                      and func.value.attr == "str" and column(func.value.value))
            on_column = func.attr in COLUMN_METHODS and column(func.value)
            if not (on_str or on_column):
                raise fail(f"the method {func.attr!r}")
            if any(k.arg is None for k in node.keywords):
                raise fail("**arguments")
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if not isinstance(arg, ast.Constant):
                    raise fail("a method argument that is not a plain value")
                visit(arg)
            visit(func.value.value if on_str else func.value)
            return
        if isinstance(node, ast.Attribute):
            raise fail(f"the attribute {node.attr!r}")
        if not isinstance(node, _ALLOWED_NODES):
            raise fail(f"a {type(node).__name__} expression")
        if isinstance(node, ast.Name) and not column(node):
            name = quoted.get(node.id, node.id)
            raise InputError(f"the query {text!r} names {name!r}, which is not a column; columns are "
                             f"{sorted(known)}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (str, int, float, bool, type(None))):
            raise fail(f"the value {node.value!r}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return text


def query_mask(frame: pd.DataFrame, query: str) -> np.ndarray:
    """Which rows of ``frame`` satisfy ``query`` (checked by :func:`check_query`, then evaluated by pandas with
    no access to Python variables).

    Parameters
    ----------
    frame : DataFrame, shape (n, k)
        E.g. :func:`sample_table`.
    query : str

    Returns
    -------
    ndarray of bool, shape (n,)
        Missing results (a comparison with a missing value in a nullable column) count as false, as in
        :meth:`pandas.DataFrame.query`.
    """
    text = check_query(query, frame.columns)
    try:
        result = frame.eval(text, engine="python", local_dict={}, global_dict={})
    except Exception as e:  # noqa: BLE001 - pandas' own complaint, given back to the analyst with the query
        raise InputError(f"cannot run the query {text!r}: {type(e).__name__}: {e}") from None
    if not isinstance(result, pd.Series) or len(result) != len(frame):
        raise InputError(f"the query {text!r} must say true or false for each sample; it gives "
                         f"{type(result).__name__} {str(result)[:60]!r}")
    if pd.api.types.is_bool_dtype(result.dtype):
        return result.fillna(False).to_numpy(dtype=bool) if result.hasnans else result.to_numpy(dtype=bool)
    if result.dtype == object and pd.api.types.infer_dtype(result, skipna=True) == "boolean":
        # Text methods over a column with missing values give True / False / NaN.
        return result.fillna(False).to_numpy(dtype=bool)
    raise InputError(f"the query {text!r} must say true or false for each sample; it gives values of type "
                     f"{result.dtype} (compare them: '... > 3', '... == \"cat\"')")
