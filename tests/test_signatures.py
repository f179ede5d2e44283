"""Keeps the package's signatures short: settings travel as options objects
(CalibrationConfig, EvalOptions, SplitOptions, ...), not as long parameter lists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "svdecode"
MAX_PARAMS = 12


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter (``*args`` and ``**kwargs`` count one each) but a method's self/cls."""
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return n - 1 if names and names[0].arg in ("self", "cls") else n


def long_signatures(root: Path, limit: int) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > limit:
                out.append(
                    f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({parameter_count(node)})"
                )
    return out


def test_no_function_takes_more_than_12_parameters():
    assert long_signatures(PACKAGE, MAX_PARAMS) == []


def test_the_count_sees_every_kind_of_parameter(tmp_path):
    (tmp_path / "m.py").write_text(
        "def f(a, /, b, *c, d, **e): pass\n"
        "class K:\n    def g(self, a, b): pass\n"
        "def h(" + ", ".join(f"p{i}" for i in range(13)) + "): pass\n"
    )
    tree = ast.parse((tmp_path / "m.py").read_text())
    counts = {n.name: parameter_count(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert counts == {"f": 5, "g": 2, "h": 13}
    assert [s.split()[1] for s in long_signatures(tmp_path, MAX_PARAMS)] == ["h"]


@pytest.mark.parametrize("literal", ['"truthfulqa_mc"', '"truthfulqa_gen"', '"commonsense"'])
def test_task_family_names_are_defined_once(literal):
    """The task-family names are data of svdecode.catalog; everything else reads them (or the
    registry, svdecode.eval.tasks.TASKS)."""
    forms = (literal, literal.replace('"', "'"))
    holders = {
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if any(f in p.read_text() for f in forms)
    }
    assert holders == {"catalog.py"}
