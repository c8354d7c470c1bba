"""Running a reduce script with ISIS-style extras: ``reduce_vars`` overrides and ``main()``.

The job runs a small launcher with the interpreter the script would use.  The launcher,
its spec and the generated ``reduce_vars`` module live in a private directory of the agent
(mode 0700, one per run, removed after it: :class:`RunDir`), never in the proposal's
user-writable ``reduction_log``: the launcher's directory comes first on ``sys.path``.
The launcher puts that directory, then the script's own, first on ``sys.path``, then runs
the script as ``__main__``, or imports it and calls ``main(input_file, output_dir)``,
saving what ``main`` returns.  Values from the message travel as JSON text and are only
ever ``json.loads``-ed: never evaluated.  The record of the variables used is copied to
``reduction_log/<run>.vars.json`` after the run.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Dict, List, Mapping, Optional

from postprocessing.errors import InvalidMessage
from postprocessing.safefiles import open_nofollow

VAR_GROUPS = ("standard_vars", "advanced_vars")
VARS_RECORD = "vars.json"
MAIN_RESULT = "main.json"

LAUNCHER = '''"""Written by the postprocessing agent: runs one reduce script."""
import json
import runpy
import sys

with open(sys.argv[1]) as _spec_file:
    spec = json.load(_spec_file)
sys.path[:0] = spec["path"]
sys.argv = [spec["script"]] + spec["args"]
if spec["call_main"]:
    namespace = runpy.run_path(spec["script"], run_name="reduce_script")
    result = namespace["main"](spec["args"][0], spec["args"][1])
    with open(spec["result_file"], "w") as _out:
        json.dump(result if isinstance(result, (str, list)) else None, _out)
else:
    runpy.run_path(spec["script"], run_name="__main__")
'''

VARS_MODULE = '''"""Written by the postprocessing agent: reduce_vars with this run's overrides."""
import json as _json
import runpy as _runpy

_ORIGINAL = %(original)r
_file = _runpy.run_path(_ORIGINAL) if _ORIGINAL else {}
globals().update({_k: _v for _k, _v in _file.items() if not _k.startswith("__")})
standard_vars = dict(_file.get("standard_vars") or {})
advanced_vars = dict(_file.get("advanced_vars") or {})
_overrides = _json.loads(%(overrides)r)
standard_vars.update(_overrides.get("standard_vars", {}))
advanced_vars.update(_overrides.get("advanced_vars", {}))
with open(%(record)r, "w") as _record:
    _json.dump({"standard_vars": standard_vars, "advanced_vars": advanced_vars}, _record,
               indent=1, sort_keys=True, default=repr)
'''


def reduction_arguments(fields: Mapping[str, Any]) -> Optional[Dict[str, Dict[str, Any]]]:
    """Validate the message's ``reduction_arguments``: JSON dicts of names to values."""
    value = fields.get("reduction_arguments")
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(VAR_GROUPS):
        raise InvalidMessage("Reduction arguments must be an object with standard_vars and/or advanced_vars")
    for group, values in value.items():
        if not isinstance(values, dict) or not all(isinstance(k, str) and k.isidentifier() for k in values):
            raise InvalidMessage("Reduction arguments %s must map names to values" % group)
    return {group: dict(values) for group, values in value.items()}


class RunDir:
    """The agent's private directory for one run's generated files; removed by :meth:`remove`."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="pp-run-")
        os.chmod(self.path, 0o700)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def write_launcher(run_dir: RunDir, script: str, args: List[str], call_main: bool,
                   overrides: Optional[Dict[str, Dict[str, Any]]], vars_file: Optional[str]) -> List[str]:
    """Write the launcher, its spec and maybe a ``reduce_vars`` module; returns the launcher argv."""
    path = [run_dir.path, os.path.dirname(script)]
    if overrides is not None or vars_file is not None:
        with open_nofollow(run_dir.file("reduce_vars.py"), "w", encoding="utf-8") as handle:
            handle.write(VARS_MODULE % {"original": vars_file, "overrides": json.dumps(overrides or {}),
                                        "record": run_dir.file(VARS_RECORD)})
    spec = {"script": script, "args": args, "path": path, "call_main": call_main,
            "result_file": run_dir.file(MAIN_RESULT)}
    spec_path = run_dir.file("launch.json")
    with open_nofollow(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    launcher = run_dir.file("launch.py")
    with open_nofollow(launcher, "w", encoding="utf-8") as handle:
        handle.write(LAUNCHER)
    return [launcher, spec_path]


def keep_vars_record(run_dir: RunDir, destination: str, root: str) -> None:
    """Copy the record of the variables the run used to ``destination``, if there is one."""
    try:
        with open(run_dir.file(VARS_RECORD), "rb") as source:
            content = source.read()
    except FileNotFoundError:
        return
    with open_nofollow(destination, "wb", root=root) as handle:
        handle.write(content)


def main_result_dirs(run_dir: RunDir) -> List[str]:
    """The directories an ISIS-style ``main`` returned (one or a list), if any."""
    try:
        with open(run_dir.file(MAIN_RESULT), encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return []
    if isinstance(value, str):
        value = [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
