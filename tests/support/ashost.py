"""Run a command as if on another machine: ``python -m tests.support.ashost NAME COMMAND...``.

Started under ``unshare --uts`` (a UTS namespace of its own, as root), it sets the host name
to NAME and executes COMMAND, so agents on one machine put different host names in their
claims and outcomes (see ``prefix``)."""

import os
import shutil
import socket
import sys
from typing import List, Optional


def unavailable() -> Optional[str]:
    """Why agents cannot run under host names of their own here (None: they can)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "host names of their own need root and unshare (a UTS namespace)"
    return None


def prefix(name: str) -> List[str]:
    """The command prefix that runs what follows under host name ``name``."""
    return ["unshare", "--uts", sys.executable, "-m", "tests.support.ashost", name]


def main(argv: List[str]) -> int:
    name, command = argv[0], argv[1:]
    socket.sethostname(name)
    os.execvp(command[0], command)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
