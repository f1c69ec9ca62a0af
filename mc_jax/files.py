"""The one home of atomic file writes and of clear messages for storage errors.

Every file a run writes outside orbax (``run.json``, ``final.json``, ``metrics.jsonl`` rewrites, manifests, eval
results, prepared corpora) goes through :func:`write_text_atomic`: the text goes to a temporary sibling, is flushed
and fsynced, renamed over the target (``os.replace``, atomic on POSIX) and the directory is fsynced, so a reader
(or a process killed at any moment) sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename, fsync of the directory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """``data`` as indented, key-sorted JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` or its closest existing ancestor."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def not_a_directory(path: str | os.PathLike[str]) -> Path | None:
    """The first component of ``path`` that exists but is not a directory (``None`` when there is none)."""
    p = Path(path).absolute()
    for part in reversed([p, *p.parents]):
        if part.exists() and not part.is_dir():
            return part
    return None


def unwritable_reason(directory: str | os.PathLike[str]) -> str | None:
    """Why files cannot be created in ``directory`` (or in its closest existing ancestor, where it would be
    created), or ``None`` when they can. Probes with a real temporary file: permission bits do not stop root, a
    read-only mount does."""
    where = nearest_existing(directory)
    if not where.is_dir():
        return f"{where} is not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".mc_jax_probe_", dir=where)
    except OSError as err:
        return f"{where}: {storage_problem(err)}"
    os.close(fd)
    os.unlink(name)
    return None


def storage_problem(err: OSError) -> str:
    """A short description of a storage error (no library details)."""
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return "no space left on the device"
    if code == errno.EROFS:
        return "read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (err.strerror or str(err)).splitlines()[0][:200]


_NO_SPACE = ("No space left on device", "RESOURCE_EXHAUSTED", "Disk quota exceeded")
_READ_ONLY = ("Read-only file system",)


def describe_storage_error(err: BaseException) -> str:
    """A one-line cause for a storage error, also when a library (orbax / tensorstore) wrapped the ``OSError`` in
    another exception and kept only its text."""
    os_err = find_os_error(err)
    if os_err is not None:
        return storage_problem(os_err)
    text = ""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text += f" {err}"
        err = err.__cause__ or err.__context__
    if any(m in text for m in _NO_SPACE):
        return "no space left on the device"
    if any(m in text for m in _READ_ONLY):
        return "read-only file system"
    return text.strip().splitlines()[0][:200] if text.strip() else "unknown storage error"


def find_os_error(err: BaseException | None) -> OSError | None:
    """The first ``OSError`` in ``err``'s chain of causes / contexts (libraries wrap them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and getattr(err, "errno", None) is not None:
            return err
        err = err.__cause__ or err.__context__
    return None


def append_log(path: str | os.PathLike[str], text: str) -> Path | None:
    """Append ``text`` to a log file (best effort: ``None`` when it cannot be written, e.g. a read-only run)."""
    try:
        with open(path, "a") as f:
            f.write(text.rstrip("\n") + "\n")
        return Path(path)
    except OSError:
        return None


__all__ = [
    "append_log", "describe_storage_error", "find_os_error", "nearest_existing", "not_a_directory", "read_json",
    "storage_problem", "unwritable_reason", "write_bytes_atomic", "write_json_atomic", "write_text_atomic",
]
