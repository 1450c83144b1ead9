"""Data integrity for pipelines: manifests, what changed between two of them, and canary checks on a model.

After an incident the first questions are *what changed since the last good version*, *who added it* and *does the
model still behave on samples we know to be right*. Three tools answer them:

- A **manifest** records every sample of a dataset version: its content hash, label, source and the time it was
  first seen. :func:`save_manifest` writes it as Parquet with a SHA-256 checksum in a JSON sidecar;
  :func:`load_manifest` refuses a file that no longer matches its checksum.
- :func:`diff` compares two manifests: samples added, removed, relabelled, modified or moved to another source,
  and a per-source summary that points at the contributor behind a change.
- :func:`canary_report` scores a model on a set of trusted samples with known labels and lists the canaries whose
  prediction changed from a baseline (for example the previous model's).

The module never imports torch: pass a callable such as ``lambda ds: forensics.models.predict_proba(model, ds)``.
Manifests, diffs and canaries read and write the same checksummed manifest format, hence one module past 600
lines.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ._io import atomic_write_bytes
from .data import Dataset
from .errors import InputError, IntegrityError

#: Name and version of the on-disk manifest format (the ``format`` and ``format_version`` keys of the sidecar).
MANIFEST_FORMAT = "forensics-manifest"
MANIFEST_FORMAT_VERSION = 1

#: Columns of :attr:`Manifest.table`, in order; the index is ``sample_id``.
MANIFEST_COLUMNS = ("content_hash", "label", "label_name", "source", "time_added")

_META_KEY = b"forensics.manifest"
_META_FIELDS = ("format", "format_version", "class_names", "n", "created", "toolkit_version")
_TIME_DTYPE = "datetime64[us, UTC]"


def _toolkit_version() -> str:
    from ._version import __version__

    return __version__


# ====================================================================== manifests
@dataclass(frozen=True, eq=False, repr=False)
class Manifest:
    """A record of every sample of one dataset version.

    Build one with :func:`make_manifest` (from a :class:`~forensics.data.Dataset`) or :func:`manifest_from_arrays`;
    treat the table as read-only (copy it before changing it).

    Attributes
    ----------
    table : DataFrame, n rows, indexed by ``sample_id`` (str)
        Columns ``content_hash`` (str), ``label`` (int64 index into ``class_names``), ``label_name`` (str),
        ``source`` (str, missing when the dataset has no sources) and ``time_added`` (UTC timestamp: when the
        sample id first appeared in a manifest of this lineage).
    class_names : tuple of str
    created : Timestamp (UTC)
        When the manifest was made.
    toolkit_version : str
        ``forensics.__version__`` of the toolkit that made it.
    """

    table: pd.DataFrame
    class_names: tuple[str, ...]
    created: pd.Timestamp
    toolkit_version: str

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.table)

    def __repr__(self) -> str:
        n_sources = self.table["source"].nunique()
        return (f"Manifest({self.n} samples, {len(self.class_names)} classes, {n_sources} sources, "
                f"created {self.created.isoformat()}, toolkit {self.toolkit_version})")


def make_manifest(
    dataset: Dataset,
    *,
    time_added: Any = None,
    previous: Manifest | None = None,
) -> Manifest:
    """The manifest of a dataset version.

    Parameters
    ----------
    dataset : Dataset
    time_added : timestamp-like with a time zone, optional
        When the samples new to this version were added; defaults to now. Samples whose id is already in
        ``previous`` keep their earlier ``time_added`` (a changed payload or label shows in :func:`diff`, not here).
    previous : Manifest, optional
        The manifest of the version this one follows.

    Returns
    -------
    Manifest
        One row per sample, in the dataset's order.
    """
    if not isinstance(dataset, Dataset):
        raise InputError(f"dataset must be a forensics.data.Dataset; got {type(dataset).__name__}")
    return manifest_from_arrays(dataset.ids, dataset.hashes, dataset.labels, class_names=dataset.class_names,
                                sources=dataset.sources, time_added=time_added, previous=previous)


def manifest_from_arrays(
    ids: Sequence[Any] | np.ndarray,
    hashes: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    class_names: Sequence[str],
    sources: Sequence[str] | np.ndarray | None = None,
    time_added: Any = None,
    previous: Manifest | None = None,
) -> Manifest:
    """A manifest from plain columns, without building a :class:`~forensics.data.Dataset` (fast for 10^6+ rows).

    Parameters
    ----------
    ids : array-like of str or int, shape (n,)
        Unique sample ids.
    hashes : array-like of str, shape (n,)
        Content hash of each payload (see :func:`forensics.data.image_hash`, :func:`~forensics.data.text_hash`).
    labels : array-like of int, shape (n,)
        Index into ``class_names``.
    class_names : sequence of str
    sources : array-like of str, shape (n,), optional
    time_added, previous
        As in :func:`make_manifest`.

    Returns
    -------
    Manifest
    """
    names = _check_class_names(class_names)
    ids_arr = _text_column(ids, None, "ids")
    n = len(ids_arr)
    index = pd.Index(ids_arr, name="sample_id")
    if not index.is_unique:
        dups = index[index.duplicated()].unique()
        raise InputError(f"ids must be unique; {len(dups)} id(s) occur more than once, "
                         f"for example {list(dups[:5])!r}")
    hash_arr = _text_column(hashes, n, "hashes")
    label_arr = _check_label_indices(labels, n, len(names))
    source_arr = None if sources is None else _text_column(sources, n, "sources")
    stamp = _check_time(time_added, "time_added")
    if previous is not None and not isinstance(previous, Manifest):
        raise InputError(f"previous must be a Manifest or None; got {type(previous).__name__}")

    table = pd.DataFrame(
        {
            "content_hash": hash_arr,
            "label": label_arr,
            "label_name": pd.array(np.asarray(names, dtype=object)[label_arr], dtype="str"),
            "source": source_arr if source_arr is not None else pd.array([pd.NA] * n, dtype="str"),
        },
        index=index,
    )
    if previous is None:
        table["time_added"] = stamp
    else:
        # Ids already recorded keep the time they first appeared; the rest are new as of ``stamp``.
        table["time_added"] = previous.table["time_added"].reindex(index).fillna(stamp)
    table["time_added"] = table["time_added"].astype(_TIME_DTYPE)
    return Manifest(table=table, class_names=names, created=_now(), toolkit_version=_toolkit_version())


def save_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write a manifest as Parquet, with its checksum in a JSON sidecar ``<path>.json``.

    The sidecar holds ``format``, ``format_version``, ``class_names``, ``n``, ``created``, ``toolkit_version``,
    ``parquet`` (the data file's name) and ``sha256`` (of the Parquet file's bytes). The same dataset-level fields
    are also embedded in the Parquet key-value metadata, so that an edit of the sidecar is caught as well as an
    edit of the data. Each file is written atomically (temporary file, fsync, rename); the Parquet file is
    written first, so a crash between the two leaves a pair that :func:`load_manifest` rejects rather than a pair
    that silently disagrees.

    Parameters
    ----------
    manifest : Manifest
    path : path-like
        The Parquet file to write (``.parquet`` is customary); the sidecar is ``path`` with ``.json`` appended.

    Returns
    -------
    Path
        The Parquet file's path.
    """
    if not isinstance(manifest, Manifest):
        raise InputError(f"manifest must be a Manifest; got {type(manifest).__name__}")
    path = Path(path)
    if path.suffix == ".json":
        raise InputError(f"path {str(path)!r} ends in .json; give the Parquet file's path (the sidecar is "
                         "<path>.json)")
    if not path.parent.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    meta = _dataset_meta(manifest)
    table = pa.Table.from_pandas(manifest.table, preserve_index=True)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    sidecar = {**meta, "parquet": path.name, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar_path(path), (json.dumps(sidecar, indent=2) + "\n").encode())
    return path


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest written by :func:`save_manifest`, after checking it against its checksum.

    Raises
    ------
    IntegrityError
        Naming the file, when the sidecar ``<path>.json`` is missing or unreadable, the Parquet bytes do not match
        the recorded SHA-256 (edited, truncated, replaced), the sidecar disagrees with the metadata embedded in the
        Parquet file, or the table is inconsistent (labels outside the classes, names not matching labels,
        duplicate ids, a different row count).
    InputError
        When neither the manifest nor its sidecar exists, or the format is newer than this toolkit reads.
    """
    path = Path(path)
    side = _sidecar_path(path)
    if not path.is_file():
        if side.is_file():
            raise IntegrityError(f"{path}: the manifest file is missing but its sidecar {side} exists")
        raise InputError(f"{path}: no such manifest file")
    if not side.is_file():
        raise IntegrityError(f"{path}: its checksum sidecar {side} is missing; the manifest cannot be verified")
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{side}: the sidecar of {path} is not valid JSON ({e})") from e
    if not isinstance(sidecar, dict) or not {*_META_FIELDS, "sha256"} <= sidecar.keys():
        missing = sorted({*_META_FIELDS, "sha256"} - (sidecar.keys() if isinstance(sidecar, dict) else set()))
        raise IntegrityError(f"{side}: the sidecar of {path} lacks the fields {missing}")
    if sidecar["format"] != MANIFEST_FORMAT:
        raise IntegrityError(f"{side}: format is {sidecar['format']!r}, not {MANIFEST_FORMAT!r}")
    version = sidecar["format_version"]
    if not isinstance(version, int) or version < 1:
        raise IntegrityError(f"{side}: format_version {version!r} is not a positive integer")
    if version > MANIFEST_FORMAT_VERSION:
        raise InputError(f"{path}: manifest format version {version} is newer than this toolkit reads "
                         f"({MANIFEST_FORMAT_VERSION}); upgrade poison-forensics")

    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sidecar["sha256"]:
        raise IntegrityError(
            f"{path}: checksum mismatch: the file's sha256 is {actual} but {side.name} records "
            f"{str(sidecar['sha256'])[:64]}; the manifest was changed, replaced or truncated after it was written"
        )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise IntegrityError(f"{path}: not a readable Parquet file ({e})") from e
    embedded_raw = (table.schema.metadata or {}).get(_META_KEY)
    if embedded_raw is None:
        raise IntegrityError(f"{path}: no manifest metadata in the Parquet file")
    try:
        embedded = json.loads(embedded_raw)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{path}: the manifest metadata inside the Parquet file is not valid JSON") from e
    differing = [k for k in _META_FIELDS if embedded.get(k) != sidecar[k]]
    if differing:
        raise IntegrityError(f"{side}: the sidecar's {differing} disagree with the record inside {path}; "
                             "one of the two files was edited")

    frame = table.to_pandas()
    _check_loaded_table(frame, embedded, path)
    frame["time_added"] = frame["time_added"].astype(_TIME_DTYPE)
    return Manifest(table=frame, class_names=tuple(embedded["class_names"]),
                    created=pd.Timestamp(embedded["created"]), toolkit_version=str(embedded["toolkit_version"]))


def _check_loaded_table(frame: pd.DataFrame, meta: dict, path: Path) -> None:
    if tuple(frame.columns) != MANIFEST_COLUMNS or frame.index.name != "sample_id":
        raise IntegrityError(f"{path}: columns {[frame.index.name, *frame.columns]} are not "
                             f"{['sample_id', *MANIFEST_COLUMNS]}")
    if len(frame) != meta["n"]:
        raise IntegrityError(f"{path}: {len(frame)} rows but the record says n = {meta['n']}")
    if not frame.index.is_unique:
        raise IntegrityError(f"{path}: sample ids are not unique")
    names = np.asarray(meta["class_names"], dtype=object)
    labels = frame["label"].to_numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise IntegrityError(f"{path}: labels outside the {len(names)} classes")
    if len(labels) and not (frame["label_name"].to_numpy(dtype=object) == names[labels]).all():
        raise IntegrityError(f"{path}: label_name does not match class_names[label] in every row")
    if not isinstance(frame["time_added"].dtype, pd.DatetimeTZDtype):
        raise IntegrityError(f"{path}: time_added is {frame['time_added'].dtype}, not a UTC timestamp")


def _dataset_meta(manifest: Manifest) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "class_names": list(manifest.class_names),
        "n": manifest.n,
        "created": manifest.created.isoformat(),
        "toolkit_version": manifest.toolkit_version,
    }


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# ====================================================================== diff
_CHANGE_COLUMNS = ("old_label", "new_label", "old_label_name", "new_label_name", "old_source", "new_source",
                   "old_content_hash", "new_content_hash", "time_added")
_BY_SOURCE_COLUMNS = ("n_old", "n_new", "added", "removed", "relabelled", "modified", "moved_in", "moved_out",
                      "changed", "n_samples", "share_changed")


@dataclass(frozen=True, eq=False, repr=False)
class ManifestDiff:
    """What changed from one manifest to the next. Every table is indexed by ``sample_id``.

    A sample present in both versions appears in at most one of ``modified``, ``relabelled`` and
    ``moved_source``, in that order of precedence; its ``old_*`` / ``new_*`` columns show every change it had.
    Labels are compared by class name, so a renumbered class list does not count as relabelling.

    Attributes
    ----------
    added : DataFrame
        Samples only in the new manifest (its columns: content_hash, label, label_name, source, time_added).
    removed : DataFrame
        Samples only in the old manifest (the old manifest's columns).
    relabelled : DataFrame
        Same content, another label. Columns ``old_label``, ``new_label`` (each an index into its own manifest's
        class list), ``old_label_name``, ``new_label_name``, ``old_source``, ``new_source``, ``old_content_hash``,
        ``new_content_hash``, ``time_added``.
    modified : DataFrame
        Another content hash (the label and source may have changed too); same columns as ``relabelled``.
    moved_source : DataFrame
        Same content and label, another source; same columns as ``relabelled``.
    by_source : DataFrame, indexed by ``source``
        Per source: ``n_old``, ``n_new`` (its samples in each version), ``added``, ``removed``, ``relabelled``,
        ``modified``, ``moved_in``, ``moved_out``, ``changed`` (their sum), ``n_samples`` (distinct ids the source
        held in either version) and ``share_changed`` (= changed / n_samples). A change is counted under the
        sample's new source (its old source for ``removed`` and ``moved_out``). Sorted by share changed, then by
        number changed, highest first.
    classes_added, classes_removed : tuple of str
        Class names only in the new, or only in the old, class list.
    n_old, n_new, n_unchanged : int
    old_created, new_created : Timestamp
    """

    added: pd.DataFrame
    removed: pd.DataFrame
    relabelled: pd.DataFrame
    modified: pd.DataFrame
    moved_source: pd.DataFrame
    by_source: pd.DataFrame
    classes_added: tuple[str, ...]
    classes_removed: tuple[str, ...]
    n_old: int
    n_new: int
    n_unchanged: int
    old_created: pd.Timestamp
    new_created: pd.Timestamp

    @property
    def n_changed(self) -> int:
        """Samples added, removed or changed in any way."""
        return sum(len(t) for t in (self.added, self.removed, self.relabelled, self.modified, self.moved_source))

    def __repr__(self) -> str:
        return (f"ManifestDiff({self.n_old} -> {self.n_new} samples: {len(self.added)} added, "
                f"{len(self.removed)} removed, {len(self.relabelled)} relabelled, {len(self.modified)} modified, "
                f"{len(self.moved_source)} moved source)")

    def to_frame(self) -> pd.DataFrame:
        """Every changed sample in one table indexed by ``sample_id``, with a ``change`` column
        (added, removed, relabelled, modified, moved_source) and the ``old_*`` / ``new_*`` columns."""
        renamed = {
            "added": self.added.rename(columns=lambda c: c if c == "time_added" else f"new_{c}"),
            "removed": self.removed.rename(columns=lambda c: c if c == "time_added" else f"old_{c}"),
            "relabelled": self.relabelled,
            "modified": self.modified,
            "moved_source": self.moved_source,
        }
        parts = [t.assign(change=name) for name, t in renamed.items() if len(t)]
        if not parts:
            return pd.DataFrame(columns=["change", *_CHANGE_COLUMNS], index=pd.Index([], name="sample_id"))
        out = pd.concat(parts)
        return out[["change", *_CHANGE_COLUMNS]]

    def summary(self, *, top: int = 10) -> str:
        """A short report for a person: counts, class list changes and the sources with the most change."""
        if not isinstance(top, (int, np.integer)) or top < 1:
            raise InputError(f"top must be a positive integer; got {top!r}")
        lines = [
            f"Manifest diff: {self.n_old:,} samples (created {self.old_created:%Y-%m-%d %H:%M} UTC) -> "
            f"{self.n_new:,} samples (created {self.new_created:%Y-%m-%d %H:%M} UTC)",
            f"  added         {len(self.added):>10,}",
            f"  removed       {len(self.removed):>10,}",
            f"  relabelled    {len(self.relabelled):>10,}",
            f"  modified      {len(self.modified):>10,}",
            f"  moved source  {len(self.moved_source):>10,}",
            f"  unchanged     {self.n_unchanged:>10,}",
        ]
        if self.classes_added:
            lines.append(f"Classes added: {', '.join(self.classes_added)}")
        if self.classes_removed:
            lines.append(f"Classes removed: {', '.join(self.classes_removed)}")
        if len(self.relabelled):
            pairs = (self.relabelled.groupby(["old_label_name", "new_label_name"]).size()
                     .sort_values(ascending=False).head(5))
            lines.append("Most frequent relabellings: "
                         + ", ".join(f"{a} -> {b} ({k:,})" for (a, b), k in pairs.items()))
        changed = self.by_source[self.by_source["changed"] > 0]
        if len(changed):
            lines.append(f"Sources with the largest share changed (top {min(top, len(changed))} "
                         f"of {len(changed)} with changes):")
            view = changed.head(top)[["n_samples", "added", "removed", "relabelled", "modified", "moved_in",
                                      "moved_out", "share_changed"]].copy()
            view["share_changed"] = view["share_changed"].map("{:.1%}".format)
            lines.extend("  " + line for line in view.to_string().splitlines())
        else:
            lines.append("No changes.")
        return "\n".join(lines)


def diff(old: Manifest, new: Manifest) -> ManifestDiff:
    """What changed from ``old`` to ``new``: samples added, removed, relabelled, modified, moved to another source.

    Samples are matched by ``sample_id``; labels are compared by class name. Vectorised (one hash join of the
    ids), so 10^6 samples take a few seconds.

    Parameters
    ----------
    old, new : Manifest

    Returns
    -------
    ManifestDiff
    """
    for name, m in (("old", old), ("new", new)):
        if not isinstance(m, Manifest):
            raise InputError(f"{name} must be a Manifest; got {type(m).__name__}")
    o, w = old.table, new.table
    pos = w.index.get_indexer(o.index)  # row of each old sample in new, -1 where it was removed
    kept = pos >= 0
    oi = np.flatnonzero(kept)
    wi = pos[oi]
    added_mask = np.ones(len(w), dtype=bool)
    added_mask[wi] = False

    # Labels compare by class name: map each old class index to the new list's index (-1 if the class is gone).
    new_index = {c: i for i, c in enumerate(new.class_names)}
    remap = np.asarray([new_index.get(c, -1) for c in old.class_names], dtype=np.int64)
    label_changed = remap[o["label"].to_numpy()[oi]] != w["label"].to_numpy()[wi]
    hash_changed = np.asarray(o["content_hash"].array.take(oi) != w["content_hash"].array.take(wi), dtype=bool)
    old_src, new_src = o["source"].array.take(oi), w["source"].array.take(wi)
    src_missing_old, src_missing_new = np.asarray(old_src.isna()), np.asarray(new_src.isna())
    source_changed = np.where(src_missing_old | src_missing_new, src_missing_old != src_missing_new,
                              np.asarray(old_src != new_src, dtype=bool))

    any_change = hash_changed | label_changed | source_changed
    co, cw = oi[any_change], wi[any_change]
    changes = pd.DataFrame(
        {
            "old_label": o["label"].to_numpy()[co],
            "new_label": w["label"].to_numpy()[cw],
            "old_label_name": o["label_name"].array.take(co),
            "new_label_name": w["label_name"].array.take(cw),
            "old_source": o["source"].array.take(co),
            "new_source": w["source"].array.take(cw),
            "old_content_hash": o["content_hash"].array.take(co),
            "new_content_hash": w["content_hash"].array.take(cw),
            "time_added": w["time_added"].array.take(cw),
        },
        index=w.index.take(cw),
    )
    h, lab, src = hash_changed[any_change], label_changed[any_change], source_changed[any_change]
    modified = changes[h]
    relabelled = changes[~h & lab]
    moved = changes[~h & ~lab & src]
    added = w[added_mask]
    removed = o[~kept]

    # Distinct ids each source held in either version: its new samples plus old ones that left it.
    left = np.ones(len(o), dtype=bool)
    left[oi] = source_changed
    counts = {
        "n_old": o["source"].value_counts(dropna=False),
        "n_new": w["source"].value_counts(dropna=False),
        "added": added["source"].value_counts(dropna=False),
        "removed": removed["source"].value_counts(dropna=False),
        "relabelled": relabelled["new_source"].value_counts(dropna=False),
        "modified": modified["new_source"].value_counts(dropna=False),
        "moved_in": moved["new_source"].value_counts(dropna=False),
        "moved_out": moved["old_source"].value_counts(dropna=False),
        "_left": o["source"][left].value_counts(dropna=False),
    }
    by_source = pd.concat(counts, axis=1).fillna(0).astype("int64")
    by_source["changed"] = by_source[["added", "removed", "relabelled", "modified", "moved_in",
                                      "moved_out"]].sum(axis=1)
    by_source["n_samples"] = by_source["n_new"] + by_source.pop("_left")
    by_source["share_changed"] = by_source["changed"] / by_source["n_samples"]  # every listed source has >= 1
    by_source.index.name = "source"
    by_source = by_source.sort_values(["share_changed", "changed"], ascending=False, kind="stable")
    by_source = by_source[list(_BY_SOURCE_COLUMNS)]

    old_names, new_names = set(old.class_names), set(new.class_names)
    return ManifestDiff(
        added=added,
        removed=removed,
        relabelled=relabelled,
        modified=modified,
        moved_source=moved,
        by_source=by_source,
        classes_added=tuple(c for c in new.class_names if c not in old_names),
        classes_removed=tuple(c for c in old.class_names if c not in new_names),
        n_old=len(o),
        n_new=len(w),
        n_unchanged=int(len(oi) - any_change.sum()),
        old_created=old.created,
        new_created=new.created,
    )


# ====================================================================== canaries
@dataclass(frozen=True, eq=False, repr=False)
class CanaryReport:
    """A model's behaviour on trusted samples with known labels.

    Attributes
    ----------
    table : DataFrame, one row per canary, indexed by ``sample_id``
        ``expected`` (int, the trusted label), ``baseline`` (nullable int: the baseline's prediction, missing
        without a baseline), ``now`` (int, the model's prediction), ``changed`` (nullable bool: now differs from
        baseline), ``correct`` (bool: now equals expected), and ``expected_name``, ``baseline_name``, ``now_name``.
    per_class : DataFrame, indexed by ``class_name`` (every class of the canaries)
        ``n`` (canaries of that expected class), ``accuracy``, ``baseline_accuracy`` and ``n_changed``
        (NaN / missing where there are no canaries of the class or no baseline).
    accuracy : float
        Share of canaries predicted as expected.
    baseline_accuracy : float or None
    class_names : tuple of str
    """

    table: pd.DataFrame
    per_class: pd.DataFrame
    accuracy: float
    baseline_accuracy: float | None
    class_names: tuple[str, ...]

    @property
    def changed(self) -> pd.DataFrame:
        """The canaries whose prediction differs from the baseline (empty without a baseline)."""
        return self.table[self.table["changed"].fillna(False).astype(bool)]

    @property
    def n_changed(self) -> int | None:
        """Number of changed canaries, or None without a baseline."""
        return None if self.baseline_accuracy is None else len(self.changed)

    def __repr__(self) -> str:
        drift = "" if self.n_changed is None else f", {self.n_changed} changed from baseline"
        return f"CanaryReport({len(self.table)} canaries, accuracy {self.accuracy:.3f}{drift})"

    def summary(self, *, top: int = 10) -> str:
        """A short report for a person: accuracy, the classes that lost the most, the changed canaries."""
        if not isinstance(top, (int, np.integer)) or top < 1:
            raise InputError(f"top must be a positive integer; got {top!r}")
        n = len(self.table)
        correct = int(self.table["correct"].sum())
        lines = [f"Canaries: {n:,}; accuracy {self.accuracy:.1%} ({correct:,} of {n:,})"]
        if self.baseline_accuracy is None:
            lines.append("No baseline given: prediction changes are not known.")
            return "\n".join(lines)
        lines.append(f"Baseline accuracy {self.baseline_accuracy:.1%}; {self.n_changed:,} canaries changed "
                     "prediction")
        if self.n_changed:
            per = self.per_class[self.per_class["n_changed"] > 0].sort_values("n_changed", ascending=False)
            lines.append("Classes with changed canaries: " + ", ".join(
                f"{c} ({int(r.n_changed)} of {int(r.n)}, accuracy {r.baseline_accuracy:.0%} -> {r.accuracy:.0%})"
                for c, r in per.head(top).iterrows()))
            view = self.changed.head(top)[["expected_name", "baseline_name", "now_name"]]
            lines.extend("  " + line for line in view.to_string().splitlines())
        return "\n".join(lines)


def canary_report(
    predict_fn_or_probs: Callable[[Dataset], Any] | np.ndarray | Sequence[int],
    canaries: Dataset,
    *,
    baseline_predictions: np.ndarray | Sequence[int] | Mapping[str, Any] | pd.Series | None = None,
) -> CanaryReport:
    """Accuracy on trusted samples, and which of them changed prediction from a baseline.

    Parameters
    ----------
    predict_fn_or_probs : callable, or array-like of shape (n,) or (n, n_classes)
        The model's predictions on the canaries, in the canaries' order: class indices (or class names), or
        probabilities (rows summing to 1) whose argmax is the prediction. Or a callable that takes the canary
        :class:`~forensics.data.Dataset` and returns such an array, e.g.
        ``lambda ds: forensics.models.predict_proba(model, ds)``.
    canaries : Dataset, n samples
        Trusted samples; their labels are the expected predictions.
    baseline_predictions : array-like of shape (n,) or (n, n_classes), or mapping sample_id -> label, optional
        The baseline (for example the previous model's predictions): aligned like ``predict_fn_or_probs``, or a
        mapping / Series keyed by sample id that covers every canary (other ids are ignored). Labels may be class
        indices or class names.

    Returns
    -------
    CanaryReport
    """
    if not isinstance(canaries, Dataset):
        raise InputError(f"canaries must be a forensics.data.Dataset; got {type(canaries).__name__}")
    names = canaries.class_names
    if callable(predict_fn_or_probs):
        now = _predicted_labels(predict_fn_or_probs(canaries), canaries, "the result of predict_fn_or_probs")
    else:
        now = _predicted_labels(predict_fn_or_probs, canaries, "predict_fn_or_probs")
    baseline = None
    if baseline_predictions is not None:
        if isinstance(baseline_predictions, (Mapping, pd.Series)):
            baseline = _labels_from_mapping(baseline_predictions, canaries)
        else:
            baseline = _predicted_labels(baseline_predictions, canaries, "baseline_predictions")

    expected = canaries.labels
    name_arr = np.asarray(names, dtype=object)
    correct = now == expected
    if baseline is None:
        base_col = pd.array([pd.NA] * len(expected), dtype="Int64")
        base_names = pd.array([pd.NA] * len(expected), dtype="str")
        changed = pd.array([pd.NA] * len(expected), dtype="boolean")
    else:
        base_col = pd.array(baseline, dtype="Int64")
        base_names = pd.array(name_arr[baseline], dtype="str")
        changed = pd.array(baseline != now, dtype="boolean")
    table = pd.DataFrame(
        {
            "expected": expected,
            "baseline": base_col,
            "now": now,
            "changed": changed,
            "correct": correct,
            "expected_name": pd.array(name_arr[expected], dtype="str"),
            "baseline_name": base_names,
            "now_name": pd.array(name_arr[now], dtype="str"),
        },
        index=pd.Index(canaries.ids, name="sample_id", dtype="str"),
    )

    k = len(names)
    n_per = np.bincount(expected, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(expected, weights=correct, minlength=k) / n_per
        if baseline is None:
            base_acc = np.full(k, np.nan)
            n_changed = pd.array([pd.NA] * k, dtype="Int64")
        else:
            base_acc = np.bincount(expected, weights=baseline == expected, minlength=k) / n_per
            n_changed = pd.array(np.bincount(expected, weights=baseline != now, minlength=k).astype(np.int64),
                                 dtype="Int64")
    per_class = pd.DataFrame({"n": n_per, "accuracy": acc, "baseline_accuracy": base_acc, "n_changed": n_changed},
                             index=pd.Index(names, name="class_name", dtype="str"))
    return CanaryReport(
        table=table,
        per_class=per_class,
        accuracy=float(correct.mean()),
        baseline_accuracy=None if baseline is None else float((baseline == expected).mean()),
        class_names=names,
    )


def _predicted_labels(values: Any, canaries: Dataset, name: str) -> np.ndarray:
    """Class indices (n,) from labels, class names or probabilities, aligned with the canaries."""
    n, k = len(canaries), len(canaries.class_names)
    arr = np.asarray(values)
    if arr.ndim not in (1, 2):
        raise InputError(f"{name} must be labels of shape ({n},) or probabilities of shape ({n}, {k}); "
                         f"got shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"{name} has {arr.shape[0]} rows but there are {n} canaries")
    if arr.ndim == 2:
        if arr.shape[1] != k:
            raise InputError(f"{name} has {arr.shape[1]} columns but the canaries have {k} classes "
                             f"{list(canaries.class_names)[:20]!r}")
        if arr.dtype.kind not in "fiu":
            raise InputError(f"{name} must hold numeric probabilities; got dtype {arr.dtype}")
        p = arr.astype(np.float64)
        if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1 or not np.allclose(p.sum(axis=1), 1, atol=1e-3):
            raise InputError(f"{name} must hold probabilities in [0, 1] whose rows sum to 1 (apply a softmax first)")
        return p.argmax(axis=1).astype(np.int64)
    return _label_values(arr, canaries.class_names, name)


def _label_values(arr: np.ndarray, names: tuple[str, ...], name: str) -> np.ndarray:
    k = len(names)
    if arr.dtype.kind in "iu":
        out = arr.astype(np.int64)
    elif arr.dtype.kind in "UO":
        index = {c: i for i, c in enumerate(names)}
        as_str = [str(v) if isinstance(v, (str, np.str_)) else v for v in arr]
        unknown = [v for v in as_str if not isinstance(v, str) or v not in index]
        if unknown:
            raise InputError(f"{name} holds {len(unknown)} value(s) that are neither class indices nor class names, "
                             f"for example {unknown[0]!r}; classes are {list(names)[:20]!r}")
        out = np.asarray([index[v] for v in as_str], dtype=np.int64)
    else:
        raise InputError(f"{name} must be integer class indices, class names or probabilities; "
                         f"got a 1-D array of dtype {arr.dtype}")
    bad = (out < 0) | (out >= k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{name}[{i}] = {int(out[i])} is outside the {k} classes (0..{k - 1})")
    return out


def _labels_from_mapping(mapping: Mapping[str, Any] | pd.Series, canaries: Dataset) -> np.ndarray:
    series = mapping if isinstance(mapping, pd.Series) else pd.Series(dict(mapping), dtype=object)
    series = series.set_axis(series.index.map(str))  # a copy: the caller's Series stays as it was
    if not series.index.is_unique:
        raise InputError("baseline_predictions has a sample id more than once")
    missing = pd.Index(canaries.ids, dtype="str").difference(series.index)
    if len(missing):
        raise InputError(f"baseline_predictions has no prediction for {len(missing)} canary id(s), "
                         f"for example {list(missing[:5])!r}")
    values = series.reindex(pd.Index(canaries.ids, dtype="str")).to_numpy()
    if values.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        values = values.astype(np.int64)
    return _label_values(values, canaries.class_names, "baseline_predictions")


# ====================================================================== input checks
def _check_class_names(class_names: Any) -> tuple[str, ...]:
    if isinstance(class_names, str) or not isinstance(class_names, (Sequence, np.ndarray, pd.Index)):
        raise InputError(f"class_names must be a sequence of str; got {type(class_names).__name__}")
    names = tuple(str(c) for c in class_names)
    if not names:
        raise InputError("class_names is empty; give at least one class")
    if len(set(names)) != len(names):
        raise InputError(f"class_names has duplicates: {list(names)[:20]!r}")
    return names


def _text_column(values: Any, n: int | None, name: str) -> pd.api.extensions.ExtensionArray:
    """A string column without missing or empty values (integers become their decimal text)."""
    if isinstance(values, str):
        raise InputError(f"{name} must be a sequence of str, not one string")
    arr = values if isinstance(values, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)) \
        else np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{name} must be one-dimensional; got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise InputError(f"{name} has {len(arr)} entries but ids has {n}")
    # One C-level pass over the values tells text from numbers and bytes.
    inferred = pd.api.types.infer_dtype(arr, skipna=True)
    if inferred == "integer":
        arr = np.asarray(arr).astype(str)
    elif inferred not in ("string", "empty"):
        raise InputError(f"{name} must be text (or integers); got {inferred} values")
    out = pd.array(arr, dtype="str")
    missing = out.isna()
    if missing.any():
        raise InputError(f"{name}[{int(np.flatnonzero(missing)[0])}] is missing; every sample needs one")
    empty = pd.Series(out).str.len().to_numpy() == 0
    if empty.any():
        raise InputError(f"{name}[{int(np.flatnonzero(empty)[0])}] is empty; every sample needs a non-empty value")
    return out


def _check_label_indices(labels: Any, n: int, k: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"labels must be one-dimensional; got shape {arr.shape}")
    if len(arr) != n:
        raise InputError(f"labels has {len(arr)} entries but ids has {n}")
    if arr.dtype.kind not in "iu":
        raise InputError(f"labels must be integer indices into class_names; got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    bad = (out < 0) | (out >= k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"labels[{i}] = {int(out[i])} is outside class_names (0..{k - 1}, {k} classes); "
                         f"{int(bad.sum())} label(s) are out of range")
    return out


def _check_time(value: Any, name: str) -> pd.Timestamp:
    if value is None:
        return _now()
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a timestamp; got {value!r} ({e})") from e
    if stamp is pd.NaT:
        raise InputError(f"{name} is not a time (NaT)")
    if stamp.tzinfo is None:
        raise InputError(f"{name} must carry a time zone, e.g. pd.Timestamp('2024-05-01 12:00', tz='UTC'); "
                         f"got the naive time {stamp}")
    return stamp.tz_convert("UTC").as_unit("us")


def _now() -> pd.Timestamp:
    return pd.Timestamp(_dt.datetime.now(_dt.timezone.utc)).as_unit("us")


__all__ = [
    "MANIFEST_COLUMNS", "MANIFEST_FORMAT", "MANIFEST_FORMAT_VERSION", "CanaryReport", "Manifest", "ManifestDiff",
    "canary_report", "diff", "load_manifest", "make_manifest", "manifest_from_arrays", "save_manifest",
]
