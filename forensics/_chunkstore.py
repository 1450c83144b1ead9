"""Where extracted rows go, a chunk at a time: memory, or a resumable store of ``.npy`` files on disk.

:func:`forensics.activations.extract_activations` computes its rows in chunks (locally or on a cluster's workers)
and hands each finished chunk to a sink. :class:`MemorySink` copies it into arrays in memory. :class:`ChunkStore`
writes it into preallocated ``.npy`` files with positioned writes (a full disk raises an ``OSError``, where a
memory map would crash the process), then records the chunk, with a checksum of its bytes, in ``progress.json``
(written atomically). A run that stops (a killed process, a dead worker, a full disk) leaves finished chunks
recorded and unfinished ones not: the next run with the same key skips the former, after checking their
checksums, and recomputes the latter. Nothing half-written is ever read as done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_bytes
from .errors import InputError

logger = logging.getLogger(__name__)

#: Bumped when the layout of a store's files changes; a store of another format is started afresh.
STORE_FORMAT = 1

#: A chunk's arrays: name -> array whose first axis is the chunk's rows.
Chunk = Mapping[str, np.ndarray]


def _chunk_digest(arrays: Chunk) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def _specs(arrays: Chunk, n: int) -> dict[str, dict[str, Any]]:
    """Shape and dtype of the full arrays, from one chunk's."""
    return {name: {"shape": [n, *a.shape[1:]], "dtype": a.dtype.str} for name, a in arrays.items()}


def format_bytes(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class StoreFullError(InputError):
    """The disk under an activation store has less free space than the store needs."""


class MemorySink:
    """Chunks copied into arrays of ``n`` rows in memory."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrays: dict[str, np.ndarray] = {}

    def done(self, index: int) -> bool:
        return False

    def put(self, index: int, start: int, arrays: Chunk) -> None:
        for name, a in arrays.items():
            if name not in self.arrays:
                self.arrays[name] = np.empty((self.n, *a.shape[1:]), a.dtype)
            self.arrays[name][start : start + len(a)] = a

    def finish(self) -> dict[str, np.ndarray]:
        for a in self.arrays.values():
            a.flags.writeable = False
        return self.arrays


class ChunkStore:
    """A resumable on-disk store of ``n`` rows in chunks ``[(start, stop), ...]``, keyed by ``key``.

    Parameters
    ----------
    folder : Path
        Created when missing. Holds one ``<name>.npy`` per array and ``progress.json``.
    key : str
        What the rows are (the model, the data, the options): a store with another key is started afresh.
    chunks : sequence of (start, stop)
        The chunks that tile ``range(n)``.
    """

    def __init__(self, folder: Path, *, key: str, chunks: Sequence[tuple[int, int]]) -> None:
        self.folder = folder
        self.key = key
        self.chunks = [(int(a), int(b)) for a, b in chunks]
        self.n = self.chunks[-1][1] if self.chunks else 0
        self.specs: dict[str, dict[str, Any]] | None = None
        self.finished: dict[int, str] = {}  # chunk index -> checksum of its bytes
        self._resume()

    # -- reading back what a previous run left ------------------------------------------------------------------
    def _resume(self) -> None:
        path = self.folder / "progress.json"
        if not path.is_file():
            return
        try:
            progress = json.loads(path.read_text(encoding="utf-8"))
            if (progress.get("format") != STORE_FORMAT or progress.get("key") != self.key
                    or [tuple(c) for c in progress.get("chunks", [])] != self.chunks):
                logger.info("activation store %s holds other rows; starting afresh", self.folder)
                return
            specs = {str(k): {"shape": list(v["shape"]), "dtype": str(v["dtype"])}
                     for k, v in progress["specs"].items()}
            finished = {int(i): str(d) for i, d in progress["finished"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("activation store %s: unreadable progress.json (%s); starting afresh", self.folder, e)
            return
        self.specs = specs
        for index, digest in sorted(finished.items()):
            # A chunk counts only when its bytes are those recorded: a file cut short or edited is recomputed.
            try:
                arrays = self._read_chunk(index)
            except (OSError, ValueError) as e:
                logger.warning("activation store %s: chunk %d unreadable (%s); recomputing it", self.folder, index, e)
                continue
            if _chunk_digest(arrays) == digest:
                self.finished[index] = digest
            else:
                logger.warning("activation store %s: chunk %d does not match its checksum; recomputing it",
                               self.folder, index)
        if self.finished:
            logger.info("activation store %s: resuming with %d of %d chunks done", self.folder, len(self.finished),
                        len(self.chunks))
        else:
            self.specs = None  # nothing usable (files missing or damaged): the files are made afresh

    def _read_chunk(self, index: int) -> dict[str, np.ndarray]:
        start, stop = self.chunks[index]
        out = {}
        for name in self.specs or {}:
            a = np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            out[name] = np.array(a[start:stop])
        return out

    def done(self, index: int) -> bool:
        return index in self.finished

    # -- writing ------------------------------------------------------------------------------------------------
    def bytes_needed(self, specs: Mapping[str, Mapping[str, Any]]) -> int:
        return sum(int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize for s in specs.values())

    def _open(self, specs: dict[str, dict[str, Any]]) -> None:
        """Create the files for arrays of these shapes, after checking that the disk can hold them."""
        if self.specs == specs:
            return  # resuming: the files are there
        if self.finished:
            logger.warning("activation store %s: the rows now have other shapes; starting afresh", self.folder)
        self.finished = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "progress.json").unlink(missing_ok=True)
        needed = self.bytes_needed(specs)
        present = sum(p.stat().st_size for p in self.folder.glob("*.npy"))
        free = shutil.disk_usage(self.folder).free + present
        if needed > free:
            raise StoreFullError(
                f"the activation store {self.folder} needs {format_bytes(needed)} for {self.n} rows; its disk has "
                f"{format_bytes(free)} free. Free space, or pass another cache_dir"
            )
        for name, spec in specs.items():
            header = {"descr": spec["dtype"], "fortran_order": False, "shape": tuple(spec["shape"])}
            with open(self.folder / f"{name}.npy", "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                f.truncate(f.tell() + int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize)
        self.specs = specs
        self._write_progress()

    def put(self, index: int, start: int, arrays: Chunk) -> None:
        """Write one finished chunk, then record it as done."""
        if self.chunks[index][0] != start:
            raise ValueError(f"chunk {index} starts at row {self.chunks[index][0]}, not {start}")
        self._open(_specs(arrays, self.n))
        assert self.specs is not None
        for name, a in arrays.items():
            spec = self.specs[name]
            row_bytes = int(np.prod(spec["shape"][1:], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
            path = self.folder / f"{name}.npy"
            data = np.ascontiguousarray(a, dtype=np.dtype(spec["dtype"])).tobytes()
            try:
                with open(path, "r+b") as f:
                    f.seek(_data_offset(f) + start * row_bytes)
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise OSError(e.errno, f"could not write chunk {index} into the activation store {self.folder} "
                              f"({e.strerror}); the chunks finished before it ({len(self.finished)}) are kept, "
                              "and a rerun resumes from them", str(path)) from e
        self.finished[index] = _chunk_digest(arrays)
        self._write_progress()

    def _write_progress(self) -> None:
        text = json.dumps({"format": STORE_FORMAT, "key": self.key, "chunks": self.chunks, "specs": self.specs,
                           "finished": {str(i): d for i, d in sorted(self.finished.items())}}, indent=1)
        atomic_write_bytes(self.folder / "progress.json", text.encode())

    def finish(self) -> dict[str, Path]:
        """The files, once every chunk is done."""
        missing = [i for i in range(len(self.chunks)) if i not in self.finished]
        if missing:
            raise RuntimeError(f"activation store {self.folder}: chunks {missing[:5]} are not done")
        return {name: self.folder / f"{name}.npy" for name in self.specs or {}}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _data_offset(f: Any) -> int:
    """Where the array data starts in an open ``.npy`` file."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(f)
    else:
        np.lib.format.read_array_header_2_0(f)
    return f.tell()


__all__ = ["ChunkStore", "MemorySink", "StoreFullError", "format_bytes"]
