"""Reaching files in the data tree without following a link a proposal's users planted.

A proposal's users can write in parts of the data tree (``<IPTS>/shared/``).  There they
could plant a symbolic link that turns the agent's writes (logs, results) or reads (data
files) to a place of their choosing, with the service account's rights.  So every path
the agent writes through is opened one component at a time, from the data root down
(``dir_fd`` and ``O_NOFOLLOW`` on each step), and a symbolic link met on the way is
followed only when the facility made it:

- the link is owned by root or by the service account (the agent's effective user), and
- the directory holding it is owned by one of those and writable by nobody else.

Any other link is refused with :class:`UnsafePath`, which names the link.  The last
component of a file written is never a link, and a file with other hard links is not
written either (it could be someone else's file linked into the proposal).
"""

import errno
import os
import stat
from typing import IO, Any, FrozenSet, List, Optional, Tuple

from postprocessing.errors import PostProcessingError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class UnsafePath(PostProcessingError):
    """A path goes through a symbolic link (or hard link) that the agent must not follow."""


def trusted_uids() -> FrozenSet[int]:
    """Who may make links the agent follows: root and the service account."""
    return frozenset({0, os.geteuid()})


def link_trusted(link: os.stat_result, parent: os.stat_result) -> bool:
    """Whether the facility made this link: see the module docstring."""
    trusted = trusted_uids()
    return (link.st_uid in trusted and parent.st_uid in trusted
            and not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _split(path: str, root: str) -> Tuple[str, List[str]]:
    """Where to start the walk (the data root, or ``/`` for a path outside it) and the steps."""
    path = os.path.normpath(os.path.abspath(path))
    root = os.path.normpath(os.path.abspath(root)) if root else os.sep
    if path == root:
        return root, []
    if path.startswith(root.rstrip(os.sep) + os.sep):
        return root, path[len(root.rstrip(os.sep)) + 1:].split(os.sep)
    return os.sep, [part for part in path.split(os.sep) if part]


def _step(parent: int, name: str, shown: str, create: bool) -> int:
    """Open the directory ``name`` under the ``parent`` fd, following only a trusted link."""
    for _ in range(2):
        try:
            return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
            except FileExistsError:
                continue
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.lstat(name, dir_fd=parent)
            if not stat.S_ISLNK(st.st_mode):
                raise
            if not link_trusted(st, os.fstat(parent)):
                raise UnsafePath("refusing a symbolic link that the facility did not make: %s" % shown) from None
            target = os.readlink(name, dir_fd=parent)
            return os.open(target, _DIR_FLAGS, dir_fd=parent)
    return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=parent)


def open_dir(path: str, root: str, create: bool = False) -> int:
    """An fd of the directory ``path``, reached safely from ``root``; creates missing parts if asked.

    Raises UnsafePath for a link the facility did not make, OSError otherwise."""
    start, steps = _split(path, root)
    fd = os.open(start, _DIR_FLAGS)
    shown = start
    try:
        for name in steps:
            shown = os.path.join(shown, name)
            child = _step(fd, name, shown, create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(path: str, root: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` through :func:`open_dir`."""
    os.close(open_dir(path, root, create=True))


def check_dir(path: str, root: str) -> Optional[str]:
    """Why ``path`` is not a directory the agent may use, or None."""
    try:
        os.close(open_dir(path, root))
    except UnsafePath as err:
        return str(err)
    except OSError as err:
        return "%s: %s" % (path, err.strerror or err)
    return None


def open_read(path: str, root: str, flags: int = 0) -> int:
    """A read fd of ``path``, through trusted links only (a trusted last link is followed too)."""
    directory, name = os.path.split(os.path.normpath(os.path.abspath(path)))
    parent = open_dir(directory, root)
    try:
        try:
            return os.open(name, os.O_RDONLY | flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=parent)
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            if not link_trusted(os.lstat(name, dir_fd=parent), os.fstat(parent)):
                raise UnsafePath("refusing a symbolic link that the facility did not make: %s" % path) from None
            return os.open(os.readlink(name, dir_fd=parent), os.O_RDONLY | flags, dir_fd=parent)
    finally:
        os.close(parent)


def refuse_symlink(path: str) -> None:
    if os.path.islink(path):
        raise UnsafePath("refusing to write through a symbolic link: %s" % path)


def open_nofollow(path: str, mode: str = "wb", root: str = "", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing ("w" or "a", text or binary), never through a planted link.

    With ``root``, every directory on the way is checked (:func:`open_dir`); the file
    itself is opened with O_NOFOLLOW and refused if it has other hard links."""
    flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    if "a" in mode:
        flags |= os.O_APPEND
    directory, name = os.path.split(path)
    parent = open_dir(directory or ".", root) if root else None
    try:
        fd = os.open(name if parent is not None else path, flags, 0o666, dir_fd=parent)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePath("refusing to write through a symbolic link: %s" % path) from None
        raise
    finally:
        if parent is not None:
            os.close(parent)
    try:
        if os.fstat(fd).st_nlink > 1:
            raise UnsafePath("refusing to write a file with other hard links: %s" % path)
        if "a" not in mode:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, mode, **kwargs)
