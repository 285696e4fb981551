"""Detect an unsandboxed training run opening the held-out split, with Linux inotify.

Without a sandbox the held-out files cannot be hidden, but every open() of them is seen: an
inotify watch on each file (on its inode, so hard links and other paths to it count too) queues
an IN_OPEN / IN_ACCESS event in the kernel whoever opens it. Nothing runs while training runs:
`start` adds the watches, `stop` reads the queued events. A queue overflow (IN_Q_OVERFLOW, only
possible after thousands of events on these files) counts as a read.

Limits, stated honestly: any process opening the files counts (the harness must not audit or
prepare the same cache while a watch is on; another run sharing the cache would be blamed); a
file descriptor opened *before* `start` reads unseen (the training process does not exist yet
then); inotify is Linux-only (elsewhere `available` is False and nothing is detected).
"""

import ctypes
import os
import struct
import sys
from pathlib import Path
from typing import Iterable

IN_ACCESS, IN_OPEN, IN_Q_OVERFLOW = 0x1, 0x20, 0x4000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class HeldoutWatch:
    def __init__(self, paths: Iterable[Path]):
        self.paths = [Path(p) for p in paths]
        self.fd: int | None = None
        self.watches: dict[int, Path] = {}
        self._libc = None
        if sys.platform.startswith("linux"):
            try:
                self._libc = ctypes.CDLL(None, use_errno=True)
                self._libc.inotify_init1, self._libc.inotify_add_watch  # noqa: B018 (present?)
            except (OSError, AttributeError):
                self._libc = None

    @property
    def available(self) -> bool:
        return self._libc is not None

    def start(self) -> None:
        if not self.available:
            return
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        for path in self.paths:
            wd = self._libc.inotify_add_watch(fd, str(path).encode(), IN_OPEN | IN_ACCESS)
            if wd >= 0:
                self.watches[wd] = path

    def stop(self) -> list[str]:
        """One line per held-out file that was opened or read since `start`; the watch ends."""
        if self.fd is None:
            return []
        touched: dict[Path, None] = {}
        overflow = False
        try:
            while True:
                try:
                    data = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                offset = 0
                while offset + _EVENT.size <= len(data):
                    wd, mask, _, length = _EVENT.unpack_from(data, offset)
                    offset += _EVENT.size + length
                    if mask & IN_Q_OVERFLOW:
                        overflow = True
                    elif mask & (IN_OPEN | IN_ACCESS) and wd in self.watches:
                        touched[self.watches[wd]] = None
        finally:
            os.close(self.fd)
            self.fd = None
        lines = [f"read the held-out file {path}" for path in touched]
        if overflow:
            lines.append("read the held-out split (inotify queue overflowed)")
        return lines
