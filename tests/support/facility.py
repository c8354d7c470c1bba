"""A facility data tree under a temporary ``data_root``: instruments, scripts and run files."""

import os
import textwrap
from typing import Any, Dict, Optional


class Facility:
    def __init__(self, root: str, facility: str = "SNS") -> None:
        self.root = root
        self.facility = facility

    def instrument_dir(self, inst: str) -> str:
        return os.path.join(self.root, self.facility, inst.upper(), "shared", "autoreduce")

    def output_dir(self, inst: str, ipts: str) -> str:
        return os.path.join(self.root, self.facility, inst.upper(), ipts.upper(), "shared", "autoreduce")

    def script(self, inst: str, text: str, name: Optional[str] = None) -> str:
        """Write ``reduce_<INST>.py`` (or ``name``) in the instrument's shared directory."""
        directory = self.instrument_dir(inst)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name or "reduce_%s.py" % inst.upper())
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(textwrap.dedent(text))
        return path

    def data_file(self, inst: str, ipts: str, run: int, content: bytes = b"nexus") -> str:
        directory = os.path.join(self.root, self.facility, inst.upper(), ipts.upper(), "nexus")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "%s_%d.nxs.h5" % (inst.upper(), run))
        with open(path, "wb") as handle:
            handle.write(content)
        return path

    def run(self, inst: str, ipts: str, run: int, **extra: Any) -> Dict[str, Any]:
        """A run message for a data file that exists."""
        body: Dict[str, Any] = {"facility": self.facility, "instrument": inst, "ipts": ipts,
                                "run_number": str(run), "data_file": self.data_file(inst, ipts, run)}
        body.update(extra)
        return body
