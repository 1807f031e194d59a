"""The layer order of crnn_core and crnn_plugins, and a checker for it (used by tests/test_import_layers.py).

Every import counts: module level, inside functions (lazy imports) and in ``try`` blocks;
only imports under ``if TYPE_CHECKING:`` are left out (they never run). A module may import
modules of its own layer package and of lower layers; packages on one level are independent
of each other. ``crnn_core`` itself (the package's ``__init__``) is the public facade: it
imports its names on first use, so nothing inside ``crnn_core`` may import it, while
plugins do (``from crnn_core import Task``). The graph must hold no cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("crnn_core", "crnn_plugins")

#: Lowest first. Each level lists packages (or modules) that are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("crnn_core.base", "crnn_core._moved"),
    ("crnn_core.interfaces",),
    ("crnn_core.plugin_manager",),
    ("crnn_core.layers",),
    ("crnn_core.training",),
    ("crnn_core.rundirs",),
    ("crnn_core.experiments",),
    ("crnn_core.commandline",),
    ("crnn_core", "crnn_core.__main__"),  # the facade and ``python -m crnn_core``
    ("crnn_plugins.fast_weights",),
    ("crnn_plugins.cells", "crnn_plugins.inits", "crnn_plugins.contexts", "crnn_plugins.tasks"),
    ("crnn_plugins.commands", "crnn_plugins.experiments"),
    ("crnn_plugins",),  # the package's re-export of the fast-weights layer
)


def module_names(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of ``packages`` under ``root``."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (all nesting levels, ``if TYPE_CHECKING:`` bodies left out)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = list(node.orelse)
        stack.extend(children)
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (``from p import m`` counts as importing ``p.m``)."""
    modules = module_names(root, packages)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name.split(".") if is_package else name.split(".")[:-1]
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def level_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> tuple[int, str]:
    """(level, package) of the most specific layer entry that holds ``module``."""
    best: tuple[int, str] | None = None
    for level, entries in enumerate(layers):
        for entry in entries:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > len(best[1]):
                    best = (level, entry)
    if best is None:
        raise KeyError(f"{module} is in no layer of tests/import_layers.py: add it to LAYERS")
    return best


@dataclass(frozen=True)
class Violation:
    importer: str
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported}: {self.why}"


def layer_violations(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[Violation]:
    """Every import of a higher layer, or of an independent package on the same level."""
    out = []
    for importer, targets in sorted(graph.items()):
        here, own = level_of(importer, layers)
        for imported in sorted(targets):
            there, other = level_of(imported, layers)
            if there > here:
                out.append(Violation(importer, imported, f"{other} is above {own}"))
            elif there == here and other != own:
                out.append(Violation(importer, imported, f"{own} and {other} are independent"))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each holds an import circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found
