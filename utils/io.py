"""Atomic file writes: a reader never sees a half-written file.

Every file a run writes (checkpoints, results.json, scores, pseudo labels, list files)
goes through ``atomic_path``: the data is written to a temporary file in the same
folder, flushed and fsynced, then renamed over the target in one step. A write that fails
(a full disk, a read-only folder) raises :class:`utils.errors.OutputError` naming the file
and what to do, and leaves the target as it was; the temporary files a killed write leaves
behind (``.<name>.<8 random characters>.tmp``) are found by :func:`stale_temp_files`.
"""
import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path

from utils.errors import OutputError

# what mkstemp(prefix=".<name>.", suffix=".tmp") names a temporary file
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space (or choose an --output on another disk) and run again",
    errno.EDQUOT: "the disk quota is exhausted: free some space (or choose another --output) and run again",
    errno.EROFS: "the file system is read-only: choose a writable --output",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another --output",
    errno.EEXIST: "a part of the path is a file, not a folder: choose another --output",
    errno.ELOOP: "the path is a symbolic link: a run writes only plain files inside its output folder",
    errno.EISDIR: "a folder stands where the run writes a file: move it away or choose another --output",
    errno.ENAMETOOLONG: "the path is longer than the file system allows: choose a shorter --output",
}

# errors only a write can get (a full disk, a quota, a read-only file system), never the code's fault
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def output_error(path, err: OSError) -> OutputError:
    """The OutputError of a failed write of ``path``: the file, the system's reason, what to do."""
    reason = err.strerror or str(err)
    advice = _ADVICE.get(err.errno, "check the disk and the folder's permissions, then run again")
    error = OutputError(f"cannot write {path}: {reason}; {advice}")
    error.errno = err.errno
    return error


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was; an OSError
    (of the caller's write into the temporary file too) becomes an OutputError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise output_error(path, err) from err
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as err:
        raise output_error(path, err) from err
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2):
    """Write ``obj`` as JSON (numpy scalars/arrays converted) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def stale_temp_files(folder, skip=lambda directory: False) -> list:
    """The temporary files of killed atomic writes anywhere under ``folder`` (symbolic links
    to folders are not followed; a folder for which ``skip`` is true is not entered)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not skip(Path(root) / d)]
        found.extend(Path(root) / name for name in files if TEMP_NAME.match(name))
    return sorted(found)
