"""Writing files without following a symbolic link planted at the target path."""

import errno
import os
from typing import IO, Any

from postprocessing.errors import PostProcessingError


class UnsafePath(PostProcessingError):
    """The target of a write is a symbolic link."""


def refuse_symlink(path: str) -> None:
    if os.path.islink(path):
        raise UnsafePath("refusing to write through a symbolic link: %s" % path)


def open_nofollow(path: str, mode: str = "wb", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing ("w" or "a", text or binary) with O_NOFOLLOW."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if "a" in mode else os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePath("refusing to write through a symbolic link: %s" % path) from None
        raise
    return os.fdopen(fd, mode, **kwargs)
