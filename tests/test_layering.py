"""The package's shape (docs/STYLE.md): dependencies point one way, downward, with no import cycles
(imports inside functions count), and no module grows past about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "radimagenet"

# Higher layers may import lower ones, never the reverse; packages on one layer do not import each other.
LAYERS = {
    "errors": 0,
    "config": 1,
    "io": 2,
    "dataset": 3,
    "ingest": 4, "data": 4, "eval": 4, "ops": 4,
    "models": 5,
    "train": 6,
    "tasks": 7,
    "commands": 8,
    "cli": 9,
    "__main__": 10,
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str | None:
    """The radimagenet module ``name`` refers to (a module, or a package's ``__init__``), or None."""
    parts = name.split(".")
    while parts:
        base = PACKAGE.parent.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


def imports(path: Path) -> set[str]:
    """Every radimagenet module ``path`` imports, at any depth (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {m for n in names if n.startswith("radimagenet") and (m := resolve(n))}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root: its lazy aliases are the public facade
    return parts[1], LAYERS[parts[1]]


def test_every_top_level_module_has_a_layer():
    tops = {module_name(p).split(".")[1] for p in PACKAGE.rglob("*.py") if module_name(p) != "radimagenet"}
    assert tops <= set(LAYERS), sorted(tops - set(LAYERS))


def test_dependencies_point_down():
    upward = []
    for module, deps in graph().items():
        here = layer(module)
        for dep in deps:
            there = layer(dep)
            if here is None or there is None or here[0] == there[0]:
                continue
            if there[1] >= here[1]:
                upward.append(f"{module} -> {dep}")
    assert not upward, "imports that do not point down:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_modules_stay_small():
    big = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
