"""The analyst's state: the tables of one investigation, the review decisions and their audit log.

An :class:`Investigation` holds plain pandas tables indexed by ``sample_id`` (samples, signals, the map and its
clusters, trigger candidates) and the review: a status per sample ("unreviewed", "suspected", "confirmed",
"cleared") with a note, who decided and when.

Every review decision is an entry of an :class:`~forensics.audit.AuditLog` first and a change of the review table
second. Once the investigation has a folder (after :meth:`Investigation.save` or :meth:`Investigation.load`) the
entry is on disk before the call returns, so a decision survives a crash without another save. The log is the
source of truth: loading replays it to rebuild the review table.

The on-disk format of a saved folder is :mod:`forensics._store`'s. The review and the save/load that must never
lose one of its decisions stay together here, past 600 lines.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from . import _io, _store, audit
from ._store import MANIFEST
from ._validate import check_features, check_scores
from .audit import AuditLog, to_json_object, utc_now
from .data import Dataset, positions_in
from .errors import InputError, IntegrityError
from .export import export_table

logger = logging.getLogger(__name__)

#: Review statuses, in the order of :meth:`Investigation.counts`.
STATUSES = ("unreviewed", "suspected", "confirmed", "cleared")
#: Review actions and the status each one sets.
ACTIONS = {"flag": "suspected", "confirm": "confirmed", "clear": "cleared", "unflag": "unreviewed"}
#: Columns of the trigger table.
TRIGGER_COLUMNS = ("kind", "description", "evidence", "remove_flip_rate", "add_flip_rate", "verdict", "sample_ids")
#: Columns of an export of the review.
EXPORT_COLUMNS = ("sample_id", "label", "source", "suspicion", "reasons", "status", "note", "who", "when")

_STATUS_CODE = {s: np.int8(i) for i, s in enumerate(STATUSES)}
_FLAGGED = (_STATUS_CODE["suspected"], _STATUS_CODE["confirmed"])
_TABLES = ("samples", "signals", "triggers", "map", "clusters")


def _empty_triggers() -> pd.DataFrame:
    return pd.DataFrame({
        "kind": pd.Series([], dtype="str"), "description": pd.Series([], dtype="str"),
        "evidence": pd.Series([], dtype="str"), "remove_flip_rate": pd.Series([], dtype="float64"),
        "add_flip_rate": pd.Series([], dtype="float64"), "verdict": pd.Series([], dtype="str"),
        "sample_ids": pd.Series([], dtype=object),
    })


def _as_str_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns that hold only strings become the ``str`` dtype, as Parquet gives them back."""
    for name in df.columns:
        col = df[name]
        if col.dtype == object and len(col) and all(isinstance(v, str) for v in col.to_numpy()):
            df[name] = col.astype("str")
    return df


def _check_table(df: Any, name: str, index: pd.Index) -> pd.DataFrame:
    """A copy of ``df`` indexed exactly by the dataset's ids (same ids, same order), or InputError."""
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{name} must be a pandas DataFrame indexed by sample_id; got {type(df).__name__}")
    if len(df) != len(index):
        raise InputError(f"{name} has {len(df)} rows but the dataset has {len(index)} samples")
    got = df.index.to_numpy(dtype=object)
    same = got == index.to_numpy(dtype=object)
    if not same.all():
        if isinstance(df.index, pd.RangeIndex):
            raise InputError(f"{name} is indexed by row number; index it by sample_id (df.index = dataset.ids)")
        i = int(np.flatnonzero(~same)[0])
        hint = ""
        if set(map(str, got)) == set(index):
            hint = f"; the ids are the same but in another order: use {name}.reindex(dataset.ids)"
        raise InputError(
            f"{name}'s index must equal dataset.ids in order; row {i} has {str(got[i])[:60]!r} "
            f"({type(got[i]).__name__}) where the dataset has {index[i][:60]!r}{hint}"
        )
    if df.columns.duplicated().any():
        raise InputError(f"{name} has duplicate columns {list(df.columns[df.columns.duplicated()])[:5]!r}")
    out = df.copy()
    out.index = index
    return _as_str_columns(out)


def _check_signals(signals: Any, index: pd.Index) -> pd.DataFrame:
    df = _check_table(signals, "signals", index)
    for col in ("suspicion", "reasons"):
        if col not in df.columns:
            raise InputError(f"signals has no {col!r} column; columns are {list(df.columns)[:20]!r}")
    for col in df.columns:
        if col == "suspicion" or str(col).endswith("_score"):
            if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
                raise InputError(f"signals[{col!r}] must be numeric (higher = more suspicious); got {df[col].dtype}")
            df[col] = check_scores(df[col].to_numpy(dtype=np.float64, na_value=np.nan), name=f"signals[{col!r}]")
    bad = [i for i, v in enumerate(df["reasons"].to_numpy(dtype=object)) if not isinstance(v, str)]
    if bad:
        raise InputError(
            f"signals['reasons'] must hold one string per sample; row {bad[0]} ({index[bad[0]][:60]!r}) holds "
            f"{df['reasons'].iloc[bad[0]]!r} ({len(bad)} such rows); use '' for no reason"
        )
    df["reasons"] = df["reasons"].astype("str")
    return df


def _check_triggers(df: Any) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"triggers must be a pandas DataFrame; got {type(df).__name__}")
    missing = [c for c in TRIGGER_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"triggers has no column(s) {missing!r}; it needs {list(TRIGGER_COLUMNS)!r}")
    out = df.reset_index(drop=True)
    ids = []
    for i, cell in enumerate(out["sample_ids"].to_numpy(dtype=object)):
        if isinstance(cell, str) or not hasattr(cell, "__iter__"):
            raise InputError(f"triggers['sample_ids'][{i}] must be a list of sample ids; got {type(cell).__name__}")
        ids.append([str(s) for s in cell])
    out["sample_ids"] = pd.Series(ids, dtype=object, index=out.index)
    for col in ("remove_flip_rate", "add_flip_rate"):
        out[col] = pd.to_numeric(out[col], errors="raise").astype("float64")
    return _as_str_columns(out)


def _check_given_dataset(dataset: Any, folder: Path, recorded: str) -> None:
    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a forensics.data.Dataset; got {type(dataset).__name__}")
    if dataset.content_hash != recorded:
        raise IntegrityError(
            f"the dataset given has content hash {dataset.content_hash} but {folder} was saved with "
            f"dataset {recorded}: it is not the same dataset (ids, labels, sources or payloads differ)"
        )


def _check_stored_hash(got: str, folder: Path, recorded: str) -> None:
    if got != recorded:
        raise IntegrityError(f"the dataset stored in {folder} has content hash {got} but the manifest records "
                             f"{recorded}")


def _parse_time(text: str) -> np.datetime64:
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return np.datetime64(t.astimezone(timezone.utc).replace(tzinfo=None), "us")


class Investigation:
    """The state of one investigation: tables keyed by ``sample_id``, the review, and its audit log.

    Parameters
    ----------
    dataset : Dataset
    signals : DataFrame, shape (n, k)
        Indexed by ``sample_id`` in the dataset's order: ``<signal>_score`` columns, then ``suspicion`` (float,
        higher = more suspicious) and ``reasons`` (str, one per sample).
    samples : DataFrame, optional
        Indexed by ``sample_id``; defaults to ``dataset.to_frame()``. May carry prediction and loss columns.
    features : ndarray of shape (n, d), optional
        The activations the map is built from.
    params : dict, optional
        JSON-serializable parameters of the run (layer, signals, seeds), kept with saves and exports.
    map_builder : callable, optional
        ``map_builder(features, labels, *, ids, sources, suspicion, class_names)`` returning an object with
        ``.coords`` (n, 2), ``.clusters`` (n,) and ``.table`` (the cluster table). Defaults to
        :func:`forensics.embedding.build_map`. Called once, on first access to :attr:`map` or :attr:`clusters`.

    Notes
    -----
    The tables are copies; treat the frames the properties return as read-only. Review decisions go through
    :meth:`flag`, :meth:`confirm`, :meth:`clear`, :meth:`unflag` and :meth:`undo`.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        signals: pd.DataFrame,
        samples: pd.DataFrame | None = None,
        features: np.ndarray | None = None,
        params: Mapping[str, Any] | None = None,
        map_builder: Callable[..., Any] | None = None,
    ) -> None:
        self._setup(dataset, signals=signals, samples=samples, features=features, params=params,
                    map_builder=map_builder)
        from ._version import __version__

        self._log = AuditLog()
        self._log.append("start", payload={
            "dataset_hash": dataset.content_hash, "kind": dataset.kind, "n_samples": len(dataset),
            "toolkit_version": __version__, "nonce": secrets.token_hex(8),
        })

    def _setup(self, dataset, *, signals, samples, features, params, map_builder) -> None:
        if not isinstance(dataset, Dataset):
            raise InputError(f"dataset must be a forensics.data.Dataset; got {type(dataset).__name__}")
        n = len(dataset)
        self._dataset = dataset
        self._init_review(dataset.ids, dataset.positions)
        self._samples = _check_table(dataset.to_frame() if samples is None else samples, "samples", self._index)
        self._signals = _check_signals(signals, self._index)
        if features is not None:
            x = check_features(features)
            if len(x) != n:
                raise InputError(f"features has {len(x)} rows but the dataset has {n} samples")
            x = x.view()
            x.flags.writeable = False
            features = x
        self._features = features
        # The saved file the features are memory-mapped from (after a save or a load), checked on first use.
        self._features_stored: _store.StoredArray | None = None
        self._params = {} if params is None else to_json_object(params, name="params")
        if map_builder is not None and not callable(map_builder):
            raise InputError(f"map_builder must be callable; got {type(map_builder).__name__}")
        self._map_builder = map_builder
        self._map: pd.DataFrame | None = None
        self._clusters: pd.DataFrame | None = None
        self._triggers = _empty_triggers()
        self._trigger_arrays: dict[str, np.ndarray] = {}
        self._folder: Path | None = None
        #: The model under investigation, for trigger confirmation; never saved (reattach it after a load).
        self.model: Any = None
        #: The payload-to-input function the model was given, if not its own (never saved either).
        self.preprocess: Any = None

    def _init_review(self, ids: np.ndarray, positions: Callable[[Iterable[Any]], np.ndarray]) -> None:
        """An empty review of the samples ``ids``; ``positions`` maps sample ids to rows (unknown ids raise)."""
        n = len(ids)
        self._index = pd.Index(ids, name="sample_id", dtype=object)
        self._positions = positions
        self._status = np.zeros(n, dtype=np.int8)
        self._note = np.full(n, "", dtype=object)
        self._who = np.full(n, "", dtype=object)
        self._when = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        self._undo_stack: list[tuple[int, tuple[np.ndarray, ...]]] = []

    # ------------------------------------------------------------------------------------------ tables
    @property
    def dataset(self) -> Dataset:
        return self._dataset

    @property
    def id(self) -> str:
        """This investigation's identity: the hash of its first audit entry (kept across saves and loads)."""
        return self._log[0]["hash"]

    @property
    def samples(self) -> pd.DataFrame:
        """The sample table indexed by ``sample_id`` (label, label_name, source, content_hash, ...)."""
        return self._samples

    @property
    def signals(self) -> pd.DataFrame:
        """Per-sample scores indexed by ``sample_id``: ``<signal>_score`` columns, ``suspicion``, ``reasons``."""
        return self._signals

    @property
    def features(self) -> np.ndarray | None:
        """The activations, shape (n, d), float32, read-only; or None.

        Once the investigation is saved or loaded, a read-only memory map of its folder's features file: rows are
        read from disk as they are used. A loaded file is checked against its checksum (and for non-finite values)
        on this first access, in one pass over the file in chunks; IntegrityError naming the file if it was
        changed after saving.
        """
        return self._checked_features()

    def _checked_features(self) -> np.ndarray | None:
        stored = self._features_stored
        if stored is not None and not stored.verified:
            stored.verify(finite=True)
        return self._features

    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters (a copy)."""
        return json.loads(json.dumps(self._params))

    @property
    def audit(self) -> AuditLog:
        """The audit log of every review decision."""
        return self._log

    @property
    def folder(self) -> Path | None:
        """The folder the investigation was last saved to or loaded from; decisions are appended to its log."""
        return self._folder

    @property
    def has_map(self) -> bool:
        """Whether the map and the clusters are computed (or loaded) already."""
        return self._map is not None

    @property
    def map(self) -> pd.DataFrame:
        """The 2-D map indexed by ``sample_id``: x, y, cluster (-1 = noise). Built on first access."""
        if self._map is None:
            self._build_map()
        return self._map

    @property
    def clusters(self) -> pd.DataFrame:
        """The cluster table (size, purity, dominant label, mean suspicion, sources). Built on first access."""
        if self._clusters is None:
            self._build_map()
        return self._clusters

    def explain_clusters(self, metadata: pd.DataFrame | None = None, *, min_log10_p: float = 2.0) -> pd.DataFrame:
        """What sets each cluster apart: the label, source and metadata values it holds far more often than the rest
        (:func:`forensics.explain.explain_clusters`).

        Parameters
        ----------
        metadata : DataFrame indexed by sample_id, optional
            Columns of your own (device, camera, date, shard...), one row per sample of the dataset; explained
            beside the label and the source.
        min_log10_p : float
            Only values at least this unlikely by chance (corrected ``-log10`` p) are listed.
        """
        from .explain import explain_clusters

        ds = self._dataset
        frame = pd.DataFrame({"label": np.asarray(ds.class_names, dtype=object)[ds.labels]}, index=self._index)
        if ds.sources is not None:
            frame["source"] = ds.sources
        if metadata is not None:
            if not isinstance(metadata, pd.DataFrame):
                raise InputError(f"metadata must be a DataFrame indexed by sample_id; got {type(metadata).__name__}")
            missing = self._index.difference(pd.Index(metadata.index.astype(str)))
            if len(missing):
                raise InputError(f"metadata has no row for {len(missing)} sample(s), for example {list(missing[:3])!r}")
            extra = metadata.copy()
            extra.index = extra.index.astype(str)
            extra = extra.rename(columns={c: f"{c} (given)" for c in extra.columns if c in frame.columns})
            frame = pd.concat([frame, extra.reindex(self._index)], axis=1)
        return explain_clusters(self.map["cluster"].to_numpy(), frame.reset_index(drop=True), min_log10_p=min_log10_p)

    def _build_map(self) -> None:
        features = self._checked_features()
        if features is None:
            raise InputError("this investigation has no features; pass features=... to build the map")
        builder = self._map_builder
        if builder is None:
            from .embedding import build_map

            # The investigation's seed reaches the map too (a loaded investigation keeps it in its parameters).
            builder = functools.partial(build_map, random_state=self._params.get("random_state", 0))
        ds = self._dataset
        result = builder(features, ds.labels, ids=ds.ids, sources=ds.sources,
                         suspicion=self._signals["suspicion"].to_numpy(dtype=np.float64),
                         class_names=ds.class_names)
        n = len(ds)
        coords, clusters = np.asarray(result.coords), np.asarray(result.clusters)
        if coords.shape != (n, 2) or coords.dtype.kind not in "fiu":
            raise InputError(f"map_builder returned coords of shape {coords.shape} ({coords.dtype}); "
                             f"expected numbers of shape ({n}, 2)")
        if clusters.shape != (n,) or clusters.dtype.kind not in "iu":
            raise InputError(f"map_builder returned clusters of shape {clusters.shape} ({clusters.dtype}); "
                             f"expected integers of shape ({n},)")
        if not isinstance(result.table, pd.DataFrame):
            raise InputError(f"map_builder returned a cluster table of type {type(result.table).__name__}; "
                             "expected a DataFrame")
        self._map = pd.DataFrame({"x": coords[:, 0].astype(np.float64), "y": coords[:, 1].astype(np.float64),
                                  "cluster": clusters.astype(np.int64)}, index=self._index)
        self._clusters = _as_str_columns(result.table.copy())

    @property
    def triggers(self) -> pd.DataFrame:
        """Trigger candidates: kind, description, evidence, remove_flip_rate, add_flip_rate, verdict, sample_ids."""
        return self._triggers

    @triggers.setter
    def triggers(self, table: pd.DataFrame) -> None:
        self._triggers = _check_triggers(table)

    @property
    def trigger_arrays(self) -> dict[str, np.ndarray]:
        """What each image trigger candidate adds to an image, by ``trigger_id``: its patch (uint8) or its signed
        image-wide difference (float32); saved with the investigation (:func:`forensics.triggers.trigger_arrays`)."""
        return dict(self._trigger_arrays)

    @trigger_arrays.setter
    def trigger_arrays(self, arrays: Mapping[str, Any]) -> None:
        checked = {}
        for key, value in dict(arrays).items():
            a = np.asarray(value)
            if not isinstance(key, str) or not key.isprintable() or a.dtype.kind not in "uif" or a.ndim not in (2, 3):
                raise InputError(f"trigger_arrays maps trigger ids to 2-D or 3-D numeric images; got {key!r}: "
                                 f"{a.dtype} of shape {a.shape}")
            checked[key] = a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.uint8)
        self._trigger_arrays = checked

    @property
    def null_scores(self) -> dict[str, np.ndarray]:
        """By signal, the trusted samples' scores that are its null (``investigate(..., trusted=...)`` with 500 or
        more trusted samples; :func:`~forensics.signals.combine.combine`'s ``null_scores``); empty without."""
        kept = self._params.get("trusted_null_scores") or {}
        return {name: np.array([np.nan if v is None else v for v in values], dtype=np.float64)
                for name, values in kept.items()}

    @property
    def label_null(self) -> np.ndarray | None:
        """The model's label null (:func:`~forensics.signals.combine.label_null`, kept so that a recombination reads
        the label signals as the investigation did); None without the model's probabilities."""
        kept = self._params.get("label_null")
        if kept is None:
            return None
        try:
            return np.asarray(kept, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("params['label_null'] must be a list of [probability, share] pairs "
                             "(combine's label_null)") from None

    def replace_signals(self, table: pd.DataFrame) -> None:
        """Replace the signals table (same samples; ``suspicion`` and ``reasons`` required), e.g. after a new
        signal was added. A cluster table already built keeps the suspicion it was built with."""
        self._signals = _check_signals(table, self._index)

    def find_triggers(self, model: Any = None, **options: Any) -> pd.DataFrame:
        """Discover, confirm and search trigger candidates: see :func:`forensics.triggers.discover.find_triggers`."""
        from .triggers.discover import find_triggers

        return find_triggers(self, model, **options)

    def plan(self, **policy: Any) -> Any:
        """A remediation plan from this investigation: what to remove, relabel or quarantine, and why
        (:func:`forensics.remediation.plan_remediation`, whose keyword arguments are the policy)."""
        from .remediation import plan_remediation

        return plan_remediation(self, **policy)

    def verify(self, sanitized: Any, *, holdout: Dataset, **options: Any) -> Any:
        """Retrain on this investigation's data and on ``sanitized`` and compare clean accuracy and each confirmed
        trigger's attack success rate on ``holdout`` (:func:`forensics.verify.verify`)."""
        from .verify import verify

        return verify(self, sanitized, holdout=holdout, **options)

    # ------------------------------------------------------------------------------------------ review
    @property
    def review(self) -> pd.DataFrame:
        """The review indexed by ``sample_id``: status, note, who, when (UTC; NaT where never decided)."""
        return pd.DataFrame(
            {
                "status": pd.Series(np.asarray(STATUSES, dtype=object)[self._status], index=self._index,
                                    dtype="str"),
                "note": pd.Series(self._note, index=self._index, dtype="str"),
                "who": pd.Series(self._who, index=self._index, dtype="str"),
                "when": pd.Series(pd.DatetimeIndex(self._when).tz_localize("UTC"), index=self._index),
            },
            index=self._index,
        )

    def statuses(self, positions: np.ndarray | None = None) -> np.ndarray:
        """The review status of each sample (of the samples at ``positions``, dataset order) as text, without
        building the review table: what panels read for a page of samples out of a million."""
        codes = self._status if positions is None else self._status[np.asarray(positions, dtype=np.int64)]
        return np.asarray(STATUSES, dtype=object)[codes]

    def counts(self) -> pd.Series:
        """Number of samples in each review status (all four, zeros included)."""
        return pd.Series(np.bincount(self._status, minlength=len(STATUSES)).astype(np.int64),
                         index=pd.Index(STATUSES, name="status"), name="count")

    def flag(self, selection: Any = None, *, cluster: int | Iterable[int] | None = None, note: str = "",
             who: str | None = None) -> pd.Index:
        """Mark samples as suspected.

        Parameters
        ----------
        selection : sample ids (str, list, array, Index) or a boolean mask (array of length n, or a Series
            indexed by sample_id)
        cluster : int or list of int, optional
            Instead of ``selection``: every sample of these clusters of :attr:`map`.
        note : str
            Why; replaces the note of these samples.
        who : str, optional
            Defaults to the operating-system user.

        Returns
        -------
        Index
            The sample ids decided on, in the dataset's order.
        """
        return self._decide("flag", selection, cluster, note, who)

    def confirm(self, selection: Any = None, *, cluster: int | Iterable[int] | None = None, note: str = "",
                who: str | None = None) -> pd.Index:
        """Mark samples as confirmed poison (arguments as in :meth:`flag`)."""
        return self._decide("confirm", selection, cluster, note, who)

    def clear(self, selection: Any = None, *, cluster: int | Iterable[int] | None = None, note: str = "",
              who: str | None = None) -> pd.Index:
        """Mark samples as reviewed and clean (arguments as in :meth:`flag`)."""
        return self._decide("clear", selection, cluster, note, who)

    def unflag(self, selection: Any = None, *, cluster: int | Iterable[int] | None = None, note: str = "",
               who: str | None = None) -> pd.Index:
        """Return samples to "unreviewed" (arguments as in :meth:`flag`)."""
        return self._decide("unflag", selection, cluster, note, who)

    def undo(self, *, note: str = "", who: str | None = None) -> pd.Index:
        """Revert the last review decision not yet reverted; recorded in the audit log as an ``undo`` entry.

        Repeated calls walk back through earlier decisions. Returns the sample ids restored.
        """
        if not self._undo_stack:
            raise InputError("nothing to undo: no review decision is left to revert")
        entry = self._log.append("undo", payload={"undoes": self._undo_stack[-1][0]}, note=note, who=who)
        pos = self._apply(entry)
        return pd.Index(self._dataset.ids[pos], name="sample_id", dtype=object)

    def _decide(self, action: str, selection: Any, cluster: Any, note: str, who: str | None) -> pd.Index:
        pos, payload = self._resolve(selection, cluster)
        ids = self._dataset.ids[pos]
        # Write-ahead: the decision is in the log (on disk once the investigation has a folder) before the
        # review table changes.
        entry = self._log.append(action, ids=ids.tolist(), payload=payload, note=note, who=who)
        self._apply(entry, pos)
        return pd.Index(ids, name="sample_id", dtype=object)

    def _resolve(self, selection: Any, cluster: Any) -> tuple[np.ndarray, dict[str, Any] | None]:
        n = len(self._dataset)
        if (selection is None) == (cluster is None):
            raise InputError("give either a selection (ids or a boolean mask) or cluster=..., not both or neither")
        payload = None
        if cluster is not None:
            wanted = [cluster] if np.ndim(cluster) == 0 else list(cluster)
            if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in wanted):
                raise InputError(f"cluster must be an integer or a list of integers; got {cluster!r}")
            wanted = [int(c) for c in wanted]
            labels = self.map["cluster"].to_numpy()
            known = set(np.unique(labels).tolist())
            unknown = [c for c in wanted if c not in known]
            if unknown:
                raise InputError(f"cluster {unknown[0]} is not on the map; clusters are {sorted(known)[:30]}")
            pos = np.flatnonzero(np.isin(labels, wanted))
            payload = {"cluster": wanted}
        elif isinstance(selection, pd.Series) and pd.api.types.is_bool_dtype(selection.dtype):
            pos = self._dataset.positions(selection.index[selection.to_numpy(dtype=bool)].tolist())
        elif isinstance(selection, (str, np.str_)):
            pos = self._dataset.positions([selection])
        elif isinstance(selection, (bytes, Mapping)) or not hasattr(selection, "__iter__"):
            raise InputError(
                f"selection must be sample ids or a boolean mask; got {type(selection).__name__}"
            )
        else:
            values = selection.to_numpy() if isinstance(selection, (pd.Series, pd.Index)) else selection
            arr = np.asarray(list(values) if isinstance(values, (set, frozenset)) else values)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise InputError(f"a boolean mask must have shape ({n},), one entry per sample; got {arr.shape}")
                pos = np.flatnonzero(arr)
            else:
                if arr.ndim != 1:
                    raise InputError(f"selection must be one-dimensional; got shape {arr.shape}")
                pos = self._dataset.positions(arr.tolist())
        pos = np.unique(pos)
        if len(pos) == 0:
            raise InputError("the selection is empty; no sample was decided on")
        return pos, payload

    def _apply(self, entry: Mapping[str, Any], pos: np.ndarray | None = None) -> np.ndarray:
        """Apply one audit entry to the review table (live, or while replaying the log); return its rows."""
        action = entry["action"]
        if action in ACTIONS:
            if pos is None:
                if "ids" not in entry:
                    raise IntegrityError("a review entry without ids")
                pos = np.unique(self._positions(entry["ids"]))
            before = (pos, self._status[pos].copy(), self._note[pos].copy(), self._who[pos].copy(),
                      self._when[pos].copy())
            self._status[pos] = _STATUS_CODE[ACTIONS[action]]
            self._note[pos] = entry["note"]
            self._who[pos] = entry["who"]
            self._when[pos] = _parse_time(entry["time"])
            self._undo_stack.append((entry["seq"], before))
            return pos
        if action == "undo":
            target = entry.get("payload", {}).get("undoes")
            if not self._undo_stack or self._undo_stack[-1][0] != target:
                last = self._undo_stack[-1][0] if self._undo_stack else None
                raise IntegrityError(f"undo of seq {target!r}, but the last decision left to undo is seq {last}")
            _, (pos, status, note, who, when) = self._undo_stack.pop()
            self._status[pos], self._note[pos], self._who[pos], self._when[pos] = status, note, who, when
            return pos
        if action in ("start", "repair"):
            return np.empty(0, dtype=np.int64)
        raise IntegrityError(f"unknown action {action!r}")

    # ------------------------------------------------------------------------------------------ export
    def export(
        self,
        path: str | os.PathLike,
        *,
        format: Literal["csv", "parquet", "json"] | None = None,
        include: Literal["marked", "all"] = "marked",
    ) -> Path:
        """Write the review list for people and pipelines downstream.

        Parameters
        ----------
        path : path-like
            .csv, .parquet or .json (or give ``format``). A side file ``<path>.meta.json`` records the toolkit
            version, the time, the row count, the layer and the run's parameters.
        format : {"csv", "parquet", "json"}, optional
        include : {"marked", "all"}
            "marked": the samples marked suspected or confirmed in the review; "all": every sample. ("flagged" is
            the old name of "marked" and warns: "flagged" now means a suspicion at or above the threshold, as in
            the scan and the report.)

        Returns
        -------
        Path

        Notes
        -----
        Columns: sample_id, label (the class name), source, suspicion, reasons, status, note, who, when (ISO 8601,
        UTC; empty where never decided). Rows by decreasing suspicion (missing suspicion last), ties in the
        dataset's order. CSV text cells are neutralized against formula injection
        (see :mod:`forensics.export`).
        """
        if include == "flagged":
            warnings.warn("export(include='flagged') is deprecated: the review's marks are include='marked'",
                          DeprecationWarning, stacklevel=2)
            include = "marked"
        if include not in ("marked", "all"):
            raise InputError(f"include must be 'marked' or 'all'; got {include!r}")
        ds = self._dataset
        rows = np.flatnonzero(np.isin(self._status, _FLAGGED)) if include == "marked" else np.arange(len(ds))
        suspicion = self._signals["suspicion"].to_numpy(dtype=np.float64)[rows]
        # Stable sort on -suspicion keeps ties in dataset order; NaN sorts last.
        rows = rows[np.argsort(np.where(np.isnan(suspicion), np.inf, -suspicion), kind="stable")]
        when = pd.DatetimeIndex(self._when[rows]).tz_localize("UTC")
        table = pd.DataFrame({
            "sample_id": pd.Series(ds.ids[rows], dtype="str"),
            "label": pd.Series(np.asarray(ds.class_names, dtype=object)[ds.labels[rows]], dtype="str"),
            "source": pd.Series(ds.sources[rows] if ds.sources is not None else [None] * len(rows), dtype="str"),
            "suspicion": self._signals["suspicion"].to_numpy(dtype=np.float64)[rows],
            "reasons": pd.Series(self._signals["reasons"].to_numpy(dtype=object)[rows], dtype="str"),
            "status": pd.Series(np.asarray(STATUSES, dtype=object)[self._status[rows]], dtype="str"),
            "note": pd.Series(self._note[rows], dtype="str"),
            "who": pd.Series(self._who[rows], dtype="str"),
            "when": pd.Series([None if pd.isna(t) else t.isoformat() for t in when], dtype="str"),
        })
        from ._version import __version__

        meta = {
            "what": "investigation review",
            "include": include,
            "layer": self._params.get("layer"),
            "parameters": self._params,
            "dataset_hash": ds.content_hash,
            "investigation_id": self.id,
            "review_counts": {k: int(v) for k, v in self.counts().items()},
            "audit_head": list(self._log.head),
            "toolkit_version": __version__,
        }
        return export_table(table, path, format=format, meta=meta)

    # ------------------------------------------------------------------------------------------ save / load
    def save(self, folder: str | os.PathLike, *, include_dataset: bool = True, overwrite: bool = False) -> Path:
        """Save to ``folder`` and attach the investigation to it (later decisions are appended to its log).

        Parameters
        ----------
        folder : path-like
            Created if missing. A folder holding this investigation is updated in place, crash-safe.
        include_dataset : bool
            Store the dataset too, so that :meth:`load` needs nothing else. Without it, ``load`` needs the
            dataset passed in.
        overwrite : bool
            Replace a folder that holds another investigation, or this one continued elsewhere (decisions this
            session does not have). Without it, both are refused.

        Returns
        -------
        Path
            The folder.

        Notes
        -----
        Review decisions reach the folder's audit log as they are made; the tables (a map computed, triggers
        set) reach it with the next save.

        Raises
        ------
        InputError
            The folder cannot be created or written, or holds another investigation and ``overwrite`` is False.
        IntegrityError
            The folder's log holds decisions this object does not have (it was continued elsewhere): load the
            folder instead of overwriting them.
        ForensicsError
            Another save or decision holds the folder's lock past the timeout.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"cannot save the investigation to {folder}: it is a file, not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the investigation folder {folder}: {e.strerror or e}") from e
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"cannot save the investigation to {folder}: no permission to write there")
        try:
            with _io.file_lock(folder / ".lock", timeout=audit.LOCK_TIMEOUT_S,
                               what=f"the investigation folder {folder}"):
                self._save_locked(folder, include_dataset=include_dataset, overwrite=overwrite)
        except PermissionError as e:
            raise InputError(f"cannot save the investigation to {folder}: {e.strerror} ({e.filename})") from e
        return folder

    def _save_locked(self, folder: Path, *, include_dataset: bool, overwrite: bool) -> None:
        from ._version import __version__

        old = None
        if (folder / MANIFEST).exists():
            try:
                old = _store.read_manifest(folder)
            except IntegrityError:
                if not overwrite:
                    raise
        if old is not None and old["investigation_id"] != self.id and not overwrite:
            raise InputError(
                f"{folder} holds another investigation (id {old['investigation_id'][:16]}...); choose another "
                "folder or pass overwrite=True to replace it"
            )
        attached_here = (self._folder is not None and self._log.path is not None
                         and self._folder.resolve() == folder.resolve())
        if attached_here:
            self._log.check_file()  # no decision from another writer would be lost
        elif old is not None and old["investigation_id"] == self.id and not overwrite:
            # The folder's log may have grown since its last save (decisions are written ahead): it must be a
            # prefix of this session's log, or saving here would drop decisions made elsewhere.
            theirs = AuditLog.load(folder / old["audit"]["file"],
                                   anchor=(old["audit"]["head_seq"], old["audit"]["head_hash"]))
            last = len(theirs) - 1
            if last >= len(self._log) or self._log[last]["hash"] != theirs[last]["hash"]:
                raise IntegrityError(
                    f"{folder} holds decisions this session does not have (its audit log has {len(theirs)} "
                    f"entries that are not all among this session's {len(self._log)}): it was continued elsewhere. "
                    "Load it with Investigation.load, or pass overwrite=True to replace it"
                )
        gen = (old["generation"] if old is not None else 0) + 1
        files: dict[str, dict[str, str]] = {}

        def put(key: str, ext: str, writer: Callable[[Path], Any]) -> None:
            files[key] = _store.write_file(folder, key, gen, ext, writer)

        ds = self._dataset
        if include_dataset:
            if (old is not None and old["dataset"]["hash"] == ds.content_hash
                    and "dataset" in old["files"] and (ds.kind == "text" or "images" in old["files"])
                    and all((folder / old["files"][k]["file"]).is_file() for k in ("dataset", "images")
                            if k in old["files"])):
                # The same dataset is already stored: keep its files (their checksums are carried over).
                files.update({k: old["files"][k] for k in ("dataset", "images") if k in old["files"]})
            else:
                put("dataset", "parquet", lambda tmp: _store.dataset_table(ds).to_parquet(tmp))
                if ds.kind == "image":
                    put("images", "npy", lambda tmp: _store.save_npy(tmp, ds.images))
        put("samples", "parquet", lambda tmp: self._samples.to_parquet(tmp))
        put("signals", "parquet", lambda tmp: self._signals.to_parquet(tmp))
        put("triggers", "parquet", lambda tmp: self._triggers.to_parquet(tmp))
        if self._map is not None:
            put("map", "parquet", lambda tmp: self._map.to_parquet(tmp))
            put("clusters", "parquet", lambda tmp: self._clusters.to_parquet(tmp))
        written: dict[str, os.stat_result] = {}
        if self._features is not None:
            stored = self._features_stored
            if (old is not None and stored is not None and stored.path.parent.resolve() == folder.resolve()
                    and old["files"].get("features") == {"file": stored.path.name, "blake2b": stored.digest}
                    and stored.path.is_file()):
                # Features never change: the file they are mapped from stays, with its entry (and its checksum,
                # so that a file changed on disk is still caught by the next load).
                files["features"] = old["files"]["features"]
            else:
                x = self._checked_features()  # a mapped file is checked before its data is stored under a new checksum

                def write_features(tmp: Path) -> None:
                    _store.save_npy(tmp, x)
                    written["features"] = os.stat(tmp)

                put("features", "npy", write_features)
        if self._trigger_arrays:
            put("patterns", "npz", lambda tmp: _store.save_npz(tmp, self._trigger_arrays))
        if attached_here:
            log_path = self._log.path
        else:
            log_path = folder / f"audit.{gen}.jsonl"
            data = self._log.to_bytes()
            _io.atomic_write_bytes(log_path, data)
            audit.write_seal(log_path, self._log.head, len(data))
        head_seq, head_hash = self._log.head
        manifest = {
            "format": _store.FORMAT,
            "format_version": _store.FORMAT_VERSION,
            "toolkit_version": __version__,
            "saved": utc_now(),
            "investigation_id": self.id,
            "generation": gen,
            "dataset": {"hash": ds.content_hash, "kind": ds.kind, "n_samples": len(ds),
                        "class_names": list(ds.class_names), "stored": bool(include_dataset)},
            "params": self._params,
            "files": files,
            "audit": {"file": log_path.name, "head_seq": head_seq, "head_hash": head_hash, "sealed": True},
        }
        _store.write_manifest(folder, manifest)
        if not attached_here:
            self._log.attach(log_path)
        self._folder = folder
        _store.remove_unreferenced(folder, {f["file"] for f in files.values()}
                                   | {log_path.name, audit.seal_path(log_path).name})
        if "features" in written:
            self._map_features(folder, files["features"], written["features"])

    def _map_features(self, folder: Path, spec: Mapping[str, str], written: os.stat_result) -> None:
        """Read the features from the file this save wrote from now on: memory-mapped, so that the array in memory
        can be freed, and so that the next save of this folder keeps the file instead of writing it again."""
        path = folder / spec["file"]
        try:
            stored = _store.StoredArray.open(path, spec["blake2b"])
        except (OSError, IntegrityError) as e:  # the save is complete; only the next one will write the file again
            logger.warning("the features just saved to %s could not be mapped (%s); they stay in memory", path, e)
            return
        if stored.same_file(written):  # the very file this save wrote and checksummed: nothing to check again
            stored.mark_verified()
        self._features, self._features_stored = stored.array, stored

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        dataset: Dataset | None = None,
        *,
        repair: bool = False,
        map_builder: Callable[..., Any] | None = None,
    ) -> Investigation:
        """Open a saved investigation; the review is replayed from its audit log.

        Parameters
        ----------
        folder : path-like
        dataset : Dataset, optional
            The dataset, when the folder was saved without it (or to use this one); it must have the content
            hash the folder recorded.
        repair : bool
            Drop an incomplete last line of the audit log (a decision cut off by a crash, never confirmed) and
            record that in the log. Nothing else is repaired.
        map_builder : callable, optional
            Used if the map was not saved and is asked for.

        Raises
        ------
        InputError
            The folder holds no saved investigation, or it was saved without its dataset and none is given.
        IntegrityError
            A file does not match its checksum, the dataset's hash differs from the recorded one (both named),
            or the audit log's chain is broken (the entry named).

        Notes
        -----
        Every file is checked against its checksum here, except the features file: its header is read and its data
        memory-mapped read-only, and it is checked on the first use of :attr:`features` (a load for the review, the
        tables or an export never reads it). The images of an image dataset are memory-mapped too, after their
        check. Saves never write a file in place, so the maps stay valid whatever later saves do; a file edited in
        place by something else while it is mapped is beyond what a check can catch.
        """
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise InputError(f"{folder} holds no saved investigation ({MANIFEST} is missing)")
        with _io.file_lock(folder / ".lock", timeout=audit.LOCK_TIMEOUT_S, what=f"the investigation folder {folder}",
                           read_only_ok=not repair):
            m = _store.read_manifest(folder)
            files = m["files"]

            path_of = functools.partial(_store.verified_path, folder, files)

            recorded = m["dataset"]["hash"]
            if dataset is not None:
                _check_given_dataset(dataset, folder, recorded)
            elif "dataset" in files:
                dataset = _store.read_dataset(m, path_of("dataset"), path_of("images") if "images" in files else None)
                _check_stored_hash(dataset.content_hash, folder, recorded)
            else:
                raise InputError(f"{folder} was saved without its dataset; pass it: Investigation.load(folder, "
                                 "dataset=ds)")
            tables = {k: pd.read_parquet(path_of(k)) for k in _TABLES if k in files}
            stored = None
            if "features" in files:
                # Mapped, not read: its checksum is checked on first use of the features.
                stored = _store.StoredArray.open(folder / files["features"]["file"], files["features"]["blake2b"])
                x = stored.array
                if x.dtype.kind != "f" or x.dtype.itemsize != 4 or x.ndim != 2 or x.shape[0] != len(dataset) \
                        or x.shape[1] == 0:
                    raise IntegrityError(f"{stored.path} holds a {x.dtype} array of shape {x.shape}; the features of "
                                         f"this investigation are float32 of shape ({len(dataset)}, d)")
            log_name = m["audit"]["file"]
            log = AuditLog.load(folder / log_name, repair=repair,
                                anchor=(m["audit"]["head_seq"], m["audit"]["head_hash"]),
                                sealed=m["audit"].get("sealed") is True)

            inv = cls.__new__(cls)
            inv._setup(dataset, signals=tables["signals"], samples=tables["samples"], features=None,
                       params=m["params"], map_builder=map_builder)
            if stored is not None:
                inv._features, inv._features_stored = stored.array, stored
            inv._log = log
            inv._replay(m, dataset.content_hash)
            inv._triggers = _check_triggers(tables["triggers"])
            if "patterns" in files:
                inv.trigger_arrays = _store.load_npz(path_of("patterns"))
            if "map" in tables:
                inv._map = _check_table(tables["map"], "map", inv._index)
                inv._clusters = _as_str_columns(tables["clusters"])
            inv._folder = folder
        return inv

    @classmethod
    def read_review(cls, folder: str | os.PathLike, dataset: Dataset | None = None) -> pd.DataFrame:
        """The review of a saved investigation (``Investigation.load(folder).review``), reading only what it needs.

        Reads the manifest, the sample ids of the stored dataset with the columns its content hash covers (labels,
        payload hashes, sources: no text or image), and the audit log, each checked as :meth:`load` checks it; no
        table and no feature is read. For a pipeline or a notebook that only needs the decisions of a large
        investigation.

        Parameters
        ----------
        folder : path-like
        dataset : Dataset, optional
            The dataset, when the folder was saved without it; it must have the content hash the folder recorded.

        Returns
        -------
        DataFrame
            Indexed by ``sample_id`` in the dataset's order: status, note, who, when, as :attr:`review`.

        Raises
        ------
        InputError, IntegrityError
            As :meth:`load`.
        """
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise InputError(f"{folder} holds no saved investigation ({MANIFEST} is missing)")
        with _io.file_lock(folder / ".lock", timeout=audit.LOCK_TIMEOUT_S, what=f"the investigation folder {folder}",
                           read_only_ok=True):
            m = _store.read_manifest(folder)
            files = m["files"]
            recorded = m["dataset"]["hash"]
            if dataset is not None:
                _check_given_dataset(dataset, folder, recorded)
                ids, positions = dataset.ids, dataset.positions
            elif "dataset" in files:
                ids, got = _store.read_sample_ids(m, _store.verified_path(folder, files, "dataset"))
                _check_stored_hash(got, folder, recorded)
                positions = functools.partial(positions_in, {s: i for i, s in enumerate(ids)})
            else:
                raise InputError(f"{folder} was saved without its dataset; pass it: Investigation.read_review(folder, "
                                 "dataset=ds)")
            log = AuditLog.load(folder / m["audit"]["file"], anchor=(m["audit"]["head_seq"], m["audit"]["head_hash"]),
                                sealed=m["audit"].get("sealed") is True)
        # A review-only instance: the review over the ids and the log replayed into it; it never leaves here.
        only = cls.__new__(cls)
        only._init_review(ids, positions)
        only._log = log
        only._replay(m, recorded)
        return only.review

    def _replay(self, manifest: Mapping[str, Any], dataset_hash: str) -> None:
        log = self._log
        where = f"audit log {log.path}"
        if not len(log) or log[0]["action"] != "start":
            raise IntegrityError(f"{where}: line 1 is not the start of an investigation")
        if log[0]["hash"] != manifest["investigation_id"]:
            raise IntegrityError(f"{where} belongs to another investigation than {MANIFEST} names")
        if log[0].get("payload", {}).get("dataset_hash") != dataset_hash:
            raise IntegrityError(f"{where}: it was started on another dataset "
                                 f"({log[0].get('payload', {}).get('dataset_hash')!r})")
        for entry in log:
            try:
                self._apply(entry)
            except (InputError, IntegrityError, ValueError, TypeError) as e:
                raise IntegrityError(
                    f"{where}: line {entry['seq'] + 1} (seq {entry['seq']}, {entry['action']}) cannot be replayed: "
                    f"{e}"
                ) from e

    def dashboard(self, **kwargs: Any) -> Any:
        """The interactive dashboard over this investigation (see :func:`forensics.panels.dashboard`)."""
        from .panels import dashboard

        return dashboard(self, **kwargs)

    def __repr__(self) -> str:
        c = self.counts()
        where = f", saved in {self._folder}" if self._folder is not None else ", not saved"
        return (f"Investigation({self._dataset.kind}, {len(self._dataset)} samples, {c['suspected']} suspected, "
                f"{c['confirmed']} confirmed, {c['cleared']} cleared{where})")
