"""The README's "Paper → code" table names real places: every file it lists exists and defines every symbol a row
names (`Class`, `function`, `CONSTANT`, `Class.method`; a method counts only in the class body that defines it).
Files are parsed with `ast`, nothing is imported, so the check is fast and runs without optional dependencies."""

import ast
import re
from functools import cache

from tests.helpers import REPO

SECTION = "## Paper → code"
# What the package implements of arXiv 2507.00425; a row citing each must stay in the table.
IMPLEMENTED = ["§3.1", "Eq. 1", "Eq. 3", "Eq. 4", "Eq. 5", "Eq. 6", "Eq. 7", "Eq. 8", "Eq. 9", "Lemma 1", "Alg. 1",
               "Alg. 2", "Prop. 1", "Prop. 2", "Prop. 3", "Prop. 4", "App. G"]


def table_rows() -> list[tuple[str, str, list[str]]]:
    """(paper, file, symbols) for every row of the README's table."""
    section = REPO.joinpath("README.md").read_text().split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # `\|` is a | in a cell
        if cells[0] == "paper" or set(cells[0]) <= set("-: "):
            continue
        assert len(cells) == 4, line
        rows.append((cells[0], cells[2].strip("`"), re.findall(r"`([^`]+)`", cells[3])))
    return rows


def _names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """The names a module or class body binds at its top level: classes, functions, assigned names."""
    names = {}
    for node in body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update((target.id, node) for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


@cache
def _module(path: str) -> ast.Module:
    return ast.parse(REPO.joinpath(path).read_text(), filename=path)


def missing(path: str, symbols: list[str]) -> list[str]:
    """What of `path` and its `symbols` does not exist, as readable lines (empty when everything does)."""
    if not REPO.joinpath(path).is_file():
        return [f"{path}: no such file"]
    problems = []
    for symbol in symbols:
        body = _module(path).body
        for part in symbol.split("."):
            node = _names(body).get(part)
            if node is None:
                problems.append(f"{path}: {symbol} is not defined ({part!r} missing)")
                break
            body = getattr(node, "body", [])
    return problems


def test_the_table_cites_everything_the_package_implements():
    rows = table_rows()
    cited = " ; ".join(paper for paper, _, _ in rows)
    assert not [item for item in IMPLEMENTED if not re.search(re.escape(item) + r"(?![\d.])", cited)]
    assert all(file and symbols for _, file, symbols in rows), "every row names a file and at least one symbol"


def test_every_file_exists_and_defines_every_symbol_named():
    problems = [problem for _, path, symbols in table_rows() for problem in missing(path, symbols)]
    assert not problems, "README.md, Paper → code:\n" + "\n".join(problems)


def test_a_misspelt_symbol_or_file_is_reported():
    _, path, symbols = table_rows()[0]
    owner, _, member = symbols[-1].rpartition(".")
    misspelt = f"{owner}.{member}x" if owner else f"{member}x"
    assert missing(path, [misspelt]) == [f"{path}: {misspelt} is not defined ({member + 'x'!r} missing)"]
    assert missing(path + "x", symbols) == [f"{path}x: no such file"]
