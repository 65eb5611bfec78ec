"""One process per directory: a second agent on one state directory, or a second collector on one
dataset, would interleave the first one's checkpoints, spool and status, or store every summary
twice, and neither would notice.

An exclusive `flock` on a hidden file in the directory, held for the life of the process. The
kernel releases it when the process ends, however it ends (kill -9 included), so no stale lock is
ever left to clear by hand. The holder writes who it is into the file, for the other's message.
Advisory and local: a network file system may not honour it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".edge-ttt.lock"  # hidden: pyarrow's dataset discovery skips it


class DirInUse(RuntimeError):
    """Another live process holds the directory."""


class DirLock:
    """Held from `hold` until `release` or the end of the process; dropping the object does not
    release it (the descriptor stays open)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1


def hold(directory: Path, owner: str, key: str, shared: bool = False) -> DirLock:
    """Lock `directory` (made if missing) for this process, or raise `DirInUse` naming the process
    that has it and `key`, the setting that would give this one a directory of its own. `shared`
    holders (collectors that split one subscription between them) exclude only exclusive ones.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> d = Path(tmp.name)
    >>> first = hold(d, "agent 'a'", "state.dir")
    >>> try:
    ...     hold(d, "agent 'b'", "state.dir")
    ... except DirInUse as exc:
    ...     print(str(exc).split(" (pid")[0].endswith("is in use by agent 'a'"))
    True
    >>> first.release()
    >>> hold(d, "agent 'b'", "state.dir").release()
    >>> tmp.cleanup()
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise DirInUse(
            f"{directory} is in use by {holder}; stop that one, or give this one a directory of "
            f"its own ({key})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)  # shared holders each write themselves here: the file names the latest
    os.write(fd, f"{owner} (pid {os.getpid()})\n".encode())
    return DirLock(fd)
