"""Layering rules of the ``gaincell`` package, checked by reading its source with ``ast`` (nothing is imported).

- no import cycle among gaincell modules, counting every import: module level, inside functions, under
  ``if TYPE_CHECKING`` (a cycle that is only deferred is still a cycle in the design);
- no private name (one leading underscore) taken from another gaincell module, neither by ``from ... import _x``
  nor by ``module._x`` after importing the module;
- no library module chooses the matplotlib backend (``matplotlib.use`` / ``pyplot.switch_backend``): that is the
  caller's choice;
- no source file over 600 lines unless the first paragraph of its module docstring says why, with the words
  "Longer than 600 lines because";
- only the command line (``gaincell/cli/``) imports ``argparse``: the library takes parameters, not flags.

Each failure lists every offending file and line, so one run shows all the work left.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "gaincell"
MAX_LINES = 600
LONG_FILE_REASON = "longer than 600 lines because"
CLI_PACKAGE = "gaincell.cli"


@dataclass(frozen=True)
class Import:
    """One import statement's target, as seen from the module that holds it."""

    target: str  # the gaincell module it loads (resolved: "gaincell.kernel", "gaincell" for the package itself)
    names: tuple[str, ...]  # the names a `from` import takes from the target ("*" included); () for `import x`
    line: int
    where: str  # "module", "function" or "type-checking"


@dataclass(frozen=True)
class SourceModule:
    name: str  # dotted module name: "gaincell.cli.common", "gaincell.cli" for gaincell/cli/__init__.py
    path: Path
    tree: ast.Module
    text: str

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def label(self) -> str:
        return str(self.path.relative_to(PACKAGE_ROOT.parent))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def source_modules() -> tuple[SourceModule, ...]:
    modules = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        modules.append(SourceModule(module_name(path), path, ast.parse(text, filename=str(path)), text))
    return tuple(modules)


@cache
def module_names() -> frozenset[str]:
    return frozenset(m.name for m in source_modules())


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_type_checking_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve_from(module: SourceModule, node: ast.ImportFrom) -> str | None:
    """The absolute module a `from ... import` names (relative imports resolved), or None if it is not gaincell."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    return base if base == "gaincell" or base.startswith("gaincell.") else None


def imports_of(module: SourceModule) -> list[Import]:
    """Every gaincell import in the module, wherever it sits (module body, functions, classes, TYPE_CHECKING)."""
    found: list[Import] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_where = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                child_where = "function"
            elif isinstance(child, ast.If) and is_type_checking_guard(child) and where == "module":
                child_where = "type-checking"
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "gaincell" or alias.name.startswith("gaincell."):
                        found.append(Import(alias.name, (), child.lineno, child_where))
            elif isinstance(child, ast.ImportFrom):
                base = resolve_from(module, child)
                if base is not None:
                    names = tuple(a.name for a in child.names)
                    # `from gaincell import kernel` loads the submodule gaincell.kernel
                    submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in module_names()]
                    others = tuple(n for n in names if f"{base}.{n}" not in module_names())
                    for sub in submodules:
                        found.append(Import(sub, (), child.lineno, child_where))
                    if others or not submodules:
                        found.append(Import(base, others, child.lineno, child_where))
            visit(child, child_where)

    visit(module.tree, "module")
    return found


def import_graph() -> dict[str, dict[str, list[Import]]]:
    """module -> {imported gaincell module -> the imports that load it}; only modules that exist in the source."""
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in module_names()}
    for module in source_modules():
        for imp in imports_of(module):
            if imp.target in module_names() and imp.target != module.name:
                graph[module.name].setdefault(imp.target, []).append(imp)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the groups of modules that all reach one another."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
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
                components.append(sorted(component))
    return components


def shortest_cycle(graph: dict[str, dict[str, list[Import]]], members: list[str]) -> list[str]:
    """A shortest import cycle inside one strongly connected component, as [a, b, ..., a]."""
    inside = set(members)
    best: list[str] = []
    for start in members:
        # breadth-first from `start`: the first edge back to `start` closes the shortest cycle through it
        paths, frontier, found = {start: [start]}, [start], None
        while frontier and found is None:
            next_frontier = []
            for node in frontier:
                for succ in sorted(set(graph[node]) & inside):
                    if succ == start and found is None:
                        found = [*paths[node], start]
                    elif succ not in paths:
                        paths[succ] = [*paths[node], succ]
                        next_frontier.append(succ)
            frontier = next_frontier
        if found is not None and (not best or len(found) < len(best)):
            best = found
    return best


def describe_cycle(graph: dict[str, dict[str, list[Import]]], cycle: list[str]) -> str:
    by_name = {m.name: m for m in source_modules()}
    steps = []
    for a, b in itertools.pairwise(cycle):
        where = ", ".join(f"{by_name[a].label}:{imp.line} ({imp.where})" for imp in graph[a][b])
        steps.append(f"    {a} -> {b}   [{where}]")
    return "\n".join(steps)


def test_the_source_tree_is_found():
    names = module_names()
    assert {"gaincell", "gaincell.kernel", "gaincell.config", "gaincell.model"} <= names


def test_there_is_no_import_cycle_among_gaincell_modules():
    graph = import_graph()
    cycles = [c for c in strongly_connected_components(graph) if len(c) > 1]
    report = []
    for members in cycles:
        cycle = shortest_cycle(graph, members)
        report.append(f"  {len(members)} modules reach one another: {', '.join(members)}\n  e.g.\n{describe_cycle(graph, cycle)}")
    assert not cycles, "import cycles (every import counts, also inside functions):\n" + "\n".join(report)


def private_name_uses(module: SourceModule) -> list[str]:
    """Where `module` takes a private name from another gaincell module, as "file:line: what"."""
    names = module_names()
    offences = []
    for imp in imports_of(module):
        if imp.target != module.name:
            offences += [f"{module.label}:{imp.line}: from {imp.target} import {n}" for n in imp.names if is_private(n)]
    # local names bound to a gaincell module: `import gaincell.kernel as k`, `from gaincell import kernel`
    bound: dict[str, str] = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in names:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and (base := resolve_from(module, node)) is not None:
            for alias in node.names:
                if f"{base}.{alias.name}" in names:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(module.tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        chain, value = [], node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in bound:
            owner = ".".join([bound[value.id], *chain])
            if owner in names and owner != module.name:
                offences.append(f"{module.label}:{node.lineno}: {ast.unparse(node)} (private name of {owner})")
    return offences


def test_no_module_takes_a_private_name_from_another_gaincell_module():
    offences = sorted({o for module in source_modules() for o in private_name_uses(module)})
    assert not offences, "private names used across modules (give them a public name where they live):\n  " + "\n  ".join(
        offences
    )


def in_cli_package(module: SourceModule) -> bool:
    """True for files under gaincell/cli/ (the command-line package), not for a gaincell/cli.py module."""
    return (PACKAGE_ROOT / "cli") in module.path.parents


def backend_choices(module: SourceModule) -> list[str]:
    """Calls that set matplotlib's backend for the whole process: matplotlib.use(...), pyplot.switch_backend(...)."""
    use_names = {"matplotlib.use"}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            use_names |= {f"{a.asname}.use" for a in node.names if a.name == "matplotlib" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "matplotlib":
            use_names |= {a.asname or a.name for a in node.names if a.name == "use"}
    return [
        f"{module.label}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Call)
        and (ast.unparse(node.func) in use_names or ast.unparse(node.func).endswith("switch_backend"))
    ]


def test_no_library_module_chooses_the_matplotlib_backend():
    offences = [o for module in source_modules() if not in_cli_package(module) for o in backend_choices(module)]
    assert not offences, "library code must leave the matplotlib backend to the caller:\n  " + "\n  ".join(offences)


def first_docstring_paragraph(module: SourceModule) -> str:
    doc = ast.get_docstring(module.tree) or ""
    return doc.split("\n\n")[0]


def test_no_source_file_is_over_600_lines_without_a_stated_reason():
    offences = []
    for module in source_modules():
        lines = len(module.text.splitlines())
        if lines > MAX_LINES and LONG_FILE_REASON not in " ".join(first_docstring_paragraph(module).lower().split()):
            offences.append(f"{module.label}: {lines} lines")
    assert not offences, (
        f"files over {MAX_LINES} lines (split them, or say why in the first paragraph of the module docstring, "
        f'"Longer than {MAX_LINES} lines because ..."):\n  ' + "\n  ".join(offences)
    )


def argparse_imports(module: SourceModule) -> list[str]:
    return [
        f"{module.label}:{node.lineno}"
        for node in ast.walk(module.tree)
        if (isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "argparse")
    ]


def test_only_the_command_line_imports_argparse():
    offences = [o for module in source_modules() if not in_cli_package(module) for o in argparse_imports(module)]
    assert not offences, "argparse outside gaincell/cli/ (library code takes parameters, not flags):\n  " + "\n  ".join(offences)


def test_the_checks_themselves_see_what_they_look_for():
    """Guard against a checker that passes because it sees nothing: run it on small made-up sources."""
    fake = SourceModule(
        "gaincell.cli.fake",
        PACKAGE_ROOT / "cli" / "fake.py",
        ast.parse(
            "import gaincell.kernel as k\n"
            "from ..config import _hidden, HardwareConfig\n"
            "from . import common\n"
            "def f():\n"
            "    from gaincell import model\n"
            "    return k._private, model\n"
        ),
        "",
    )
    found = {(i.target, i.names, i.where) for i in imports_of(fake)}
    assert ("gaincell.kernel", (), "module") in found
    assert ("gaincell.config", ("_hidden", "HardwareConfig"), "module") in found
    assert ("gaincell.cli.common", (), "module") in found
    assert ("gaincell.model", (), "function") in found

    graph = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}
    assert [c for c in strongly_connected_components(graph) if len(c) > 1] == [["a", "b", "c"]]
    assert shortest_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]

    assert private_name_uses(fake) == [
        "gaincell/cli/fake.py:2: from gaincell.config import _hidden",
        "gaincell/cli/fake.py:6: k._private (private name of gaincell.kernel)",
    ]
    plotting = SourceModule(
        "gaincell.plots",
        PACKAGE_ROOT / "plots.py",
        ast.parse("import argparse\nimport matplotlib as mpl\nfrom matplotlib import use\nmpl.use('Agg')\nuse('Agg')\n"),
        "",
    )
    assert [o.split(": ")[0] for o in backend_choices(plotting)] == ["gaincell/plots.py:4", "gaincell/plots.py:5"]
    assert argparse_imports(plotting) == ["gaincell/plots.py:1"]
    assert not in_cli_package(plotting) and in_cli_package(fake)
