"""Small terminal helpers for the operator commands: a progress bar, a table, a yes/no question."""

import sys
from typing import IO, List, Optional, Sequence


class ProgressBar:
    """A one-line bar on ``stream``, drawn only when it is a terminal."""

    def __init__(self, total: int, label: str, stream: Optional[IO[str]] = None, width: int = 30) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.active = total > 0 and self.stream.isatty()
        self._draw()

    def advance(self, count: int = 1) -> None:
        self.done += count
        self._draw()

    def _draw(self) -> None:
        if not self.active:
            return
        filled = self.width * self.done // self.total
        self.stream.write("\r%s [%s%s] %d/%d" % (self.label, "#" * filled, "." * (self.width - filled),
                                                 self.done, self.total))
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\n")
            self.stream.flush()
            self.active = False


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as left-aligned columns under ``headers``."""
    cells: List[List[str]] = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def confirm(question: str, stdin: Optional[IO[str]] = None, stream: Optional[IO[str]] = None) -> bool:
    """Ask on stderr, read a line from stdin; only 'y' or 'yes' means yes (end of input means no)."""
    out = stream if stream is not None else sys.stderr
    out.write("%s [y/N] " % question)
    out.flush()
    answer = (stdin if stdin is not None else sys.stdin).readline()
    return answer.strip().lower() in ("y", "yes")
