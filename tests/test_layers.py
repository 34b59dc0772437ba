"""The import contract: every import points down the stack of `knockoff_lab/__init__.py`, and no
module imports itself back through others, wherever the import statement stands (a function-level
import is checked like any other, so none can hide a loop)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lowest first; a package may import its own modules and those of lower layers, nothing else
LAYERS = [
    ["knockoff_lab.core"],
    ["knockoff_lab.nets", "knockoff_lab.evaluation"],
    ["knockoff_lab.defences", "knockoff_lab.ood"],
    ["knockoff_lab.attacks"],  # a defence-aware attacker models the defences (attacks.ddae)
    ["knockoff_lab.api"],
    ["knockoff_lab.ownership"],  # verifiers ask a suspect through any QueryAPI
    ["datamodules"],
    ["lightning_modules"],
    ["knockoff_lab.pipeline"],
]
PACKAGES = [package for layer in LAYERS for package in layer]


def package_of(module: str) -> str | None:
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)


def layer_of(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def project_sources() -> dict[str, str]:
    """Module name -> source of every module of the layered packages."""
    sources = {}
    for top in ("knockoff_lab", "datamodules", "lightning_modules"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            sources[name] = path.read_text()
    return sources


def imports(module: str, source: str, known: set[str]) -> set[str]:
    """The project modules `module` imports, anywhere in its source (`from a.b import c` names
    module `a.b.c` when that is a module, else `a.b`)."""
    found = set()
    package = module if module + ".__init__" in known else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if package_of(name) is not None}


def violations(sources: dict[str, str]) -> list[str]:
    """Every import that points up or sideways, and every import cycle, as one line each."""
    known = set(sources) | {f"{name}.__init__" for name in sources if _is_package(name, sources)}
    graph = {module: imports(module, source, known) for module, source in sources.items()}
    problems = []
    for module, targets in sorted(graph.items()):
        mine = package_of(module)
        for target in sorted(targets):
            theirs = package_of(target)
            if theirs != mine and layer_of(theirs) >= layer_of(mine):
                problems.append(f"{module} imports {target}: {theirs} is not below {mine}")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def _is_package(name: str, sources: dict[str, str]) -> bool:
    return any(other.startswith(name + ".") for other in sources)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that lies on one (depth-first search)."""
    state, found, stack = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_points_down_and_none_loops():
    assert violations(project_sources()) == []


def test_a_planted_upward_import_is_caught_even_inside_a_function():
    sources = project_sources()
    planted = dict(sources)
    planted["knockoff_lab.core.errors"] += "\n\ndef later():\n    import lightning_modules.victim\n"
    assert violations(sources) == []
    assert violations(planted)[0] == (
        "knockoff_lab.core.errors imports lightning_modules.victim: lightning_modules is not "
        "below knockoff_lab.core"
    )


def test_a_planted_loop_inside_one_package_is_caught():
    planted = dict(project_sources())
    planted["knockoff_lab.pipeline.trust"] += "\nfrom knockoff_lab.pipeline.entry import main\n"
    problems = violations(planted)
    assert problems and all(p.startswith("import cycle:") for p in problems)
    assert any(
        "knockoff_lab.pipeline.trust" in p and "knockoff_lab.pipeline.entry" in p for p in problems
    )


def test_every_package_of_the_tree_has_a_layer():
    """A new top-level package of `knockoff_lab` must be placed in the stack."""
    tops = {
        name.split(".")[1]
        for name in project_sources()
        if name.count(".") >= 1 and name.startswith("knockoff_lab.")
    }
    assert {f"knockoff_lab.{top}" for top in tops} <= set(PACKAGES)
