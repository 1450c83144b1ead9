"""An append-only, hash-chained audit log in JSON lines.

Each line is one entry, a JSON object with sorted keys and ASCII-only text::

    {"action": "flag", "hash": "...", "ids": ["a", "b"], "note": "patch in corner", "prev": "...",
     "seq": 3, "time": "2025-01-02T10:11:12.123456+00:00", "who": "alice"}

``seq`` counts from 0; ``prev`` is the ``hash`` of the entry before (64 zeros for the first); ``hash`` is the
SHA-256 of the entry's canonical JSON without ``hash`` (sorted keys, no spaces, ASCII). An entry carries ``ids``
(sample ids), a ``payload`` (a JSON object) or both.

Durability: :meth:`AuditLog.append` writes the line and fsyncs the file *before* returning, so a decision is on
disk the moment the call returns (write-ahead). An entry counts once its end of line is on disk.

Integrity: :meth:`AuditLog.load` and :meth:`AuditLog.verify` recompute the chain and raise
:class:`~forensics.errors.IntegrityError` naming the first entry (line number and seq) that breaks it: an edited
entry (its hash no longer matches), a deleted, inserted or reordered entry (seq or prev out of sequence), a line
that is not an entry. Entries deleted from the *end* leave a valid chain; they are caught by the log's *seal*
(``<log>.seal``, rewritten atomically after every append: the (seq, hash) of the last entry and the file's size)
and by an ``anchor``, the (seq, hash) of an entry known to exist, such as the one an investigation's manifest
records at each save.

What this proves, and what not: without a key, the chain and the seal make accidental damage and a careless edit
evident, not a careful forger's: someone able to rewrite the files can rebuild a chain and write a matching seal.
With a key in the environment variable ``FORENSICS_AUDIT_KEY`` the seal carries an HMAC-SHA256 of its head, so
that nobody without the key can forge a seal for a shortened or rewritten log; the key cannot stop a whole older
copy of the folder (log and seal together) from being put back. Keep the key out of the folder.

A torn last line (the process stopped in the middle of an append, so the file does not end with an end of
line) raises an IntegrityError of its own, saying that the last entry is incomplete. ``load(..., repair=True)``
then drops only that torn tail, which no caller was ever told was written, and appends a ``repair`` entry that
records how many bytes were dropped. Nothing else is ever repaired.
"""

from __future__ import annotations

import errno
import getpass
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _io
from .errors import InputError, IntegrityError

logger = logging.getLogger(__name__)

#: ``prev`` of the first entry.
GENESIS = "0" * 64

_REQUIRED = {"seq": int, "time": str, "who": str, "action": str, "note": str, "prev": str, "hash": str}
_OPTIONAL = {"ids": list, "payload": dict}

#: Seconds an append or a save waits for another one on the same folder to finish.
LOCK_TIMEOUT_S = 30.0
#: Environment variable whose value, when set, signs every seal (HMAC-SHA256) and is required to accept one.
KEY_ENV = "FORENSICS_AUDIT_KEY"


def seal_path(log_path: str | os.PathLike) -> Path:
    """Where the seal of the log at ``log_path`` is kept."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name + ".seal")


def _seal_mac(key: bytes, seq: int, h: str, size: int) -> str:
    return hmac.new(key, f"{seq}:{h}:{size}".encode(), hashlib.sha256).hexdigest()


def _key() -> bytes | None:
    key = os.environ.get(KEY_ENV)
    return key.encode() if key else None


def write_seal(log_path: str | os.PathLike, head: tuple[int, str] | None, size: int) -> None:
    """Seal the log at ``log_path``: record its last entry and size atomically beside it (signed with the key of
    :data:`KEY_ENV` when one is set)."""
    if head is None:
        return
    record: dict[str, Any] = {"seq": int(head[0]), "hash": str(head[1]), "size": int(size)}
    key = _key()
    if key is not None:
        record["hmac"] = _seal_mac(key, record["seq"], record["hash"], record["size"])
    _io.atomic_write_text(seal_path(log_path), json.dumps(record, sort_keys=True) + "\n")


def _read_seal(log_path: Path) -> dict[str, Any] | None:
    path = seal_path(log_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        ok = (isinstance(record, dict) and isinstance(record.get("seq"), int) and isinstance(record.get("hash"), str)
              and isinstance(record.get("size"), int))
    except (UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise IntegrityError(f"audit log seal {path} is not a valid seal; it was damaged or replaced")
    key = _key()
    if key is not None:
        mac = record.get("hmac")
        if not isinstance(mac, str) or not hmac.compare_digest(
                mac, _seal_mac(key, record["seq"], record["hash"], record["size"])):
            what = f"carries no signature although {KEY_ENV} is set" if mac is None else \
                f"is not signed with the key in {KEY_ENV}"
            raise IntegrityError(f"audit log seal {path} {what}: the seal was forged or replaced, or the log was "
                                 "sealed without that key")
    return record


def default_who() -> str:
    """The name of the operating-system user, or ``uid:<number>`` where the system has no name for it."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # containers without a passwd entry or USER variable
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def utc_now() -> str:
    """The current time in UTC, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical JSON without its ``hash`` key."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (tuple, set, frozenset)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON-serializable")


def to_json_object(value: Mapping[str, Any], *, name: str) -> dict[str, Any]:
    """``value`` as plain JSON (numpy scalars and arrays and tuples become numbers and lists), or InputError."""
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a dict; got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), default=_json_value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must hold only JSON values (str, numbers, bool, None, lists, dicts): {e}") from e


class AuditLog:
    """An append-only, hash-chained log of decisions (see the module's description of the format).

    Parameters
    ----------
    path : path-like, optional
        The JSON-lines file of a *new* log, created on the first append. It must not exist yet, or be empty;
        open an existing log with :meth:`load`. Without a path the log lives in memory until :meth:`write_to`.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._entries: list[dict[str, Any]] = []
        self._lines: list[bytes] = []
        self.path: Path | None = None
        self._size = 0
        if path is not None:
            path = Path(path)
            if path.exists() and (not path.is_file() or path.stat().st_size > 0):
                raise InputError(f"audit log {path} already exists; open it with AuditLog.load({str(path)!r})")
            self.path = path

    # -------------------------------------------------------------------------------------------- reading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        repair: bool = False,
        anchor: tuple[int, str] | None = None,
        sealed: bool = False,
    ) -> AuditLog:
        """Open an existing log and verify its whole chain.

        Parameters
        ----------
        path : path-like
        repair : bool
            Drop a torn last line (an append cut short by a crash) and record a ``repair`` entry. Without it a
            torn last line raises. Nothing else is repaired.
        anchor : (int, str), optional
            ``(seq, hash)`` of an entry that must be in the log, such as the head recorded at the last save:
            catches entries deleted from the end and a log swapped for another.
        sealed : bool
            The log must have its seal (an investigation's folder records that it does). A seal found is checked
            either way: the log must hold the entry it names, so entries deleted from the end since the last
            decision are caught; with a key in :data:`KEY_ENV` the seal's signature is checked too.

        Raises
        ------
        IntegrityError
            Naming the first entry (line and seq) that breaks the chain, or saying that the last entry is
            incomplete.
        InputError
            If ``path`` is not a file.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"audit log {path} does not exist or is not a file")
        log = cls()
        log.path = path
        with _io.file_lock(_lock_path(path), timeout=LOCK_TIMEOUT_S, what=f"the audit log {path}",
                           read_only_ok=not repair):
            data = path.read_bytes()
            complete, torn = _split(data)
            if torn and not repair:
                raise IntegrityError(
                    f"audit log {path}: the last entry (line {len(complete) + 1}) is incomplete: the file ends "
                    f"without an end of line after {len(torn)} byte(s), as when the program stopped in the "
                    "middle of writing it. That entry was never confirmed as written; load with repair=True "
                    "to drop it"
                )
            log._entries = _verify_lines(complete, path)
            log._lines = [ln + b"\n" for ln in complete]
            log._size = len(data) - len(torn)
            if anchor is not None:
                log._check_anchor(anchor)  # before any repair: a log that fails it is left as it is
            seal = _read_seal(path)
            if seal is None and sealed:
                raise IntegrityError(f"audit log {path}: its seal {seal_path(path).name} is missing, so entries "
                                     "deleted from its end could not be told; it was removed")
            if seal is not None:
                log._check_anchor((seal["seq"], seal["hash"]), known="sealed after the last decision")
            if torn:
                logger.warning("audit log %s: dropping an incomplete last line of %d bytes", path, len(torn))
                with open(path, "r+b") as f:
                    f.truncate(log._size)
                    f.flush()
                    os.fsync(f.fileno())
        if torn:
            log.append("repair", payload={"dropped_bytes": len(torn), "line": len(complete) + 1,
                                          "dropped_blake2b": _io.bytes_digest(torn)})
        return log

    def verify(self) -> int:
        """Re-read the log (from its file when it has one) and verify the chain; return the number of entries.

        Raises IntegrityError naming the entry that breaks the chain, or when the file no longer holds the
        entries this object wrote or read.
        """
        if self.path is None or not self._size:
            entries = _verify_lines([ln[:-1] for ln in self._lines], self.path or "in memory")
            return len(entries)
        data = self.path.read_bytes()
        complete, torn = _split(data)
        if torn:
            raise IntegrityError(
                f"audit log {self.path}: the last entry (line {len(complete) + 1}) is incomplete (no end of line)"
            )
        entries = _verify_lines(complete, self.path)
        for i, (a, b) in enumerate(zip(entries, self._entries)):
            if a["hash"] != b["hash"]:
                raise IntegrityError(
                    f"audit log {self.path}: line {i + 1} (seq {a['seq']}) differs from the entry this session "
                    "holds: the file was replaced"
                )
        if len(entries) < len(self._entries):
            raise IntegrityError(
                f"audit log {self.path}: the file has {len(entries)} entries but {len(self._entries)} were "
                f"written; entries after seq {len(entries) - 1} were deleted"
            )
        return len(entries)

    def _check_anchor(self, anchor: tuple[int, str], *, known: str = "recorded at the last save") -> None:
        seq, h = int(anchor[0]), str(anchor[1])
        where = self.path or "in memory"
        if seq >= len(self._entries):
            raise IntegrityError(
                f"audit log {where}: it ends at seq {len(self._entries) - 1} but entry seq {seq} is known to "
                f"exist ({known}): entries were deleted from its end"
            )
        if self._entries[seq]["hash"] != h:
            raise IntegrityError(
                f"audit log {where}: entry seq {seq} (line {seq + 1}) has hash {self._entries[seq]['hash'][:16]}... "
                f"but {h[:16]}... was {known}: the log was replaced or rewritten"
            )

    # -------------------------------------------------------------------------------------------- writing
    def append(
        self,
        action: str,
        *,
        ids: Iterable[Any] | None = None,
        payload: Mapping[str, Any] | None = None,
        note: str = "",
        who: str | None = None,
    ) -> dict[str, Any]:
        """Add one entry; when the log has a file, the line is written and fsync'ed before this returns.

        Parameters
        ----------
        action : str
            What was done ("flag", "confirm", ...).
        ids : iterable of str, optional
            The sample ids the action applies to.
        payload : dict, optional
            Any other JSON-serializable detail.
        note : str
        who : str, optional
            Defaults to the operating-system user.

        Returns
        -------
        dict
            The entry as written (do not modify it).
        """
        if not isinstance(action, str) or not action:
            raise InputError(f"action must be a non-empty string; got {action!r}")
        if not isinstance(note, str):
            raise InputError(f"note must be a string; got {type(note).__name__}")
        who = default_who() if who is None else who
        if not isinstance(who, str) or not who.strip():
            raise InputError(f"who must be a non-empty string; got {who!r}")
        entry: dict[str, Any] = {"seq": len(self._entries), "time": utc_now(), "who": who, "action": action,
                                 "note": note, "prev": self._entries[-1]["hash"] if self._entries else GENESIS}
        if ids is not None:
            ids = [v.item() if isinstance(v, np.generic) else v for v in ids]
            bad = next((v for v in ids if not isinstance(v, str)), None)
            if bad is not None:
                raise InputError(f"ids must be strings; got {type(bad).__name__} {bad!r}")
            entry["ids"] = ids
        if payload is not None:
            entry["payload"] = to_json_object(payload, name="payload")
        entry["hash"] = entry_hash(entry)
        line = _canonical(entry) + b"\n"
        if self.path is not None:
            self._write_line(line, (entry["seq"], entry["hash"]))
        self._entries.append(entry)
        self._lines.append(line)
        return entry

    def _write_line(self, line: bytes, head: tuple[int, str]) -> None:
        path = self.path
        try:
            with _io.file_lock(_lock_path(path), timeout=LOCK_TIMEOUT_S, what=f"the audit log {path}"):
                self._write_line_locked(path, line, head)
        except FileNotFoundError as e:
            raise IntegrityError(
                f"audit log {path} has disappeared since it was opened; the decision was not recorded"
            ) from e
        except OSError as e:
            if isinstance(e, PermissionError) or e.errno == errno.EROFS:
                raise InputError(
                    f"cannot write the audit log {path} ({e.strerror}); the decision was not recorded. Save the "
                    "investigation to a folder you can write to"
                ) from e
            raise

    def _write_line_locked(self, path: Path, line: bytes, head: tuple[int, str]) -> None:
        if self._size == 0:
            # A new log: the file must not appear behind our back.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_EXCL if not path.exists() else 0)
        else:
            flags = os.O_WRONLY | os.O_APPEND  # never re-create a log that vanished
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o666)
        try:
            size = os.fstat(fd).st_size
            if size != self._size:
                raise IntegrityError(
                    f"audit log {path} was changed by another writer since it was opened ({size} bytes on "
                    f"disk, {self._size} expected); the decision was not recorded. Load it again."
                )
            try:
                view = memoryview(line)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except BaseException:
                # Disk full or an I/O error midway: take the partial line back, so the file stays a valid log.
                try:
                    os.ftruncate(fd, self._size)
                except OSError as e:
                    logger.warning("audit log %s: could not remove a partly written entry (%s); the next load "
                                   "will report it as incomplete", path, e)
                raise
        finally:
            os.close(fd)
        if self._size == 0:
            _io.fsync_dir(path.parent)
        self._size += len(line)
        try:
            write_seal(path, head, self._size)
        except OSError as e:
            # The decision is on disk; a seal left one entry behind only stops catching the deletion of that entry.
            logger.warning("audit log %s: the decision was recorded but its seal could not be updated (%s)", path, e)

    def to_bytes(self) -> bytes:
        """The log's file content: every entry's line, oldest first."""
        return b"".join(self._lines)

    def write_to(self, path: str | os.PathLike) -> str:
        """Write every entry to ``path`` atomically, then make it this log's file; return its checksum."""
        path = Path(path)
        digest = _io.atomic_write_bytes(path, self.to_bytes())
        self.attach(path)
        return digest

    def attach(self, path: str | os.PathLike) -> None:
        """Make ``path``, a file that already holds exactly this log (see :meth:`to_bytes`), the log's file.

        Later appends go to it.
        """
        path = Path(path)
        data = self.to_bytes()
        if not path.is_file() or path.stat().st_size != len(data) or path.read_bytes() != data:
            raise IntegrityError(f"audit log {path} does not hold this log's {len(self)} entries")
        self.path, self._size = path, len(data)
        write_seal(path, self.head, self._size)

    def check_file(self) -> None:
        """Raise IntegrityError unless the log's file still has exactly the size this object wrote or read."""
        if self.path is None:
            return
        try:
            size = self.path.stat().st_size
        except FileNotFoundError as e:
            raise IntegrityError(f"audit log {self.path} has disappeared since it was opened") from e
        if size != self._size:
            raise IntegrityError(
                f"audit log {self.path} was changed by another writer since it was opened ({size} bytes on disk, "
                f"{self._size} expected). Load it again."
            )

    # -------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._entries)

    def __getitem__(self, seq: int) -> dict[str, Any]:
        return self._entries[seq]

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The entries, oldest first (treat them as read-only)."""
        return list(self._entries)

    @property
    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the last entry, or None for an empty log."""
        return (self._entries[-1]["seq"], self._entries[-1]["hash"]) if self._entries else None

    def to_frame(self) -> pd.DataFrame:
        """One row per entry: seq, time, who, action, n_ids, note, payload (as JSON text)."""
        return pd.DataFrame(
            {
                "seq": [e["seq"] for e in self._entries],
                "time": pd.to_datetime([e["time"] for e in self._entries], utc=True),
                "who": [e["who"] for e in self._entries],
                "action": [e["action"] for e in self._entries],
                "n_ids": [len(e.get("ids", ())) for e in self._entries],
                "note": [e["note"] for e in self._entries],
                "payload": [json.dumps(e["payload"]) if "payload" in e else "" for e in self._entries],
            }
        )

    def __repr__(self) -> str:
        return f"AuditLog({len(self)} entries, {self.path or 'in memory'})"


def _lock_path(log_path: Path) -> Path:
    # One lock per folder, shared with the investigation's save, so an append never lands in a file a save is
    # replacing.
    return log_path.parent / ".lock"


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (without their end of line) and the torn tail after the last end of line."""
    cut = data.rfind(b"\n") + 1
    body, torn = data[:cut], data[cut:]
    return (body[:-1].split(b"\n") if body else []), torn


def _verify_lines(lines: list[bytes], where: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    for i, raw in enumerate(lines):
        line_no, expect = i + 1, i
        at = f"audit log {where}: line {line_no}"
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IntegrityError(f"{at} is not a JSON entry ({e}); the file was damaged or edited") from e
        if not isinstance(entry, dict):
            raise IntegrityError(f"{at} is not a JSON object; the file was damaged or edited")
        seq = entry.get("seq")
        at = f"{at} (seq {seq!r})"
        for key, typ in _REQUIRED.items():
            if not isinstance(entry.get(key), typ) or isinstance(entry.get(key), bool):
                raise IntegrityError(f"{at}: {key!r} is missing or not a {typ.__name__}; the entry was edited")
        for key, typ in _OPTIONAL.items():
            if key in entry and not isinstance(entry[key], typ):
                raise IntegrityError(f"{at}: {key!r} is not a {typ.__name__}; the entry was edited")
        unknown = set(entry) - set(_REQUIRED) - set(_OPTIONAL)
        if unknown:
            raise IntegrityError(f"{at}: unknown keys {sorted(unknown)!r}; the entry was edited")
        try:
            recomputed = entry_hash(entry)
        except ValueError as e:  # NaN or infinity smuggled into a payload
            raise IntegrityError(f"{at}: not canonical JSON ({e}); the entry was edited") from e
        if recomputed != entry["hash"]:
            raise IntegrityError(f"{at}: its hash does not match its content; the entry was edited")
        if seq != expect:
            raise IntegrityError(
                f"{at}: seq {seq} where {expect} was expected; an entry was deleted or inserted, or the lines "
                "were reordered"
            )
        if entry["prev"] != prev:
            raise IntegrityError(
                f"{at}: 'prev' does not match the hash of the entry before it"
                + (f" (line {line_no - 1}, seq {expect - 1}); that entry was edited or replaced" if i else
                   "; the first entry must follow the genesis value")
            )
        prev = entry["hash"]
        entries.append(entry)
    return entries
