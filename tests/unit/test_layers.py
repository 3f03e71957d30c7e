"""The package layers of ``pipeline`` point one way (README, "Layout").

Every import counts, including those inside functions and ``TYPE_CHECKING`` blocks: a
lazy import that closes a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "pipeline"

# Lowest first. A package may import packages of lower layers; within a layer, sideways
# imports are allowed as long as they make no cycle.
LAYERS: list[set[str]] = [
    {"errors", "procs", "files"},
    {"config", "metrics"},
    {"shared_data", "image_folders"},
    {"face"},  # the pure face core
    {"runtime", "nets"},
    {"models"},  # model store, default build, promotion
    {"gallery"},
    {"evaluation"},
    {"serve", "train"},
    {"stream"},
    {"bridge"},  # the event bridge: reads the stream's output topics
    {"bench"},  # measures the parts below; only the CLI imports it
    {"cli"},
]
# Nothing reachable from the face core may import these.
INFRASTRUCTURE = {"kafka", "ray", "pymilvus", "milvus_lite", "fastapi", "starlette", "uvicorn"}


def _module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(root: Path) -> dict[str, set[str]]:
    """Module -> every module name it imports (absolute; ``from a import b`` yields
    ``a.b`` when that is a module of the tree, else ``a``)."""
    modules = {_module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[
                        : len(name.split(".")) - node.level + (1 if is_pkg else 0)
                    ]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                found.update(subs or [mod])
        graph[name] = found
    return graph


def package_of(module: str, root_name: str) -> str | None:
    """The top-level package (or module) of ``root_name`` that ``module`` belongs to."""
    parts = module.split(".")
    if parts[0] != root_name:
        return None
    return parts[1] if len(parts) > 1 else root_name


def package_graph(graph: dict[str, set[str]], root_name: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for mod, targets in graph.items():
        a = package_of(mod, root_name)
        for t in targets:
            b = package_of(t, root_name)
            if a is not None and b is not None and a != b and b != root_name:
                out[a].add(b)
    return out


def upward_imports(pkgs: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    level = {p: i for i, layer in enumerate(layers) for p in layer}
    return sorted(
        f"{a} (layer {level[a]}) imports {b} (layer {level[b]})"
        for a, targets in pkgs.items()
        for b in targets
        if a in level and b in level and level[b] > level[a]
    )


def cycles(pkgs: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(pkgs.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(pkgs) | {w for ws in pkgs.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def infrastructure_reachable(
    graph: dict[str, set[str]], start_prefix: str, banned: set[str]
) -> dict[str, list[str]]:
    """Banned top-level modules imported by any module reachable from the modules under
    ``start_prefix``, each with the chain of imports that reaches it."""
    chains = {m: [m] for m in graph if m == start_prefix or m.startswith(start_prefix + ".")}
    todo = list(chains)
    hits: dict[str, list[str]] = {}
    while todo:
        mod = todo.pop()
        for t in sorted(graph.get(mod, ())):
            top = t.split(".")[0]
            if top in banned and top not in hits:
                hits[top] = [*chains[mod], t]
            if t in graph and t not in chains:
                chains[t] = [*chains[mod], t]
                todo.append(t)
    return hits


# -- the project ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> dict[str, set[str]]:
    return read_imports(ROOT)


def test_every_package_has_a_layer(project: dict[str, set[str]]) -> None:
    pkgs = {package_of(m, "pipeline") for m in project} - {"pipeline", None}
    placed = set().union(*LAYERS)
    assert pkgs <= placed, f"put these in LAYERS (and the README): {sorted(pkgs - placed)}"


def test_no_package_imports_one_above_it(project: dict[str, set[str]]) -> None:
    assert upward_imports(package_graph(project, "pipeline"), LAYERS) == []


def test_no_two_packages_import_each_other(project: dict[str, set[str]]) -> None:
    assert cycles(package_graph(project, "pipeline")) == []


def test_only_the_cli_imports_the_benchmarks(project: dict[str, set[str]]) -> None:
    users = {a for a, targets in package_graph(project, "pipeline").items() if "bench" in targets}
    assert users <= {"cli"}, sorted(users)


def test_no_infrastructure_reachable_from_the_face_core(project: dict[str, set[str]]) -> None:
    assert infrastructure_reachable(project, "pipeline.face", INFRASTRUCTURE) == {}


def test_importing_the_face_core_loads_no_infrastructure() -> None:
    """The same, as Python sees it: a fresh interpreter imports every face module."""
    mods = sorted(m for m in read_imports(ROOT) if m.startswith("pipeline.face"))
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"print(sorted(k for k in sys.modules if k.split('.')[0] in {sorted(INFRASTRUCTURE)!r}))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout


def test_the_face_config_section_loads_no_other_section() -> None:
    code = (
        "import sys, pipeline.config.face\n"
        "print(sorted(k for k in sys.modules if k.startswith('pipeline.')))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "['pipeline.config', 'pipeline.config.face']", res.stdout


# -- the checks themselves catch what they claim to ----------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checks_catch_an_upward_import_a_hidden_cycle_and_infrastructure(
    tmp_path: Path,
) -> None:
    root = _tree(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/core.py": "from pkg.low import helper\n",
            # the chain to infrastructure goes through a sideways helper and a lazy import
            "low/helper.py": "def f():\n    from pkg.high import app\n",
            "high/__init__.py": "",
            "high/app.py": "import ray\nfrom pkg.low.core import x\n",
            "side/__init__.py": "from .other import y\n",
            "side/other.py": "from pkg import low\n",
        },
    )
    graph = read_imports(root)
    pkgs = package_graph(graph, "pkg")
    assert pkgs["side"] == {"low"}  # relative import resolved
    assert upward_imports(pkgs, [{"low"}, {"high", "side"}]) == [
        "low (layer 0) imports high (layer 1)"
    ]
    assert cycles(pkgs) == [["high", "low"]]
    hits = infrastructure_reachable(graph, "pkg.low.core", {"ray"})
    assert hits == {"ray": ["pkg.low.core", "pkg.low.helper", "pkg.high.app", "ray"]}
