"""One process at a time in a run folder, and one builder of each teacher cache: an OS lock that names its holder.

The lock is ``fcntl.flock`` on a lock file (``<run>/.lock``). The kernel releases it when the holding process ends,
however it ends (SIGKILL included), so a lock can never outlive its holder and nothing has to judge whether a
recorded process is still alive. The file also holds the holder's pid, host and start time, for the message that
refuses a second process, and a file found with a holder written in it but not locked was left by a process that
died: its lock is taken over, and :attr:`FolderLock.taken_over` says whose it was (the run's log records it). A
holder that ends normally removes the file.

Locks work between processes on one machine, and between machines on a network file system whose locks do
(NFSv4; Linux maps ``flock`` to its byte-range locks there).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from respkd import preemption
from respkd.errors import RespkdError
from respkd.files import writing

__all__ = ["LOCK_NAME", "FolderLock", "Holder"]

LOCK_NAME = ".lock"
_TRIES = 4  # attempts before a lock counts as held (a check_free elsewhere holds it for microseconds)


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock."""

    pid: int | None
    host: str
    since: str  # local time, YYYY-MM-DD HH:MM:SS

    def describe(self) -> str:
        return f"process {self.pid if self.pid is not None else '?'} on host {self.host} since {self.since}"

    @classmethod
    def read(cls, fd: int) -> "Holder | None":
        """The holder written in an open lock file; None when it is empty (or not a holder: written half)."""
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode() or "null")
            return cls(data.get("pid"), str(data.get("host", "?")), str(data.get("since", "?")))
        except (ValueError, AttributeError, UnicodeDecodeError, OSError):
            return None

    @classmethod
    def me(cls) -> "Holder":
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"))


class FolderLock:
    """The lock file ``path``, held by at most one process; ``what`` names what it protects in messages (e.g.
    ``run 'x'``)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self.fd: int | None = None
        self.taken_over: Holder | None = None  # the holder that died holding it, when this process took it over
        self.blocker: Holder | None = None  # who held it when try_acquire last failed (None: not written yet)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _refusal(self, holder: Holder | None) -> RespkdError:
        who = holder.describe() if holder is not None else "another process"
        return RespkdError(f"{self.what} is in use by {who} ({self.path}); wait for it or stop it")

    def check_free(self) -> None:
        """Refuse (one-line RespkdError) when another process holds the lock; writes nothing, holds nothing."""
        if self.held:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError:  # a lock file this process cannot read is judged when it is taken
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._refusal(Holder.read(fd)) from None
        finally:
            os.close(fd)  # closing releases a lock taken here

    def try_acquire(self) -> bool:
        """Take the lock if no other process has it; False (and :attr:`blocker`: who has it) if one does."""
        if self.held:
            return True
        with writing(self.path, "nothing was started"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(_TRIES):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # held, or probed for an instant by a check_free elsewhere: look again before reporting it
                    self.blocker = Holder.read(fd)
                    os.close(fd)
                    if attempt + 1 < _TRIES:
                        time.sleep(0.05)
                    continue
                # A holder that finished removed the file after this process opened it: lock the one now there.
                try:
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                self.taken_over = Holder.read(fd)  # written by a holder that died: a clean release removes the file
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(asdict(Holder.me())).encode(), 0)
                self.fd, self.blocker = fd, None
                return True
        return False

    def acquire(self) -> None:
        """Take the lock, or refuse (one-line RespkdError naming the holder)."""
        if not self.try_acquire():
            raise self._refusal(self.blocker)

    def wait(self, log: Callable[[str], None], poll_s: float = 0.5) -> None:
        """Take the lock, waiting (one log line) while another process holds it; a signal ends the wait."""
        if self.try_acquire():
            return
        who = self.blocker.describe() if self.blocker is not None else "another process"
        log(f"waiting for {who}, which holds {self.what} ({self.path})")
        while not self.try_acquire():
            preemption.check()
            time.sleep(poll_s)

    def release(self) -> None:
        """Remove the lock file and let go (the file first: a process waiting on it then locks the next file)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
