"""The package's layering: each stage imports only from the stages below it, at module level."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bench"
# bottom to top; a module may import from its own layer and the ones before it
LAYERS = ["errors", "strict", "tricks", "config", "runs", "engine", "ablation", "report", "perf", "fidelity", "cli"]
# dependencies of one path only may be imported where they are used: W&B, SLURM submission, the
# bundled digits (scikit-learn)
LAZY_OK = {"wandb", "submitit", "sklearn"}


def layer(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "bench"
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return len(LAYERS)          # the package root and `python -m bench` sit on top
    return LAYERS.index(parts[1])


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def bench_imports(tree: ast.AST, module: str, known: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
    """(imported bench module, line): `from bench.x import y` is bench.x.y when that is a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "bench":
            found += [(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module, node.lineno)
                      for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((f"relative import in {module}", node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "bench"]
    return found


def test_every_module_belongs_to_a_layer():
    for name in modules():
        layer(name)   # raises for a module outside the known stages


def test_imports_only_point_down_the_layers():
    upward = []
    for name, tree in modules().items():
        for target, line in bench_imports(tree, name):
            assert not target.startswith("relative"), f"{name}:{line}: {target}"
            if layer(target) > layer(name):
                upward.append(f"{name}:{line} imports {target}")
    assert upward == []


def test_no_function_level_imports_except_optional_dependencies():
    inner = []
    for name, tree in modules().items():
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    roots = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    roots = {(node.module or "").split(".")[0]}
                else:
                    continue
                if roots - LAZY_OK:
                    inner.append(f"{name}:{node.lineno} {func.name}() imports {', '.join(sorted(roots))}")
    assert inner == []


def test_no_import_cycles_between_modules():
    trees = modules()
    known = frozenset(trees)
    graph = {name: {t for t, _ in bench_imports(tree, name, known) if t in trees and t != name} for name, tree in trees.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}
