"""Write a file so that a crash leaves the old content or the new one, never a partial file.

Temporary file in the same directory, written, flushed and fsynced, renamed over the target,
then the directory fsynced so that the rename itself survives a power cut. Used for recorded
logs, adapted state, drift summaries and reports. A symbolic link is written through (its target
gets the new content, the link stays); a path that is not a regular file (a device such as
`/dev/full`, a pipe, a directory) is refused: renaming over it would replace it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file and move it into place; the file gets 0666 & ~umask."""
    path = Path(path)
    if path.is_symlink():  # written through: the link is not replaced
        path = Path(os.path.realpath(path))
    if path.exists() and not (path.is_file() or path.is_dir()):  # a directory: EISDIR below
        raise OSError(
            errno.EEXIST, "exists and is not a regular file (a device, a pipe); give a file's path", str(path)
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file asked for, not a temporary one or a parent
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; these are ordinary shared files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if exc.errno is not None and exc.filename != str(path):  # a write, fsync or rename: say which file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: Path) -> None:
    """Persist a rename; not possible on every platform (e.g. Windows), hence best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
