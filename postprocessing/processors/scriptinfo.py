"""What a reduce script declares, read from its source without running it."""

import ast
import dataclasses
from typing import FrozenSet, Optional

from postprocessing.jobs.mantidpython import conda_env as read_conda_env


@dataclasses.dataclass(frozen=True)
class ScriptInfo:
    conda_env: Optional[str] = None
    #: Run numbers listed in ``SKIP_RUNS = [...]``.
    skip_runs: FrozenSet[int] = frozenset()
    #: ISIS style: defines ``main(input_file, output_dir)`` and has no ``__main__`` block.
    isis_main: bool = False


def _is_main_block(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    names = [node.test.left] + list(node.test.comparators)
    return any(isinstance(n, ast.Name) and n.id == "__name__" for n in names)


def _skip_runs(node: ast.Assign) -> FrozenSet[int]:
    try:
        value = ast.literal_eval(node.value)
    except ValueError:
        return frozenset()
    if not isinstance(value, (list, tuple, set, frozenset)):
        return frozenset()
    runs = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            runs.add(item)
        elif isinstance(item, str) and item.strip().isdigit():
            runs.add(int(item))
    return frozenset(runs)


def inspect_script(path: str) -> ScriptInfo:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            source = handle.read()
    except OSError:
        return ScriptInfo()
    conda_env = read_conda_env(source)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ScriptInfo(conda_env)
    skip_runs: FrozenSet[int] = frozenset()
    has_main = has_main_block = False
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "SKIP_RUNS" for t in node.targets):
            skip_runs = _skip_runs(node)
        elif isinstance(node, ast.FunctionDef) and node.name == "main":
            has_main = True
        elif _is_main_block(node):
            has_main_block = True
    return ScriptInfo(conda_env, skip_runs, has_main and not has_main_block)
