"""Check the package's import structure by folder: no import cycles between modules, and each layer
imports only what sits below it.

- core: the top-level modules and steering/, calibration/, model/, runs/ — imports only the core;
- harness: data/, train/, eval/ — imports the core and the harness, never cli/ or integrations/;
- integrations/: imports the core and itself only;
- cli/: the top, may import everything.

Counts every ``import`` in a module, also those inside functions (a lazy import is still a
dependency). A new folder must be given a layer here (an unknown folder is a violation). Prints the
layers and exits 1 on a violation. Run: python scripts/check_layers.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "svdecode"
CORE_FOLDERS = ("steering", "calibration", "model", "runs")
HARNESS_FOLDERS = ("data", "train", "eval")
# which layers each layer may import
ALLOWED = {
    "core": {"core"},
    "harness": {"core", "harness"},
    "integrations": {"core", "integrations"},
    "cli": {"core", "harness", "integrations", "cli"},
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name, from its folder; None for a folder no layer names."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # the package itself
    folder = parts[1]
    is_package = len(parts) > 2 or (ROOT / folder).is_dir()
    if not is_package or folder in CORE_FOLDERS:
        return "core"  # a top-level module, or a core folder
    if folder in HARNESS_FOLDERS:
        return "harness"
    if folder in ("integrations", "cli"):
        return folder
    return None


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


def violations(graph: dict[str, set[str]], layer=layer_of) -> list[str]:
    """Every edge of ``graph`` (module -> modules it imports) that goes up or across the layers."""
    bad = []
    for m in sorted(graph):
        if (src := layer(m)) is None:
            bad.append(f"{m} is in a folder no layer names (add it to scripts/check_layers.py)")
            continue
        for n in sorted(graph[m]):
            if (dst := layer(n)) is not None and dst not in ALLOWED[src]:
                bad.append(f"{m} ({src}) imports {n} ({dst})")
    return bad


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(p): p for p in root.rglob("*.py")}
    # a package's __init__ importing its own submodules is how it re-exports them, not a cycle
    return {
        m: {
            n
            for n in imports(p, set(files))
            if n != m and not (p.name == "__init__.py" and n.startswith(m + "."))
        }
        for m, p in files.items()
    }


def main() -> int:
    graph = import_graph()
    bad = violations(graph)
    cycle = find_cycle(graph)
    layers: dict[str, list[str]] = {}
    for m in graph:
        layers.setdefault(layer_of(m) or "?", []).append(m)
    print(f"{len(graph)} modules: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(layers.items())))
    print(
        f"core folders: {', '.join(CORE_FOLDERS)} (+ top-level modules); harness: {', '.join(HARNESS_FOLDERS)}"
    )
    for line in bad:
        print(f"LAYER VIOLATION: {line}")
    if cycle:
        print("IMPORT CYCLE: " + " -> ".join(cycle))
    if not bad and not cycle:
        print("no import cycles; core imports only core; harness no cli/integrations; integrations only core")
    return 1 if bad or cycle else 0


if __name__ == "__main__":
    sys.exit(main())
