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
    [features.<g>.npy]        opened memory-mapped and read-only, its checksum checked on first use
    [dataset.<g>.parquet  images.<g>.npy]   the dataset itself (ids, labels, sources, content hashes, texts),
                              unless saved with include_dataset=False
    .lock                     taken by saves, loads and appends, so that two of them never interleave

``<g>`` is the save's generation. A save writes new files under new names and replaces the manifest last, so a
save that stops midway leaves the previous save loadable; files no manifest names any more are removed after
the new manifest is in place. A file whose content a save would write unchanged (the dataset, the features) keeps
its name and its manifest entry from the generation that wrote it. No file is ever written in place, so a reader
that memory-maps one (:class:`StoredArray`) never sees it change under it through the toolkit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from . import _io
from .data import Dataset, check_ids, content_hash_of
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


class StoredArray:
    """A saved ``.npy`` file opened once, memory-mapped read-only, its checksum checked when :meth:`verify` is called.

    Opening reads the header only: the dtype, the shape and the file's size are known without reading the data,
    and pages are read from disk as they are used. :meth:`verify` reads the file once in bounded chunks (never the
    whole file in memory) through the handle opened here, so the map and the check read the same file even if
    the folder's entry is replaced or removed in between. Until it passes, the array must not be trusted.

    Attributes
    ----------
    array : numpy.memmap
        Read-only: nothing written to it can reach the file.
    path : Path
    digest : str
        The checksum the manifest records for the file.
    verified : bool
    """

    _CHUNK = 1 << 22

    def __init__(self, path: Path, digest: str, handle: IO[bytes], array: np.memmap, offset: int) -> None:
        self.path, self.digest, self.array, self._offset = path, digest, array, offset
        self._handle: IO[bytes] | None = handle
        self.verified = False

    @classmethod
    def open(cls, path: Path, digest: str) -> StoredArray:
        """Open ``path`` (a ``.npy`` file) and map its data read-only; IntegrityError if it cannot be what was saved."""
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise IntegrityError(f"{path.parent}: {path.name} is missing; the folder is incomplete") from None
        try:
            try:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    raise ValueError(f"format version {version} is not one this toolkit writes")
            except (ValueError, SyntaxError, EOFError) as e:
                raise IntegrityError(f"{path} is not a .npy file as this toolkit writes them ({e}); it was changed "
                                     "or replaced after saving") from None
            if dtype.hasobject or fortran_order or not shape:
                raise IntegrityError(f"{path} holds a {dtype} array of shape {shape}"
                                     f"{' in Fortran order' if fortran_order else ''}, not one this toolkit writes")
            offset = handle.tell()
            expected = offset + dtype.itemsize * math.prod(shape)
            size = os.fstat(handle.fileno()).st_size
            if size != expected:
                raise IntegrityError(
                    f"{path} does not match its checksum in {MANIFEST}: it holds {size:,} bytes where its header "
                    f"describes {expected:,}; it was changed, truncated or replaced after saving"
                )
            if expected > offset:
                array = np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape)
            else:  # nothing to map
                array = np.zeros(shape, dtype=dtype)
                array.flags.writeable = False
        except BaseException:
            handle.close()
            raise
        return cls(path, digest, handle, array, offset)

    def verify(self, *, finite: bool = False) -> None:
        """Check the file against its checksum (and, with ``finite``, that every value is finite): IntegrityError
        naming the file if not. Reads the file once in chunks of a few MB; a no-op once passed."""
        if self.verified:
            return
        f = self._handle  # open until the check passes
        itemsize = self.array.dtype.itemsize
        chunk = self._CHUNK - self._CHUNK % itemsize
        h = hashlib.blake2b(digest_size=32)
        bad = False
        f.seek(0)
        h.update(f.read(self._offset))
        while data := f.read(chunk):
            h.update(data)
            if finite and not bad and self.array.dtype.kind == "f":
                usable = len(data) - len(data) % itemsize
                bad = not np.isfinite(np.frombuffer(data[:usable], dtype=self.array.dtype)).all()
        got = h.hexdigest()
        if got != self.digest:
            raise IntegrityError(
                f"{self.path} does not match its checksum in {MANIFEST} ({got[:16]}... instead of "
                f"{self.digest[:16]}...): it was changed, truncated or replaced after saving"
            )
        if bad:
            raise IntegrityError(f"{self.path} holds NaN or infinite values; it was not saved by this toolkit")
        self.verified = True
        self._close()

    def same_file(self, st: os.stat_result) -> bool:
        """Whether the opened file is the one ``st`` describes (same file, size and modification time): the file a
        save just wrote and checksummed, if ``st`` was taken when it was written."""
        mine = os.fstat(self._handle.fileno()) if self._handle is not None else None
        return mine is not None and (mine.st_dev, mine.st_ino, mine.st_size, mine.st_mtime_ns) == (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def mark_verified(self) -> None:
        """Trust the file without reading it: only for the file this process just wrote (see :meth:`same_file`)."""
        self.verified = True
        self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # the map keeps its own reference to the file
            self._handle = None

    def __repr__(self) -> str:
        return (f"StoredArray({self.path.name}, {self.array.dtype} {self.array.shape}, "
                f"{'verified' if self.verified else 'not verified yet'})")


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


def _text_column(t: pd.DataFrame, name: str, table_path: Path) -> np.ndarray:
    """A column of a stored table as an object array of str, or IntegrityError naming it."""
    col = t[name]
    values = col.to_numpy(dtype=object)
    # A string column without missing values holds only str; any other column is checked value by value.
    if not (isinstance(col.dtype, pd.StringDtype) and not col.isna().any()) and not all(
            isinstance(v, str) for v in values):
        raise IntegrityError(f"{table_path}: column {name!r} holds values that are not text")
    return values


def read_dataset(manifest: Mapping[str, Any], table_path: Path, images_path: Path | None) -> Dataset:
    info = manifest["dataset"]
    t = pd.read_parquet(table_path)

    def column(name: str) -> np.ndarray | None:
        return _text_column(t, name, table_path) if name in t.columns else None

    for needed in ("sample_id", "label", "content_hash"):
        if needed not in t.columns:
            raise IntegrityError(f"{table_path}: no column {needed!r}")
    images = None
    if info["kind"] == "image":
        if images_path is None:
            raise IntegrityError(f"{MANIFEST} names an image dataset but no images file")
        try:  # mapped read-only: pages are read as the content hashes below need them, into no private copy
            images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise IntegrityError(f"{images_path} is not an image array as this toolkit writes them: {e}") from e
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


def read_sample_ids(manifest: Mapping[str, Any], table_path: Path) -> tuple[np.ndarray, str]:
    """The sample ids of a stored dataset, checked as a loaded dataset's are, and the dataset's content hash computed
    from the columns it covers (ids, labels, payload hashes, sources): no text or image is read."""
    import pyarrow.parquet as pq

    info = manifest["dataset"]
    present = set(pq.read_schema(table_path).names)
    for needed in ("sample_id", "label", "content_hash"):
        if needed not in present:
            raise IntegrityError(f"{table_path}: no column {needed!r}")
    t = pd.read_parquet(table_path, columns=[c for c in ("sample_id", "label", "content_hash", "source")
                                             if c in present])
    text = {name: _text_column(t, name, table_path) for name in ("sample_id", "content_hash", "source")
            if name in t.columns}
    try:
        ids = check_ids(text["sample_id"], len(t))
    except InputError as e:
        raise IntegrityError(f"the dataset stored in {table_path.parent} is not valid: {e}") from e
    labels = t["label"].to_numpy()
    return ids, content_hash_of(info["kind"], [str(c) for c in info["class_names"]], ids, labels,
                                text["content_hash"], text.get("source"))


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
