"""Run-directory locks: at most one live process works in a run directory.

A lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<run_dir>/.lock``. The operating system releases it when the holder
dies (even by ``kill -9``), so a stale lock never blocks a restart. ``da sweep`` claims a run's directory before
launching it and hands the locked descriptor to its ``da fit`` child (inherited, named by ``$DA_RUN_LOCK_FD``), so
the pair holds one lock; ``da fit`` started by hand takes the lock itself and refuses a directory another live
process holds. A process that takes a lock twice (the ``inprocess`` launcher, then ``da fit`` inside it) gets the one
it holds. Without ``fcntl`` (Windows) locking is a no-op.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Dict, Optional, Union

from da.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
#: an inherited file descriptor that holds the lock of the run directory this process works in
ENV_FD = "DA_RUN_LOCK_FD"

PathLike = Union[str, "os.PathLike[str]"]
_HELD: Dict[str, int] = {}  # resolved run directory -> descriptor this process holds the lock with
_GUARD = threading.Lock()


class RunDirBusy(UserError):
    """The run directory is held by another live process."""


def _key(run_dir: PathLike) -> str:
    return str(Path(run_dir).resolve())


def holder(run_dir: PathLike) -> Optional[int]:
    """The pid written into the lock file by the process that took the lock (``None`` when unknown)."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def try_lock(run_dir: PathLike) -> Optional[int]:
    """Take the lock of ``run_dir`` without waiting; return its descriptor, or ``None`` when another process holds it.

    A lock this process already holds is returned as is.
    """
    key = _key(run_dir)
    with _GUARD:
        if key in _HELD:
            return _HELD[key]
        path = Path(key) / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):
                os.close(fd)
                return None
            except OSError as err:  # a file system without flock (some NFS mounts): run unlocked, and say so
                import warnings

                warnings.warn(f"cannot lock {path} ({err}); runs in {Path(key).parent} are not protected against "
                              "a second process", stacklevel=2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = fd
        return fd


def held_elsewhere(run_dir: PathLike) -> bool:
    """Whether another live process holds the lock of ``run_dir`` (taken and dropped at once to find out)."""
    if _key(run_dir) in _HELD or not (Path(run_dir) / LOCK_FILE).is_file():
        return False
    if try_lock(run_dir) is None:
        return True
    release(run_dir)
    return False


def release(run_dir: PathLike) -> None:
    """Release the lock this process holds on ``run_dir`` (nothing when it holds none)."""
    with _GUARD:
        fd = _HELD.pop(_key(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file releases the flock


def inherited(run_dir: PathLike) -> bool:
    """Whether ``$DA_RUN_LOCK_FD`` is an open descriptor of ``<run_dir>/.lock`` (handed down by a sweep)."""
    fd = os.environ.get(ENV_FD)
    if not fd or not fd.isdigit():
        return False
    try:
        st, want = os.fstat(int(fd)), os.stat(Path(run_dir) / LOCK_FILE)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)


def lock_for_run(run_dir: PathLike) -> bool:
    """Hold ``run_dir`` for this run: True when this call took the lock (release it with :func:`release`), False
    when it was already held by this process or handed down by a sweep; :class:`RunDirBusy` when another live
    process holds it."""
    if inherited(run_dir) or _key(run_dir) in _HELD:
        return False
    if try_lock(run_dir) is None:
        pid = holder(run_dir)
        raise RunDirBusy(f"run directory {run_dir} is in use by another live process"
                         + (f" (pid {pid})" if pid else "") + "; wait for it to end, stop it, or give another --run_dir")
    return True
