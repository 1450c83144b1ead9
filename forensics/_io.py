"""Crash-safe file writes and a folder lock.

Every file the toolkit writes goes through :func:`atomic_write_bytes`, :func:`atomic_write_text` or
:func:`atomic_write_with`: the content goes to a temporary file in the same folder, is flushed and fsync'ed, then
renamed over the target with :func:`os.replace`, and the folder itself is fsync'ed so that the rename survives a
power cut. A reader therefore sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ForensicsError

_CHUNK = 1 << 20

#: File checksums written in manifests: blake2b with a 32-byte digest, as 64 hex characters.
DIGEST_NAME = "blake2b"


def file_digest(path: str | os.PathLike) -> str:
    """blake2b checksum (32 bytes, hex) of a file's content, read in chunks."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    """blake2b checksum (32 bytes, hex) of bytes, equal to :func:`file_digest` of a file holding them."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so that renames and new names in it are durable (a no-op where folders cannot be opened)."""
    if os.name != "posix":  # Windows cannot open a folder as a file; NTFS journals renames itself.
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    # Hidden, unique, and ending with the target's own suffix, so that writers which add or infer an extension
    # from the name (numpy.save, pandas) write exactly this file.
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}"


def _create_temp(path: Path) -> tuple[Path, int]:
    tmp = _temp_path(path)
    # 0o666 filtered by the umask, like an ordinary new file (mkstemp would give 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    return tmp, fd


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(e: OSError, path: Path) -> OSError:
    """The same error naming the file the caller asked for (a failed write of a temporary file names nothing, or
    names the temporary file); an error without an errno is left as it is."""
    return OSError(e.errno, e.strerror or str(e), str(path)) if e.errno is not None else e


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically and durably; return the blake2b checksum of the file.

    Raises the ``OSError`` of the failing step, naming ``path``; the target is then unchanged and no temporary file
    is left.
    """
    path = Path(path)
    try:
        tmp, fd = _create_temp(path)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return bytes_digest(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> str:
    """Write ``text`` to ``path`` atomically and durably (UTF-8, newlines as given); return its checksum."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> str:
    """Let ``writer(tmp_path)`` write a temporary file, then move it atomically and durably onto ``path``.

    For writers that take a path, such as ``DataFrame.to_parquet``. The temporary file lies in the same folder,
    is hidden (its name starts with a dot) and ends with ``path``'s suffix. Returns the blake2b checksum of the
    file written. If ``writer`` raises, the target is unchanged, the temporary file is removed and the error
    propagates.
    """
    path = Path(path)
    try:
        tmp, fd = _create_temp(path)
    except OSError as e:
        raise _naming(e, path) from e
    os.close(fd)
    try:
        writer(tmp)
        if not tmp.is_file():
            raise ForensicsError(f"the writer for {path} did not write its temporary file {tmp.name}")
        _fsync_path(tmp)
        digest = file_digest(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return digest


# ------------------------------------------------------------------------------------------------ locking

_local = threading.local()


def _held_locks() -> dict[str, int]:
    if not hasattr(_local, "held"):
        _local.held = {}
    return _local.held


def _try_lock(fd: int) -> bool:
    if os.name == "posix":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        return True
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    if os.name == "posix":
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike, *, timeout: float = 30.0, what: str = "this folder", read_only_ok: bool = False
) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if missing) for the ``with`` block.

    Waits up to ``timeout`` seconds, then raises :class:`~forensics.errors.ForensicsError` naming the lock file
    and the process id that holds it. The lock is also exclusive between two opens in one process, so two
    saves never interleave, whether they come from two processes or two objects.

    With ``read_only_ok`` (for readers only), a folder where the lock file cannot be created (read-only media,
    no write permission) is read without a lock: no writer of ours can be at work there either.
    """
    path = Path(path)
    key = os.path.abspath(path)
    held = _held_locks()
    if key in held:  # re-entered in the same thread (a save that appends, a load that repairs): already ours
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        if read_only_ok and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            yield
            return
        raise
    try:
        deadline = time.monotonic() + max(timeout, 0.0)
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() if os.name == "posix" else ""
                except OSError:
                    holder = ""
                who = f" (held by process {holder})" if holder.isdigit() else ""
                raise ForensicsError(
                    f"{what} is locked by another save or review in progress{who}; waited {timeout:g} s on "
                    f"{path}. Try again when it is done."
                )
            time.sleep(0.05)
        held[key] = 1
        try:
            if os.name == "posix":
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            del held[key]
            _unlock(fd)
    finally:
        os.close(fd)
