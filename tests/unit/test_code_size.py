"""Size limits that keep ``pipeline`` readable (issue 18): no module over 500 lines, no
function or method over 80 (from its ``def`` line to its last line, decorators not
counted). Split a module by job, or a function into steps, rather than raising them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "pipeline"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, node.lineno, length))
    return found


def test_the_tree_is_there() -> None:
    assert len(_modules()) > 50


def test_no_module_over_500_lines() -> None:
    big = {
        str(p.relative_to(ROOT.parent)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert big == {}, f"modules over {MAX_FILE_LINES} lines: {big}"


def test_no_function_over_80_lines() -> None:
    long = [
        f"{p.relative_to(ROOT.parent)}:{line} {name} ({n} lines)"
        for p in _modules()
        for name, line, n in long_functions(p.read_text(), MAX_FUNCTION_LINES)
    ]
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_function_check_counts_from_def_to_the_last_line() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    src = f"def long():\n{body}\nclass C:\n    async def short(self):\n        pass\n"
    assert long_functions(src, 80) == [("long", 1, 81)]
    assert long_functions(src, 81) == []
