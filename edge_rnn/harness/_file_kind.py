"""What a path that is not a regular file is, for a refusal that says so: a link to /dev/zero or /dev/urandom would
otherwise be read without end, or be called "a directory"."""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["not_regular"]

_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")]


def not_regular(path: Path) -> str | None:
    """What ``path`` (followed through links) is where it exists and is not a regular file ("a character device",
    "a directory", ...); None for a regular file or a path that does not exist (or cannot be looked at)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), f"a special file (mode {stat.filemode(mode)})")
