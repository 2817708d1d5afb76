"""Workers die with their parent: the kernel sends them SIGTERM when the supervising process exits."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PARENT_PID_ENV = "COVID_CXR_SERVE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: str | None) -> None:
    """Ask Linux to SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG); exit at once if
    the parent `parent_pid` is already gone. Elsewhere, log that orphans need an outside supervisor."""
    if not parent_pid:
        return
    if not sys.platform.startswith("linux"):
        log.warning("workers cannot follow their parent on %s; use a supervisor", sys.platform)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
    if str(os.getppid()) != parent_pid:  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)
