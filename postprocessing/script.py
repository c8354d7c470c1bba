"""Helpers for reduce scripts; the agent puts this module on every job's ``sys.path``.

A script says "this run needs no reduction" in either of two ways::

    from postprocessing.script import SkipRun
    raise SkipRun("white beam run")          # or: sys.exit(postprocessing.script.SKIP_EXIT_CODE)

The agent then answers ``REDUCTION.NOT_NEEDED`` with the reason in ``information``.
A run listed in ``SKIP_RUNS = [...]`` at the top of the script is skipped without running it.
This module must stay importable without the agent's dependencies.
"""

import sys

#: The exit status that means "skip this run" (automake's convention for a skipped test).
SKIP_EXIT_CODE = 77
#: The stderr line prefix carrying the reason.
SKIP_PREFIX = "SkipRun: "


class SkipRun(SystemExit):
    """Raise to end the script with "no reduction needed"; the reason goes to stderr."""

    def __init__(self, reason: str = "skipped by the reduce script") -> None:
        super().__init__(SKIP_EXIT_CODE)
        self.reason = reason
        sys.stderr.write("%s%s\n" % (SKIP_PREFIX, reason))
        sys.stderr.flush()
