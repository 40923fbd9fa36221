"""House style that can be checked: short functions (at most 40 lines of body, docstring excluded) in every package."""

import ast

import pytest

from tests.helpers import REPO

PACKAGES = ("modeling_tarflow", "training", "evaluation", "bench")
MAX_BODY_LINES = 40


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = function.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_docstring and len(body) == 1:
        return 0
    first = body[1] if has_docstring else body[0]
    return function.end_lineno - first.lineno + 1


def long_functions(source: str, path: str) -> list[str]:
    return [f"{path}:{node.lineno} {node.name} ({body_lines(node)} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > MAX_BODY_LINES]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_body_is_longer_than_40_lines(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        offenders += long_functions(path.read_text(), str(path.relative_to(REPO)))
    assert not offenders, "functions over 40 lines of body:\n" + "\n".join(offenders)


def test_the_check_finds_a_long_function():
    source = "def f():\n    \"\"\"doc\"\"\"\n" + "    x = 1\n" * 41
    assert long_functions(source, "x.py") == ["x.py:1 f (41 lines)"]
    assert long_functions("def g():\n    \"\"\"doc\"\"\"\n" + "    x = 1\n" * 40, "x.py") == []
