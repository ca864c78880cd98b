"""The engine's layout, read statically from its source (ast over every module, imports inside
functions included): no import cycles between its modules, no front end imported by the engine,
and the evaluation package imported by nothing in the product."""

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg" / "crossdomainseg"
# top-level names of the front ends and their toolkits (trame, trame_slicer, trame_vtk, ...)
FRONT_ENDS = ("CrossDomainSegWeb", "CrossDomainSegLib", "slicer", "qt", "vtk", "trame")
EVALUATION = "crossdomainseg.evaluation"
# modules that may import the evaluation package: the command-line dispatcher (it only lists the
# subcommands) and the evaluation package itself
MAY_IMPORT_EVALUATION = ("crossdomainseg.cli",)


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder `root`."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules) -> set[str]:
    """Every module `name` imports, anywhere in its file: dotted names, relative imports resolved;
    `from P import m` counts as importing the module P.m when that is one of `modules`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            submodules = {f"{target}.{alias.name}" for alias in node.names} & set(modules)
            found.update(submodules or {target})
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports (inside the package and outside), for the package `root`."""
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles between the graph's own modules: strongly connected groups of more than
    one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node] & graph.keys()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def front_end_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, imported front-end module) for every import of a front end or its toolkit."""
    return sorted((name, imported) for name, imports in graph.items() for imported in imports
                  if imported.split(".")[0] in FRONT_ENDS or imported.split(".")[0].startswith("trame"))


def evaluation_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(product module, evaluation module) for every product module that imports the evaluation
    package."""
    def evaluation(name):
        return name == EVALUATION or name.startswith(EVALUATION + ".")

    return sorted((name, imported) for name, imports in graph.items() for imported in imports
                  if evaluation(imported) and not evaluation(name) and name not in MAY_IMPORT_EVALUATION)


@pytest.fixture(scope="module")
def graph():
    return import_graph(ENGINE)


def test_the_graph_sees_relative_absolute_and_function_level_imports(graph):
    assert "crossdomainseg.interactive.session" in graph["crossdomainseg.interactive"]  # from .session import
    assert "crossdomainseg.imageio" in graph["crossdomainseg.demo"]  # from . import imageio
    # inside a function: the session's default click method
    assert "crossdomainseg.interactive.sphere" in graph["crossdomainseg.interactive.session"]
    assert "SimpleITK" in graph["crossdomainseg.imageio"]


def test_the_engine_has_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_engine_never_imports_a_front_end(graph):
    assert front_end_imports(graph) == []


def test_the_product_never_imports_the_evaluation_package(graph):
    assert any(name.startswith(EVALUATION + ".") for name in graph)
    assert evaluation_imports(graph) == []


def test_the_checks_catch_a_cycle_a_front_end_and_the_evaluation_in_the_product(tmp_path):
    package = tmp_path / "crossdomainseg"
    (package / "evaluation").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from .b import g\n",  # inside a function: still a cycle
        "b.py": "import crossdomainseg.a\n",
        "web.py": "def serve():\n    from CrossDomainSegWeb.__main__ import main\n    import trame_slicer\n",
        "engine.py": "from .evaluation import robot\n",
        "cli.py": "from .evaluation import robot\n",  # the dispatcher may
        "evaluation/__init__.py": "",
        "evaluation/robot.py": "from .. import engine\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(package)
    assert cycles(graph) == [["crossdomainseg.a", "crossdomainseg.b"],
                             ["crossdomainseg.engine", "crossdomainseg.evaluation.robot"]]
    assert front_end_imports(graph) == [("crossdomainseg.web", "CrossDomainSegWeb.__main__"),
                                        ("crossdomainseg.web", "trame_slicer")]
    assert evaluation_imports(graph) == [("crossdomainseg.engine", "crossdomainseg.evaluation.robot")]


def test_eval_clicks_chooses_only_among_methods_front_ends_click_with():
    from crossdomainseg.evaluation.baselines import BASELINES
    from crossdomainseg.evaluation.cli import CHOOSABLE, METHODS
    from crossdomainseg.interactive.refiner import CLASSICAL

    assert set(CHOOSABLE) == {"prompt", "brs", "learned", *CLASSICAL}
    assert set(CLASSICAL) < set(BASELINES) and set(BASELINES) <= set(METHODS)
    assert "region_growing" in METHODS and "region_growing" not in CHOOSABLE  # compared, never chosen
