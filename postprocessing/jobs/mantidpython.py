#!/usr/bin/python3
"""``mantidpython.py <script> <data file> <output dir>``: run a reduce script as the agent would.

SNS configurations set ``python_exec`` to ``/opt/postprocessing/scripts/mantidpython.py``;
the RPM installs this very file there.  A script with a ``CONDA_ENV`` line runs through
``nsd-conda-wrap.sh <env> --classic``, any other with ``python3``: the agent behaves the
same whether ``python_exec`` names this or ``python3``.  The command replaces this
process (exec), so the job's process group, limits and signals apply to it unchanged.

It is a standalone script that imports only the standard library: a job's ``PYTHONPATH``
hides the installed package (see ``scriptlib``).  The agent reads ``CONDA_ENV`` with
:func:`conda_env` from here too.
"""

import argparse
import os
import re
import sys
from typing import List, Optional

CONDA_WRAPPER = "nsd-conda-wrap.sh"
PYTHON = "python3"
#: As the SNS agent reads it: the line may be indented, the value quoted or not.  Only
#: plain names are accepted, since the name becomes a command argument.
_CONDA_ENV = re.compile(r"""^[ \t]*CONDA_ENV[ \t]*=[ \t]*(['"]?)([A-Za-z0-9._-]+)\1(?![A-Za-z0-9._-])""",
                        re.MULTILINE)


def conda_env(source: str) -> Optional[str]:
    """The environment the first ``CONDA_ENV`` line of a script's source names, if any."""
    match = _CONDA_ENV.search(source)
    return match.group(2) if match else None


def command(script: str, arguments: List[str]) -> List[str]:
    """The command that runs ``script`` with ``arguments``; raises OSError if it cannot be read."""
    with open(script, encoding="utf-8", errors="replace") as handle:
        env = conda_env(handle.read())
    if env is None:
        return [PYTHON, script] + arguments
    return [CONDA_WRAPPER, env, "--classic", script] + arguments


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mantidpython.py",
                                description="Run a reduce script in its CONDA_ENV, or with python3.")
    p.add_argument("script", help="the reduce script")
    p.add_argument("data_file", help="the run's data file")
    p.add_argument("output_dir", help="where the script writes its results")
    p.add_argument("more", nargs=argparse.REMAINDER, help="further arguments, passed on")
    args = p.parse_args(argv)
    try:
        argv_out = command(args.script, [args.data_file, args.output_dir] + args.more)
    except OSError as err:
        print("mantidpython.py: cannot read %s: %s" % (args.script, err.strerror), file=sys.stderr)
        return 1
    try:
        os.execvp(argv_out[0], argv_out)
    except OSError as err:
        print("mantidpython.py: cannot run %s: %s" % (argv_out[0], err.strerror), file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
