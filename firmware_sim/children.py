"""Child processes that a terminal's Ctrl-C does not reach, and that do not outlive their parent.

The parent decides the order of a shutdown (devices, then agents, then the broker), so its
children live in their own session, away from the terminal's SIGINT; and on Linux each one is
sent SIGTERM by the kernel if the parent dies without cleaning up (SIGKILL, a crash).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None  # loaded here, not after fork


def _term_with_parent() -> None:  # runs in the child between fork and exec: nothing that may lock
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def child_options() -> dict[str, Any]:
    """Keyword arguments for `subprocess.Popen`."""
    if _LIBC is not None:
        return {"start_new_session": True, "preexec_fn": _term_with_parent}
    return {"start_new_session": True}
