"""Runs to resubmit: named on the command line, by data file, or found in the workflow database."""

import dataclasses
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from postprocessing import layout
from postprocessing.config import Config
from postprocessing.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A run to resubmit; ``data_file`` is None when no data file was found."""

    facility: str
    instrument: str
    ipts: str
    run_number: str
    data_file: Optional[str]
    looked_at: Tuple[str, ...] = ()
    note: str = ""

    @property
    def label(self) -> str:
        return "%s %s (%s)" % (self.instrument, self.run_number, self.ipts)

    def body(self, information: str) -> Dict[str, Any]:
        return {"facility": self.facility, "instrument": self.instrument, "ipts": self.ipts,
                "run_number": self.run_number, "data_file": self.data_file, "information": information}


def explicit_runs(cfg: Config, facility: str, instrument: str, ipts: str, runs: Sequence[str]) -> List[Candidate]:
    out = []
    for run in runs:
        tried = layout.run_data_files(cfg, facility, instrument, ipts, run)
        found = layout.find_run_data_file(cfg, facility, instrument, ipts, run)
        out.append(Candidate(facility, instrument, ipts, run, found, tuple(tried)))
    return out


def data_file_runs(cfg: Config, paths: Sequence[str]) -> List[Candidate]:
    out = []
    for path in paths:
        full = os.path.abspath(path)
        parsed = layout.parse_run_data_file(cfg, full)
        if parsed is None:
            raise UsageError(
                "--data-file %s: not a run file under data_root %s (expected <FAC>/<INST>/<IPTS>/nexus/"
                "<INST>_<run>.nxs.h5 or <FAC>/<INST>/<IPTS>/0/<run>/NeXus/<INST>_<run>_event.nxs)"
                % (path, cfg.data_root))
        facility, instrument, ipts, run = parsed
        out.append(Candidate(facility, instrument, ipts, run, full if os.path.isfile(full) else None, (full,)))
    return out


def unique(candidates: Iterable[Candidate]) -> List[Candidate]:
    seen: Dict[Tuple[str, str, str], Candidate] = {}
    for c in candidates:
        seen.setdefault((c.facility, c.instrument, c.run_number), c)
    return list(seen.values())
