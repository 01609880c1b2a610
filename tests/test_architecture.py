"""Size limits of the package's code (the import-cycle check is in test_import_graph.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import shortcut_detect

ROOT = Path(shortcut_detect.__file__).resolve().parent
MAX_FUNCTION_LINES = 120


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function or method of ``source`` longer than
    ``limit`` lines: signature and body with decorators and comments, without the docstring
    (a full numpy-style docstring is wanted, not a reason to split)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    length = (child.end_lineno or child.lineno) - first + 1
                    docstring = child.body[0]
                    if ast.get_docstring(child) is not None:
                        length -= (docstring.end_lineno or docstring.lineno) - docstring.lineno + 1
                    if length > limit:
                        found.append((name, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_long_function_finder_counts_lines_of_nested_functions():
    body = "\n".join(f"    x{i} = {i}" for i in range(6))
    source = f"class A:\n    def short(self):\n        pass\n\ndef outer():\n{body}\n"
    assert long_functions(source, limit=6) == [("outer", 7)]
    nested = f"def outer():\n    def inner():\n{body.replace('    ', '        ')}\n"
    assert long_functions(nested, limit=7) == [("outer", 8)]
    assert long_functions(nested, limit=6) == [("outer", 8), ("outer.inner", 7)]
    documented = f'def outer():\n    """Doc\n\n    more.\n    """\n{body}\n'
    assert long_functions(documented, limit=6) == [("outer", 7)]


def test_no_function_is_longer_than_the_limit():
    too_long = [
        f"{path.relative_to(ROOT.parent)}: {name} ({lines} lines)"
        for path in sorted(ROOT.rglob("*.py"))
        for name, lines in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them into steps):\n"
        + "\n".join(too_long)
    )
