"""No recstack module imports itself back through a circle of module-level imports.

The graph is read from the source with `ast`, nothing is imported: an edge A -> B for every import
that runs when A is imported (module level, and inside top-level `if` / `try` / `with` / class
bodies), not those inside functions, nor under `if TYPE_CHECKING:`. `import a.b.c` and
`from a.b import c` also import the packages `a` and `a.b` (their `__init__`), so those count too,
except a package that holds the importing module: it is already being imported by then.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "recstack"


def module_names(root: Path = SRC / PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every module and package under `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_nodes(body: list[ast.stmt]):
    """The statements that run on import: recurses into blocks, never into functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_time_nodes(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _import_time_nodes([n for n in inner if isinstance(n, (ast.stmt, ast.excepthandler,
                                                                                 ast.match_case))])


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The recstack modules that importing `name` imports directly."""
    is_package = path.name == "__init__.py"
    named: set[str] = set()  # what the import statements name
    for node in _import_time_nodes(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                base = name.split(".")[: name.count(".") + 1 - node.level + is_package]
                origin = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import sub` names the module pkg.sub, else pkg itself
                named.add(f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin)
    # the packages holding the importing module are already being imported when it runs
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1 + is_package)}
    edges = {module for module in named if module in known}
    for module in named:  # a named module's packages run first: `import a.b.c` runs a and a.b
        parts = module.split(".")
        edges.update(parent for parent in (".".join(parts[:i]) for i in range(1, len(parts)))
                     if parent in known and parent not in own)
    edges.discard(name)
    return edges


def import_graph() -> dict[str, set[str]]:
    files = module_names()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, group) for group in groups]


def _one_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest way from the group's first module back to itself, within the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group always has one


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "recstack.data.load" in graph["recstack.data"]
    assert "recstack.data.formats.cells" in graph["recstack.data.formats.table"]
    assert "recstack.data.datasets.spec" in graph["recstack.data.datasets.movielens"]
    # an import inside a function runs later, when the module is complete: not an edge
    assert "recstack.data.datasets" not in graph["recstack.data.features"]


def test_cycles_are_found_and_printed():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_package_that_imports_back_its_own_module_is_a_cycle(tmp_path):
    # the shape the named datasets had: the package imports a module that imports from the package
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("class Spec: ...\nfrom pkg.specs import ALL  # noqa: E402\n")
    (package / "specs.py").write_text("from . import Spec\nALL = (Spec(),)\n")
    (package / "lazy.py").write_text("def later():\n    import pkg\n")
    files = module_names(package)
    graph = {name: imported_modules(name, path, set(files)) for name, path in files.items()}
    assert cycles(graph) == [["pkg", "pkg.specs", "pkg"]]


def test_no_module_imports_itself_back():
    found = cycles(import_graph())
    assert not found, "import cycles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in found)
