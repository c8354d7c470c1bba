"""Running a reduce script with ISIS-style extras: ``reduce_vars`` overrides and ``main()``.

The job runs a small launcher (a file in the run's log directory) with the interpreter
the script would use.  The launcher puts a generated ``reduce_vars`` module first on
``sys.path``, then runs the script as ``__main__``, or imports it and calls
``main(input_file, output_dir)``, saving what ``main`` returns.  Values from the
message travel as JSON text and are only ever ``json.loads``-ed: never evaluated.
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional

from postprocessing.errors import InvalidMessage
from postprocessing.safefiles import open_nofollow

VAR_GROUPS = ("standard_vars", "advanced_vars")

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


def write_launcher(log_dir: str, base: str, script: str, args: List[str], call_main: bool,
                   overrides: Optional[Dict[str, Dict[str, Any]]], vars_file: Optional[str]) -> List[str]:
    """Write the launcher, its spec and maybe a ``reduce_vars`` module; returns the launcher argv."""
    path = [os.path.dirname(script)]
    if overrides is not None or vars_file is not None:
        vars_dir = os.path.join(log_dir, base + ".vars")
        os.makedirs(vars_dir, exist_ok=True)
        with open_nofollow(os.path.join(vars_dir, "reduce_vars.py"), "w", encoding="utf-8") as handle:
            handle.write(VARS_MODULE % {"original": vars_file, "overrides": json.dumps(overrides or {}),
                                        "record": os.path.join(log_dir, base + ".vars.json")})
        path.insert(0, vars_dir)
    spec = {"script": script, "args": args, "path": path, "call_main": call_main,
            "result_file": result_file(log_dir, base)}
    spec_path = os.path.join(log_dir, base + ".launch.json")
    with open_nofollow(spec_path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    launcher = os.path.join(log_dir, base + ".launch.py")
    with open_nofollow(launcher, "w", encoding="utf-8") as handle:
        handle.write(LAUNCHER)
    return [launcher, spec_path]


def result_file(log_dir: str, base: str) -> str:
    return os.path.join(log_dir, base + ".main.json")


def main_result_dirs(log_dir: str, base: str) -> List[str]:
    """The directories an ISIS-style ``main`` returned (one or a list), if any."""
    try:
        with open(result_file(log_dir, base), encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return []
    if isinstance(value, str):
        value = [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
