"""Dataset versions: every sanitized dataset written beside its parent, never over it, and any version restored.

A :class:`VersionStore` is a folder::

    audit.jsonl, audit.jsonl.seal   who created, restored or re-admitted what, and when (hash-chained,
                                    :mod:`forensics.audit`)
    current                         the id of the current version (replaced atomically)
    v0001/                          one folder per version, never changed once written:
        version.json                its id, parent, who, when, note, the plan's policy and dry-run counts, the
                                    dataset's content hash, and the blake2b checksum of every file below
        dataset.parquet [images.npy]              the dataset (as an investigation stores it)
        plan.parquet                              the plan applied to the parent (when there was one)
        quarantine.parquet [quarantine_images.npy]   the samples set aside for review (their evidence: the plan's
                                                     rows)

Quarantined samples stay with the version that set them aside; :meth:`VersionStore.readmit` puts reviewed ones back
as a new version (recorded as ``readmit``). A version is written under a temporary name and renamed into place
whole, then ``current`` is replaced, then the log records it: a process killed at any point leaves the previous
version intact and current (a half-written folder has no version name and is removed by the next commit). Loading or
restoring a version checks every file against its checksum and every sample against its content hash, and refuses,
naming the files, when one was altered."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _io, _store
from .audit import AuditLog, default_who, utc_now
from .data import Dataset, concat
from .errors import InputError, IntegrityError
from .integrity import ManifestDiff, diff, make_manifest
from .remediation import RemediationPlan, Sanitized

_VERSION = re.compile(r"^v(\d{4,})$")
_TMP_PREFIX = ".incoming-"
FORMAT = "poison-forensics dataset version"


class VersionStore:
    """Dataset versions in ``root`` (created when missing), with their lineage and an audit log."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "audit.jsonl"
        if log.is_file() and log.stat().st_size:
            self.audit = AuditLog.load(log, sealed=True)
        elif self.ids():
            raise IntegrityError(f"{self.root} holds versions {self.ids()} but its audit log {log.name} is missing or "
                                 "empty: the history of who wrote and restored them was removed")
        else:
            self.audit = AuditLog(log)

    # ------------------------------------------------------------------------------------------ reading
    @property
    def current(self) -> str | None:
        """The id of the current version (None before the first commit)."""
        path = self.root / "current"
        if not path.is_file():
            return None
        vid = path.read_text(encoding="utf-8").strip()
        if not _VERSION.fullmatch(vid) or not (self.root / vid / "version.json").is_file():
            raise IntegrityError(f"{path} names {vid[:40]!r}, which is not a version of {self.root}")
        return vid

    def ids(self) -> list[str]:
        """Every version's id, oldest first."""
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)),
                      key=lambda name: int(name[1:]))

    def info(self, version: str) -> dict[str, Any]:
        """A version's ``version.json``."""
        path = self._folder(version) / "version.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IntegrityError(f"{path} cannot be read as a version record ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("id") != version:
            raise IntegrityError(f"{path} is not the record of version {version}")
        return meta

    def list(self) -> pd.DataFrame:
        """One row per version: parent, created, who, note, samples, content hash, whether it is current."""
        current = self.current
        rows = [{k: self.info(v).get(k) for k in ("id", "parent", "created", "who", "note", "n", "content_hash")}
                for v in self.ids()]
        table = pd.DataFrame(rows, columns=["id", "parent", "created", "who", "note", "n", "content_hash"])
        table["current"] = table["id"] == current
        return table.set_index("id")

    def load(self, version: str | None = None) -> Dataset:
        """The dataset of a version (default: the current one), after checking its files and content hashes."""
        version = self._resolve(version)
        folder, meta = self._folder(version), self.info(version)
        self._verify(version, meta)
        files = meta["files"]
        ds = _store.read_dataset(meta, folder / files["dataset"]["file"],
                                 folder / files["images"]["file"] if "images" in files else None)
        if ds.content_hash != meta["content_hash"]:
            raise IntegrityError(f"version {version}: the dataset no longer has the content hash it was written with")
        return ds

    def plan(self, version: str) -> pd.DataFrame | None:
        """The plan rows applied to the parent to make ``version`` (None for a version made without a plan)."""
        meta = self.info(version)
        if "plan" not in meta["files"]:
            return None
        self._verify(version, meta)
        return pd.read_parquet(self._folder(version) / meta["files"]["plan"]["file"])

    def diff(self, old: str, new: str) -> ManifestDiff:
        """What changed from ``old`` to ``new``: samples added, removed, relabelled
        (:func:`forensics.integrity.diff`)."""
        return diff(make_manifest(self.load(old)), make_manifest(self.load(new)))

    # ------------------------------------------------------------------------------------------ writing
    def commit(self, data: Dataset | Sanitized, *, parent: str | None = None, note: str = "",
               who: str | None = None) -> str:
        """Write a new version and make it current; returns its id.

        ``data`` is a dataset, or a plan applied to the parent (:meth:`forensics.remediation.RemediationPlan.apply`),
        whose plan and quarantine are stored with it. ``parent`` defaults to the current version.
        """
        sanitized = data if isinstance(data, Sanitized) else None
        ds = sanitized.dataset if sanitized is not None else data
        if not isinstance(ds, Dataset):
            raise InputError(f"data must be a forensics.Dataset or a plan applied to one; got {type(data).__name__}")
        who = default_who() if who is None else str(who)
        with _io.file_lock(self.root / ".lock", what=str(self.root)):  # two commits never interleave
            parent = self.current if parent is None else self._resolve(parent)
            return self._commit_locked(ds, parent, note, who, plan=None if sanitized is None else sanitized.plan,
                                       quarantine=None if sanitized is None else sanitized.quarantine)

    def quarantine(self, version: str | None = None) -> Dataset | None:
        """The samples a version holds aside for review (default: the current version's), or None."""
        version = self._resolve(version)
        meta = self.info(version)
        files = meta["files"]
        if "quarantine" not in files:
            return None
        self._verify(version, meta)
        folder = self._folder(version)
        pixels = folder / files["quarantine_images"]["file"] if "quarantine_images" in files else None
        return _store.read_dataset(meta, folder / files["quarantine"]["file"], pixels)

    def readmit(self, ids: Any, *, note: str = "", who: str | None = None) -> str:
        """Put quarantined samples back after review: a new version, the current one plus these samples (with their
        original labels), the rest of the quarantine carried over; recorded in the audit log. Returns its id."""
        wanted = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        if not wanted:
            raise InputError("readmit needs at least one sample id")
        who = default_who() if who is None else str(who)
        with _io.file_lock(self.root / ".lock", what=str(self.root)):
            current = self._resolve(None)
            held = self.quarantine(current)
            missing = sorted(set(wanted) - set(map(str, held.ids))) if held is not None else sorted(set(wanted))
            if missing:
                raise InputError(f"{len(missing)} sample(s) are not in the quarantine of {current}: "
                                 f"{', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}")
            assert held is not None
            back = np.isin(held.ids.astype(str), wanted)
            data = concat([self.load(current), held.subset(back)])
            rest = held.subset(~back) if (~back).any() else None
            return self._commit_locked(data, current, note or f"readmitted {len(wanted)} after review", who,
                                       quarantine=rest, action="readmit", ids=wanted)

    def _commit_locked(self, ds: Dataset, parent: str | None, note: str, who: str, *,
                       plan: RemediationPlan | None = None, quarantine: Dataset | None = None,
                       action: str = "version", ids: Sequence[str] | None = None) -> str:
        self._remove_incoming()
        existing = self.ids()
        vid = f"v{(int(existing[-1][1:]) + 1) if existing else 1:04d}"
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
        try:
            files = self._write_dataset(tmp, "dataset", "images", ds)
            meta: dict[str, Any] = {"format": FORMAT, "id": vid, "parent": parent, "created": utc_now(), "who": who,
                                    "note": str(note), "n": len(ds), "content_hash": ds.content_hash,
                                    "kind": ds.kind, "class_names": list(ds.class_names)}
            if plan is not None:
                files["plan"] = {"file": "plan.parquet", "blake2b": _io.atomic_write_with(
                    tmp / "plan.parquet", lambda path: _plan_frame(plan).to_parquet(path))}
                meta["policy"] = dict(plan.policy)
                meta["counts"] = {k: int(v) for k, v in plan.counts().items()}
            if quarantine is not None:
                files.update(self._write_dataset(tmp, "quarantine", "quarantine_images", quarantine))
            meta["files"] = files
            meta["dataset"] = {"kind": ds.kind, "class_names": list(ds.class_names)}  # what read_dataset reads
            _io.atomic_write_text(tmp / "version.json", json.dumps(meta, indent=1, ensure_ascii=True) + "\n")
            _io.fsync_dir(tmp)
            os.rename(tmp, self.root / vid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _io.fsync_dir(self.root)
        _io.atomic_write_text(self.root / "current", vid + "\n")
        self.audit.append(action, ids=ids, payload={"version": vid, "parent": parent, "n": len(ds),
                                                   "content_hash": ds.content_hash}, note=note, who=who)
        return vid

    def restore(self, version: str, *, note: str = "", who: str | None = None) -> Dataset:
        """Make ``version`` current again (a rollback), after checking it is intact; returns its dataset."""
        version = self._resolve(version)
        with _io.file_lock(self.root / ".lock", what=str(self.root)):
            ds = self.load(version)
            previous = self.current
            _io.atomic_write_text(self.root / "current", version + "\n")
            self.audit.append("restore", payload={"version": version, "previous": previous}, note=note, who=who)
        return ds

    # ------------------------------------------------------------------------------------------ helpers
    def _resolve(self, version: str | None) -> str:
        if version is None:
            current = self.current
            if current is None:
                raise InputError(f"{self.root} holds no version yet; commit one first")
            return current
        if not isinstance(version, str) or not _VERSION.fullmatch(version) or version not in self.ids():
            raise InputError(f"no version {version!r} in {self.root}; versions: {self.ids()}")
        return version

    def _folder(self, version: str) -> Path:
        if not _VERSION.fullmatch(str(version)):
            raise InputError(f"{version!r} is not a version id (v0001, v0002, ...)")
        return self.root / version

    def _verify(self, version: str, meta: dict[str, Any]) -> None:
        folder = self._folder(version)
        bad = []
        for spec in meta.get("files", {}).values():
            path = folder / str(spec.get("file", ""))
            if path.parent != folder or not path.is_file() or _io.file_digest(path) != spec.get("blake2b"):
                bad.append(path.name)
        if bad:
            raise IntegrityError(f"version {version} was altered after it was written: {', '.join(sorted(bad))} "
                                 "no longer match their checksums; it cannot be loaded or restored")

    @staticmethod
    def _write_dataset(folder: Path, table: str, images: str, ds: Dataset) -> dict[str, dict[str, str]]:
        files = {table: {"file": f"{table}.parquet",
                         "blake2b": _io.atomic_write_with(folder / f"{table}.parquet",
                                                          lambda tmp: _store.dataset_table(ds).to_parquet(tmp))}}
        if ds.images is not None:
            pixels = ds.images
            files[images] = {"file": f"{images}.npy",
                             "blake2b": _io.atomic_write_with(folder / f"{images}.npy",
                                                              lambda tmp: _store.save_npy(tmp, pixels))}
        return files

    def _remove_incoming(self) -> None:
        """Folders of commits that were cut short: never a version (they were not renamed into place)."""
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _plan_frame(plan: RemediationPlan) -> pd.DataFrame:
    out = plan.table.reset_index()
    for column in ("action", "label", "new_label", "source", "rule", "decided_by", "reasons", "sample_id"):
        out[column] = out[column].astype(object).where(out[column].notna(), None).astype("string")
    out["suspicion"] = out["suspicion"].astype(np.float64)
    return out


__all__ = ["VersionStore"]
