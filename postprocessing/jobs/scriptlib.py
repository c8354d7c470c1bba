"""The ``postprocessing.script`` helper, installed alone in a private directory for jobs.

Jobs may run another Python (a conda environment), so they must not see the agent's
site-packages; they get a directory holding only ``postprocessing/script.py``.
"""

import contextlib
import inspect
import os
import tempfile
from typing import Iterator

from postprocessing import script


@contextlib.contextmanager
def installed() -> Iterator[str]:
    """A private directory with ``postprocessing.script`` in it, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="postprocessing-scriptlib-") as root:
        package = os.path.join(root, "postprocessing")
        os.mkdir(package)
        with open(os.path.join(package, "__init__.py"), "w", encoding="utf-8") as handle:
            handle.write('"""Helpers for reduce scripts, put here by the postprocessing agent."""\n')
        with open(os.path.join(package, "script.py"), "w", encoding="utf-8") as handle:
            handle.write(inspect.getsource(script))
        yield root
