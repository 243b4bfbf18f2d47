"""The house rules of shared/DESIGN.md that a reader can check mechanically.

Every import in the package counts, also one inside a function: arrows point
down, so the graph of timm_bcos modules has no cycle, and `layers/` imports
only torch, the standard library and itself.
"""
import ast
import pathlib
import sys

import timm_bcos

PACKAGE = pathlib.Path(timm_bcos.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute names of every module imported anywhere in the file (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` imports a module
    return names


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        # a module's own ancestors are not edges: Python runs a package's __init__ before any
        # of its modules, and `from . import x` names the package only to reach x
        ancestors = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in _imports(path) if t in files and t != name and t not in ancestors}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(map(" <-> ".join, cycles))


def test_layers_import_only_torch_and_themselves():
    allowed_roots = {"torch", "triton", "timm_bcos"} | set(sys.stdlib_module_names)
    offenders = {}
    for path in (PACKAGE / "layers").rglob("*.py"):
        for name in _imports(path):
            root = name.split(".")[0]
            if root not in allowed_roots or (root == "timm_bcos" and not name.startswith("timm_bcos.layers")):
                offenders.setdefault(_module_name(path), set()).add(name)
    assert not offenders, f"layers/ must know nothing but torch (triton for its kernels): {offenders}"


def test_the_check_sees_a_cycle_and_a_function_level_import():
    """The checker itself: a cycle closed by an import inside a function is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    source = PACKAGE / "layers" / "functional.py"
    assert "timm_bcos.layers.kernels" in _imports(source)  # `from . import kernels`
    tree_has_function_import = any(
        isinstance(n, (ast.Import, ast.ImportFrom))
        for f in ast.walk(ast.parse((PACKAGE / "layers" / "kernels" / "__init__.py").read_text()))
        if isinstance(f, ast.FunctionDef) for n in ast.walk(f))
    assert tree_has_function_import and "timm_bcos.layers.kernels._ops" in _imports(
        PACKAGE / "layers" / "kernels" / "__init__.py")
