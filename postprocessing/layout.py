"""The facility's directory layout under ``data_root``: /<FACILITY>/<INSTRUMENT>/<IPTS>/...

Every path component here comes from a validated plain name (see messages.py).
"""

import os
import re
import stat
from typing import List, Optional, Tuple

from postprocessing import safefiles
from postprocessing.config import Config

_NEXUS = re.compile(r"([^/]+)/([^/]+)/([^/]+)/nexus/([^/]+)_([0-9]+)\.nxs\.h5")
_LEGACY = re.compile(r"([^/]+)/([^/]+)/([^/]+)/0/([0-9]+)/NeXus/([^/]+)_([0-9]+)_event\.nxs")


def facility_dir(cfg: Config, facility: str, instrument: str) -> str:
    return os.path.join(cfg.data_root, facility, instrument)


def instrument_shared(cfg: Config, facility: str, instrument: str) -> str:
    """Where ``reduce_<INST>.py`` and friends live."""
    if cfg.dev_instrument_shared:
        return cfg.dev_instrument_shared
    return os.path.join(facility_dir(cfg, facility, instrument), "shared", "autoreduce")


def output_dir(cfg: Config, facility: str, instrument: str, ipts: str) -> str:
    """Where a proposal's reduced data goes."""
    if cfg.dev_output_dir:
        return cfg.dev_output_dir
    return os.path.join(facility_dir(cfg, facility, instrument), ipts, "shared", "autoreduce")


def run_data_files(cfg: Config, facility: str, instrument: str, ipts: str, run: str) -> List[str]:
    """Where a run's data file may be, in the order to try: the nexus tree, then the legacy one."""
    base = os.path.join(facility_dir(cfg, facility, instrument), ipts)
    return [
        os.path.join(base, "nexus", "%s_%s.nxs.h5" % (instrument, run)),
        os.path.join(base, "0", run, "NeXus", "%s_%s_event.nxs" % (instrument, run)),
    ]


def find_run_data_file(cfg: Config, facility: str, instrument: str, ipts: str, run: str) -> Optional[str]:
    """The first of :func:`run_data_files` that is a file, or None."""
    for path in run_data_files(cfg, facility, instrument, ipts, run):
        if os.path.isfile(path):
            return path
    return None


def parse_run_data_file(cfg: Config, path: str) -> Optional[Tuple[str, str, str, str]]:
    """(facility, instrument, IPTS, run) of a data file laid out under ``data_root``, or None."""
    root = os.path.abspath(cfg.data_root)
    full = os.path.abspath(path)
    if not (full + os.sep).startswith(root.rstrip(os.sep) + os.sep):
        return None
    relative = os.path.relpath(full, root)
    match = _NEXUS.fullmatch(relative)
    if match and match.group(4) == match.group(2):
        return match.group(1), match.group(2), match.group(3), str(int(match.group(5)))
    match = _LEGACY.fullmatch(relative)
    if match and match.group(5) == match.group(2) and match.group(4) == match.group(6):
        return match.group(1), match.group(2), match.group(3), str(int(match.group(4)))
    return None


def within_root(cfg: Config, path: str) -> bool:
    """Whether ``path``, taken literally (``..`` resolved, links not), is under ``data_root``.

    Links on the way are judged when the path is opened (:mod:`postprocessing.safefiles`)."""
    root = os.path.normpath(os.path.abspath(cfg.data_root))
    full = os.path.normpath(os.path.abspath(path))
    return full == root or full.startswith(root.rstrip(os.sep) + os.sep)


def check_readable(cfg: Config, path: str) -> Optional[str]:
    """Why the data file cannot be used, in the SNS agent's words, or None."""
    if not os.path.isabs(path) or not within_root(cfg, path):
        return "Data file is outside the data root: %s" % path
    try:
        # Non-blocking: opening a FIFO for reading would otherwise wait for a writer, forever.
        fd = safefiles.open_read(path, cfg.data_root, os.O_NONBLOCK)
    except safefiles.UnsafePath as err:
        return "Data file is behind an untrusted link: %s" % err
    except FileNotFoundError:
        return "Data file not found: %s" % path
    except PermissionError:
        return "Data file permission denied: %s" % path
    except OSError as err:
        return "Data file open error for file %s: %s" % (path, err.strerror or err)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    return None if regular else "Data file open error for file %s: not a regular file" % path
