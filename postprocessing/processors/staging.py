"""Staged output: a run writes into a private directory; results move in only on success."""

import logging
import os
import shutil
import tempfile
import time
from typing import List

from postprocessing import safefiles

logger = logging.getLogger(__name__)


class Staging:
    """A per-run directory beside the output directory (same filesystem, so moves are renames)."""

    def __init__(self, out_dir: str, base: str) -> None:
        self.out_dir = out_dir
        self.dir = tempfile.mkdtemp(prefix=".staging-%s-" % base, dir=out_dir)

    def commit(self) -> List[str]:
        """Move every result into the output directory, replacing same names; returns them."""
        moved = []
        for name in sorted(os.listdir(self.dir)):
            src, dest = os.path.join(self.dir, name), os.path.join(self.out_dir, name)
            if os.path.isdir(dest) and not os.path.islink(dest):
                shutil.rmtree(dest)
            os.replace(src, dest)
            moved.append(dest)
        os.rmdir(self.dir)
        return moved

    def keep_partial(self, log_dir: str, base: str) -> str:
        """After a failure: keep what the run wrote under ``reduction_log`` for diagnosis."""
        dest = os.path.join(log_dir, "%s.partial-%s" % (base, time.strftime("%Y%m%dT%H%M%S")))
        os.replace(self.dir, dest)
        return dest


def produced_since(out_dir: str, since: float) -> List[str]:
    """Entries of ``out_dir`` changed since ``since`` (the run's results when not staged)."""
    found = []
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name == "reduction_log" or name.startswith(".staging-"):
            continue
        if os.lstat(path).st_mtime >= since:
            found.append(path)
    return found


def copy_results(paths: List[str], destination: str, root: str) -> None:
    """Copy results into ``destination``, reached and written through no planted link."""
    safefiles.make_dirs(destination, root)
    for path in paths:
        target = os.path.join(destination, os.path.basename(path))
        if os.path.isdir(path):
            safefiles.refuse_symlink(target)
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            with open(path, "rb") as source, safefiles.open_nofollow(target, "wb", root=root) as handle:
                shutil.copyfileobj(source, handle)
            shutil.copystat(path, target, follow_symlinks=False)
