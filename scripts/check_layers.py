"""Check the package's import structure: no import cycles between modules, the library core never
imports the harness (train/, data/, eval/, demo, cli) or the integrations, and the integrations
import only the core.

Counts every ``import`` in a module, also those inside functions (a lazy import is still a
dependency). Prints the layers and exits 1 on a violation. Run: python scripts/check_layers.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "svdecode"
CORE = {
    "svdecode",
    "svdecode.steering",
    "svdecode.strength",
    "svdecode.objectives",
    "svdecode.streams",
    "svdecode.kv_cache",
    "svdecode.steered_model",
    "svdecode.scoring",
    "svdecode.calibration",
    "svdecode.config",
    "svdecode.models",
    "svdecode.fileio",
    "svdecode.versions",
    "svdecode.errors",
    "svdecode.checks",
    "svdecode.fingerprint",
    "svdecode.rundir",
    "svdecode.distributed",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The svdecode modules ``path`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("svdecode")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("svdecode"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or {node.module}
    return found & modules


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def main() -> int:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    # a package's __init__ importing its own submodules is how it re-exports them, not a cycle
    graph = {
        m: {
            n
            for n in imports(p, set(files))
            if n != m and not (p.name == "__init__.py" and n.startswith(m + "."))
        }
        for m, p in files.items()
    }
    bad = [f"{m} imports {n}" for m in sorted(CORE & set(graph)) for n in sorted(graph[m] - CORE)]
    integrations = {m for m in graph if m.startswith("svdecode.integrations")}
    bad += [f"{m} imports {n}" for m in sorted(integrations) for n in sorted(graph[m] - CORE - integrations)]
    cycle = find_cycle(graph)
    print(f"{len(graph)} modules; core: {', '.join(sorted(CORE))}")
    for line in bad:
        print(f"LAYER VIOLATION: {line}")
    if cycle:
        print("IMPORT CYCLE: " + " -> ".join(cycle))
    if not bad and not cycle:
        print("no import cycles; the core imports only the core; the integrations only the core")
    return 1 if bad or cycle else 0


if __name__ == "__main__":
    sys.exit(main())
