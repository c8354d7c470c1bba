"""The conda environment a reduce script names with a ``CONDA_ENV = 'name'`` line.

Read as the SNS agent reads it: the line may be indented, the value quoted or not.
Only plain names are accepted, since the name becomes a command argument.
"""

import re
from typing import Optional

_CONDA_ENV = re.compile(r"""^[ \t]*CONDA_ENV[ \t]*=[ \t]*(['"]?)([A-Za-z0-9._-]+)\1(?![A-Za-z0-9._-])""",
                        re.MULTILINE)


def conda_env(source: str) -> Optional[str]:
    """The environment the first ``CONDA_ENV`` line of ``source`` names, if any."""
    match = _CONDA_ENV.search(source)
    return match.group(2) if match else None
