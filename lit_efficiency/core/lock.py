"""An output-directory lock: one run at a time per run directory.

The lock is a file ``.lock`` in the directory holding ``{"pid": ..., "host": ...}``, created with ``O_EXCL`` (atomic
on local file systems). A second run on the same directory is refused with one line naming the holder; a lock left
by a dead process of this host (``kill -9``, power loss) is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from lit_efficiency.core.errors import ConfigError

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class OutputLock:
    """Hold ``<folder>/.lock`` while a run writes into ``folder`` (a context manager).

    Args:
        folder: the run directory (must exist).
    """

    NAME = LOCK_NAME

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._held = False

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:  # empty or half-written: a run taking the lock right now, or a crash mid-write
            try:
                return time.time() - self.path.stat().st_mtime > 5.0
            except FileNotFoundError:
                return True
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)

    def acquire(self) -> None:
        """Take the lock, taking over a stale one.

        Raises:
            ConfigError: another live run holds it (the message names its pid and host and the lock file).
        """
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        for _ in range(2):  # second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                holder = self._holder()
                if not self._stale(holder):
                    who = f"pid {holder['pid']} on {holder['host']}" if holder else "a run starting now"
                    raise ConfigError(
                        f"{self.path.parent} is in use by another run ({who}, "
                        f"lock file {self.path}); wait for it to finish or choose another output directory"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "wb") as handle:
                handle.write(me)
            self._held = True
            return
        raise ConfigError(f"{self.path}: could not take the lock (another run raced for it); rerun the command")

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
