"""The code base's shape: no import cycles (imports inside functions included), no import
inside a function but the command's deliberate lazy ones, modules a reader can hold in
mind, and the torch-free core, service and batch scoring never reaching into training."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vigil"
MAX_LINES = 400
# `vigil` builds only the named subcommand's parser, so `vigil serve` never imports torch.
LAZY_IMPORTS_ALLOWED = {"vigil.cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The vigil modules an import statement loads (a `from package import module` names it)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        names = [
            f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES
        ]
        names = names or [base]
    return [name for name in names if name.split(".")[0] == "vigil" and name in MODULES]


def imports_of(path: Path) -> tuple[set[str], list[str]]:
    """(every vigil module imported anywhere in the file, the imports made inside functions)."""
    tree = ast.parse(path.read_text())
    targets: set[str] = set()
    lazy: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            targets.update(imported(node))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lazy += [
                ast.unparse(sub)
                for sub in ast.walk(node)
                if isinstance(sub, ast.Import | ast.ImportFrom)
            ]
    return targets, lazy


GRAPH = {name: imports_of(path)[0] - {name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    assert len(GRAPH) > 30
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_no_import_inside_a_function_but_the_command_s() -> None:
    lazy = {name: imports_of(path)[1] for name, path in MODULES.items()}
    offenders = {
        name: found for name, found in lazy.items() if found and name not in LAZY_IMPORTS_ALLOWED
    }
    assert not offenders


def test_modules_stay_small() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += GRAPH.get(node, ())
    return seen


def test_core_service_and_batch_never_reach_training_or_torch() -> None:
    for name, path in MODULES.items():
        if name.startswith(("vigil.core", "vigil.service", "vigil.batch")):
            assert not any(m.startswith("vigil.training") for m in reachable(name)), name
            tree = ast.parse(path.read_text())
            roots = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                (node.module or "").split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
            }
            assert "torch" not in roots, name
