"""The on-disk format of a saved investigation: file names, checksums, the manifest, the stored dataset.

A saved folder holds::

    investigation.json        manifest: format and toolkit versions, dataset hash, params, and for every other
                              file its name and blake2b checksum; written last
    audit.<g>.jsonl           the audit log (appended to in place by later decisions; the manifest records the
                              (seq, hash) of its last entry at save time)
    audit.<g>.jsonl.seal      the log's last entry and size, rewritten after every decision (signed with the key
                              of FORENSICS_AUDIT_KEY when set): entries deleted from the end are caught
    samples.<g>.parquet  signals.<g>.parquet  triggers.<g>.parquet  [map.<g>.parquet  clusters.<g>.parquet]
    [patterns.<g>.npz]        what each image trigger candidate adds to an image (patch or signed difference)
    [features.<g>.npy]        read back with allow_pickle=False
    [dataset.<g>.parquet  images.<g>.npy]   the dataset itself (ids, labels, sources, content hashes, texts),
                              unless saved with include_dataset=False
    .lock                     taken by saves, loads and appends, so that two of them never interleave

``<g>`` is the save's generation. A save writes new files under new names and replaces the manifest last, so a
save that stops midway leaves the previous save loadable; files no manifest names any more are removed after
the new manifest is in place.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _io
from .data import Dataset
from .errors import InputError, IntegrityError

logger = logging.getLogger(__name__)

MANIFEST = "investigation.json"
FORMAT = "poison-forensics investigation"
FORMAT_VERSION = 1

# Only names of this form are read or removed in a saved folder: a hostile manifest cannot point elsewhere.
_MANAGED = re.compile(r"^(samples|signals|triggers|patterns|map|clusters|features|dataset|images|audit)\.(\d+)\."
                      r"(parquet|npy|npz|jsonl|jsonl\.seal)$")
_MANAGED_TMP = re.compile(r"^\.((samples|signals|triggers|patterns|map|clusters|features|dataset|images|audit)\.\d+\."
                          r"(parquet|npy|npz|jsonl|jsonl\.seal)|" + re.escape(MANIFEST) + r")\.[0-9a-f]+\.tmp\.\w+$")


def verified_path(folder: Path, files: Mapping[str, Mapping[str, str]], key: str) -> Path:
    """The path of the file the manifest names for ``key``, after checking that it is there and matches its
    checksum."""
    spec = files[key]
    p = folder / spec["file"]
    if not p.is_file():
        raise IntegrityError(f"{folder}: {spec['file']} is missing; the folder is incomplete")
    got = _io.file_digest(p)
    if got != spec["blake2b"]:
        raise IntegrityError(
            f"{p} does not match its checksum in {MANIFEST} ({got[:16]}... instead of "
            f"{spec['blake2b'][:16]}...): it was changed, truncated or replaced after saving"
        )
    return p


def write_file(folder: Path, key: str, generation: int, ext: str, writer: Callable[[Path], Any]) -> dict[str, str]:
    """Write ``<key>.<generation>.<ext>`` atomically with ``writer(temporary path)``; its manifest entry."""
    name = f"{key}.{generation}.{ext}"
    return {"file": name, "blake2b": _io.atomic_write_with(folder / name, writer)}


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest (last: until this rename the previous manifest, and the files it names, are read)."""
    _io.atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")



def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Named arrays, by position (``a0``, ``a1``, ...) with their names in ``names``: a trigger id is not a safe key."""
    names = list(arrays)
    with open(path, "wb") as f:
        np.savez(f, names=np.asarray(names, dtype=str), **{f"a{i}": np.ascontiguousarray(arrays[k])
                                                           for i, k in enumerate(names)})


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """What :func:`save_npz` wrote, read without pickles."""
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        return {name: z[f"a{i}"] for i, name in enumerate(names)}


def dataset_table(ds: Dataset) -> pd.DataFrame:
    cols: dict[str, Any] = {
        "sample_id": pd.Series(ds.ids, dtype="str"),
        "label": ds.labels,
        "content_hash": pd.Series(ds.hashes, dtype="str"),
    }
    if ds.sources is not None:
        cols["source"] = pd.Series(ds.sources, dtype="str")
    if ds.texts is not None:
        cols["text"] = pd.Series(ds.texts, dtype="str")
    if ds.paths is not None:
        cols["path"] = pd.Series(ds.paths, dtype="str")
    return pd.DataFrame(cols)


def read_dataset(manifest: Mapping[str, Any], table_path: Path, images_path: Path | None) -> Dataset:
    info = manifest["dataset"]
    t = pd.read_parquet(table_path)

    def column(name: str) -> np.ndarray | None:
        if name not in t.columns:
            return None
        values = t[name].to_numpy(dtype=object)
        if not all(isinstance(v, str) for v in values):
            raise IntegrityError(f"{table_path}: column {name!r} holds values that are not text")
        return values

    for needed in ("sample_id", "label", "content_hash"):
        if needed not in t.columns:
            raise IntegrityError(f"{table_path}: no column {needed!r}")
    images = None
    if info["kind"] == "image":
        if images_path is None:
            raise IntegrityError(f"{MANIFEST} names an image dataset but no images file")
        images = np.load(images_path, allow_pickle=False)
    try:
        # The content hashes are computed afresh from the payloads and compared with the stored ones below: an
        # edited image or text whose file checksum was edited to match is still caught.
        ds = Dataset(kind=info["kind"], ids=column("sample_id"), labels=t["label"].to_numpy(),
                     class_names=info["class_names"], sources=column("source"), images=images,
                     texts=column("text"), paths=column("path"))
    except InputError as e:
        raise IntegrityError(f"the dataset stored in {table_path.parent} is not valid: {e}") from e
    stored = column("content_hash")
    changed = np.flatnonzero(ds.hashes != stored)
    if len(changed):
        i = int(changed[0])
        raise IntegrityError(
            f"the dataset stored in {table_path.parent}: sample {ds.ids[i][:60]!r} (row {i}) no longer matches its "
            f"stored content hash ({len(changed)} such sample(s)): its {'image' if ds.kind == 'image' else 'text'} "
            "was changed after saving"
        )
    return ds


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{path} is not valid JSON ({e}); the manifest was damaged") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IntegrityError(f"{path} is not a poison-forensics investigation manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(
            f"{path} has format version {m.get('format_version')!r}; this toolkit reads version {FORMAT_VERSION}"
        )
    try:
        ok = (isinstance(m["investigation_id"], str) and isinstance(m["generation"], int)
              and isinstance(m["dataset"]["hash"], str) and isinstance(m["dataset"]["kind"], str)
              and isinstance(m["dataset"]["class_names"], list) and isinstance(m["params"], dict)
              and isinstance(m["files"], dict) and isinstance(m["audit"]["file"], str)
              and isinstance(m["audit"]["head_seq"], int) and isinstance(m["audit"]["head_hash"], str))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise IntegrityError(f"{path} lacks required fields or has fields of the wrong type")
    for key, spec in m["files"].items():
        if (not isinstance(spec, dict) or not isinstance(spec.get("file"), str)
                or not isinstance(spec.get("blake2b"), str)
                or not (match := _MANAGED.fullmatch(spec["file"])) or match.group(1) != key):
            raise IntegrityError(f"{path}: the entry for {key!r} does not name a file of this folder")
    for key in ("samples", "signals", "triggers"):
        if key not in m["files"]:
            raise IntegrityError(f"{path} names no {key} table")
    if ("map" in m["files"]) != ("clusters" in m["files"]):
        raise IntegrityError(f"{path} names a map without clusters or clusters without a map")
    log = _MANAGED.fullmatch(m["audit"]["file"])
    if not log or log.group(1) != "audit":
        raise IntegrityError(f"{path}: the audit log entry does not name a file of this folder")
    return m


def remove_unreferenced(folder: Path, keep: set[str]) -> None:
    """Remove older generations and temporary files of interrupted saves; never any other file."""
    for p in folder.iterdir():
        name = p.name
        if name in keep or not p.is_file():
            continue
        if _MANAGED.fullmatch(name) or _MANAGED_TMP.fullmatch(name):
            try:
                p.unlink()
            except OSError as e:  # a leftover costs disk space only; the save itself is complete
                logger.warning("could not remove the old file %s: %s", p, e)
