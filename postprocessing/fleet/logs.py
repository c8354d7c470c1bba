"""Where a run's reduction log and error file are (through the layout), and their text.

The reduction writes ``<output dir>/reduction_log/<data file name>.log`` and ``.err``
(processors/reduction.py); the output directory comes from layout.output_dir.  Without an
IPTS the proposals of the instrument are searched for the run's data file.
"""

import glob
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

from postprocessing import layout
from postprocessing.cli.broker import BrokerSession
from postprocessing.config import Config
from postprocessing.errors import PostProcessingError
from postprocessing.fleet.view import StatusListener


class RunNotFound(PostProcessingError):
    pass


def _data_file_name(cfg: Config, facility: str, instrument: str, ipts: str, run: str) -> str:
    found = layout.find_run_data_file(cfg, facility, instrument, ipts, run)
    return os.path.basename(found or layout.run_data_files(cfg, facility, instrument, ipts, run)[0])


def find_ipts(cfg: Config, facility: str, instrument: str, run: str) -> List[str]:
    """The proposals of ``instrument`` holding the run's data file."""
    base = layout.facility_dir(cfg, facility, instrument)
    out = []
    for path in sorted(glob.glob(os.path.join(glob.escape(base), "*"))):
        ipts = os.path.basename(path)
        if layout.find_run_data_file(cfg, facility, instrument, ipts, run) is not None:
            out.append(ipts)
    return out


def log_paths(cfg: Config, instrument: str, run: str, ipts: Optional[str],
              facility: Optional[str] = None) -> Tuple[str, str, str]:
    """(IPTS, reduction log, error file) of a run; raises RunNotFound when the IPTS cannot be found."""
    facility = (facility or cfg.facility).upper()
    if ipts is None:
        found = find_ipts(cfg, facility, instrument, run)
        if not found:
            raise RunNotFound("no data file of %s run %s under %s: give --ipts" % (
                instrument, run, layout.facility_dir(cfg, facility, instrument)))
        if len(found) > 1:
            raise RunNotFound("%s run %s is in several proposals (%s): give --ipts" % (
                instrument, run, ", ".join(found)))
        ipts = found[0]
    log_dir = os.path.join(layout.output_dir(cfg, facility, instrument, ipts), "reduction_log")
    name = _data_file_name(cfg, facility, instrument, ipts, run)
    return ipts, os.path.join(log_dir, name + ".log"), os.path.join(log_dir, name + ".err")


def read_text(path: str, offset: int = 0) -> Tuple[Optional[str], int]:
    """The text of ``path`` from ``offset`` (None if it is not there) and the offset after it."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return None, offset
    return data.decode("utf-8", "replace"), offset + len(data)


def follow(paths: List[str], running: Callable[[], bool], write: Callable[[str], None],
           interval: float = 0.5, offsets: Optional[Dict[str, int]] = None) -> None:
    """Print what is added to ``paths`` until ``running()`` is false, then what is left."""
    offsets = dict(offsets or {})
    while True:
        still = running()
        for path in paths:
            text, offsets[path] = read_text(path, offsets.get(path, 0))
            if text:
                write(text if len(paths) == 1 else "".join("[%s] %s\n" % (os.path.basename(path), line)
                                                            for line in text.splitlines()))
        if not still:
            return
        time.sleep(interval)


def is_running(entries: List[Dict[str, object]], instrument: str, run: str) -> bool:
    """Whether a live agent's status lists the run as running."""
    for entry in entries:
        running = entry.get("running")
        if not entry.get("live") or not isinstance(running, list):
            continue
        for item in running:
            if (isinstance(item, dict) and str(item.get("instrument", "")).upper() == instrument.upper()
                    and str(item.get("run_number")) == str(run)):
                return True
    return False


def follow_run(cfg: Config, instrument: str, run: str, paths: List[str], write: Callable[[str], None],
               offsets: Dict[str, int], settle: float = 2.0) -> None:
    """Tail ``paths`` while an agent's status says the run is running (asked for at once)."""
    with BrokerSession(cfg) as session:
        listener = StatusListener(cfg, session)
        listener.request()
        listener.collect(settle)

        def running() -> bool:
            listener.collect(0.5)
            return is_running(listener.fleet.entries(), instrument, run)

        follow(paths, running, write, interval=0.0, offsets=offsets)
