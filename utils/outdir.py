"""Claiming an output folder before a run writes anything into it.

:func:`claim_output` is the first thing every run (the stages, infer.py, the demo) does with
its ``--output``:

1. the folder is created, or refused with an :class:`~utils.errors.OutputError` that names it
   and says what to do when it is a file, read-only or on a full disk (instead of a traceback
   from the first log line or checkpoint written there);
2. it is locked for the life of the process: ``OUTPUT/.frameshield.lock`` is held with a POSIX
   record lock (``fcntl.lockf``), so a second run started on the same folder is refused (the
   lock file names the holder), and a killed run (even SIGKILL) leaves nothing stuck: the kernel
   drops the lock with the process. Unlike ``flock``, the lock is not inherited by forked
   data-loader workers, which may outlive a killed main process for a few seconds. The lock is
   re-entrant within one process (tests and the demo run several stages in one interpreter);
3. under the lock, the temporary files of killed atomic writes (``.<name>.<random>.tmp``,
   see utils/io.py) anywhere in the folder are removed; a subfolder locked by another live run
   (``OUTPUT/test`` of an evaluation running now) is left alone.

4. a symbolic link inside the folder that leads outside it (``checkpoints/``, ``plots/``,
   ``tb/``, a log file, a video's folder of infer.py) is refused: the run would write, rename
   or delete files through it, outside its --output. Links that stay inside are fine, and so
   is an --output that is itself a link (the run's folder is where it leads).

A file system without locks (some network mounts) gets a warning, not a refusal.
"""
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from utils.errors import OutputError
from utils.io import output_error, stale_temp_files

LOCK_NAME = ".frameshield.lock"
_held: dict = {}  # resolved folder -> fd of its lock file, held until this process ends or releases it
_BUSY = (errno.EACCES, errno.EAGAIN)  # what lockf raises when another process holds the lock


def check_output_path(folder) -> None:
    """OutputError when the path of ``folder`` cannot even be looked up (longer than the file
    system allows, a loop of links, no permission); a folder that does not exist yet is fine."""
    try:
        os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as err:
        raise output_error(folder, err) from err


def prepare_output(folder) -> Path:
    """``folder`` created (parents too) and checked to be a folder; OutputError otherwise."""
    folder = Path(folder)
    check_output_path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file, not a folder; choose another --output "
                          "(or move the file away)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(folder, err) from err
    return folder


def _open_lock(folder: Path) -> int:
    """The lock file's descriptor (created; never through a symbolic link)."""
    path = folder / LOCK_NAME
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise output_error(path, err) from err


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


def lock_output(folder, what: str) -> str | None:
    """Hold the lock of ``folder`` for this process's life; OutputError when another run holds it.

    ``what`` (e.g. "main.py training") is written into the lock file for the other run's error
    message. Returns a warning to log when the file system cannot lock, else None.
    """
    folder = prepare_output(folder)
    key = str(folder.resolve())
    if key in _held:
        return None
    fd = _open_lock(folder)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in _BUSY:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"output folder {folder} is in use by another run ({holder}); wait until it "
                              "ends or choose another --output (its lock goes away with that process, "
                              "even when it is killed)") from None
        os.close(fd)
        if err.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            return (f"the file system of {folder} cannot lock files ({err.strerror}): a second run started "
                    "on this folder at the same time would not be detected")
        raise output_error(folder / LOCK_NAME, err) from err
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {what}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    except OSError as err:
        os.close(fd)
        raise output_error(folder / LOCK_NAME, err) from err
    _held[key] = fd
    return None


def release_output(folder) -> None:
    """Give up this process's lock of ``folder`` (nothing when it holds none)."""
    fd = _held.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)


def _locked_elsewhere(directory: Path) -> bool:
    """Whether ``directory`` holds a lock file that another live process holds now."""
    path = directory / LOCK_NAME
    if str(directory.resolve()) in _held or not path.is_file() or path.is_symlink():
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # cannot tell: leave it alone
    try:  # (closing fd drops this process's locks of that file: it holds none, see _held above)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def remove_stale_temp_files(folder) -> list:
    """Delete the temporary files of killed writes under ``folder`` (call it holding the lock);
    returns them. Subfolders locked by another live run are skipped."""
    stale = stale_temp_files(folder, skip=_locked_elsewhere)
    for file in stale:
        try:
            file.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise output_error(file, err) from err
    return stale


def links_out_of(folder) -> list:
    """(link, target) of every symbolic link under ``folder`` (links not followed) whose target
    lies outside the folder's real path."""
    root = Path(folder).resolve()
    found = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(top) / name
            if path.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    found.append((path, target))
    return sorted(found)


def claim_output(folder, what: str) -> list:
    """Create, lock, check and clean ``folder`` (module docstring); returns the lines to log
    (a lock warning, the stale temporary files removed)."""
    notes = []
    held_before = str(Path(folder).resolve()) in _held
    warning = lock_output(folder, what)
    if warning:
        notes.append(warning)
    outside = links_out_of(folder)
    if outside:
        if not held_before:
            release_output(folder)
        link, target = outside[0]
        more = f" (and {len(outside) - 1} more: {', '.join(str(p) for p, _ in outside[1:4])})" if len(outside) > 1 else ""
        raise OutputError(f"{link} is a symbolic link to {target}, outside the output folder {folder}{more}; a run "
                          "writes, replaces and deletes files only inside its --output: replace the link by a real "
                          "file or folder, or give an --output on the disk it points to")
    for file in remove_stale_temp_files(folder):
        notes.append(f"removing {file}, left over from an interrupted write")
    return notes
