"""The layering rules of ARCHITECTURE.md, checked on the source: no import cycles, core never imports a vertical,
no vertical imports another, and no private name is imported from another module."""

import ast
from pathlib import Path

PACKAGES = Path(__file__).resolve().parents[2] / "packages"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGES.glob("*/src/ditlab/**/*.py"):
        parts = path.relative_to(path.parents[len(path.relative_to(PACKAGES).parts) - 3]).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `import` / `from ... import` of ditlab modules, at module level or inside a
    function: an import deferred into a function still ties the two modules together. Imports for type checkers
    only (`if TYPE_CHECKING:`) never run and are left out."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    out = []
    for node in (n for n in ast.walk(tree) if id(n) not in typing_only):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ditlab"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("ditlab")]
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for target, names in _imports(path):
            for name in names:  # `from ditlab.core import hooks` imports the submodule
                if f"{target}.{name}" in mods:
                    graph[m].add(f"{target}.{name}")
            if target in mods and not (m == target or m.startswith(target + ".")):
                graph[m].add(target)  # (a module's own package is imported before it anyway: not an edge)
    return graph


def test_modules_are_found():
    mods = _modules()
    assert "ditlab.core.hooks" in mods and "ditlab.medical.acquisition" in mods


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_layers_point_down_and_no_private_names_cross_modules():
    mods = _modules()
    for m, path in mods.items():
        vertical = m.split(".")[1]
        for target, names in _imports(path):
            other = target.split(".")[1] if "." in target else None
            assert not (vertical == "core" and other not in (None, "core")), f"{m} imports the vertical {target}"
            assert other in (None, "core", vertical), f"{m} imports another vertical: {target}"
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{m} imports private names {private} from {target}"
