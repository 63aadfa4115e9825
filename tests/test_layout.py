"""The code's layout keeps its promises: imports run one way, packages keep their privates.

Walks every module of ``curation/``, ``flows/`` and ``curate/`` (the code's own import
statements, read with ``ast``, lazy imports inside functions included) and fails on:

* an import circle between modules (the strongly connected components of the graph);
* an import of another package's private name: a module or attribute starting with ``_``
  taken from a different package ("package": one stage under ``curation/stages/``, one
  sub-package or top-level module of ``curation``, ``flows``, ``curate``);
* a stage name written into the runner or the flow: they read ``curation.spine``.

The checks are shown able to fail on a small fake tree first.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from curation import spine

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("curation", "flows", "curate")


def module_name(path: Path, repo: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(repo: Path, roots: Iterable[str] = ROOTS) -> dict[str, Path]:
    return {module_name(p, repo): p for root in roots for p in sorted((repo / root).rglob("*.py")) if "__pycache__" not in p.parts}


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import of a known module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] in ROOTS]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in ROOTS:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None) if sub in known else (target, a.name))
    return [(m, n) for m, n in out if m in known or m.rpartition(".")[0] in known]


def unit(module: str) -> str:
    """The package a module belongs to: a stage, a sub-package or top-level module of curation, flows, curate."""
    parts = module.split(".")
    if parts[0] != "curation":
        return parts[0]
    if parts[1:2] == ["stages"] and len(parts) > 2:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def graph(repo: Path) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph, and the private-name imports across packages (one line each)."""
    mods = modules(repo)
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        for target, attr in imports(path, name, known):
            target = target if target in known else target.rpartition(".")[0]
            edges[name].add(target)
            if unit(target) == unit(name):
                continue
            tail = target.split(".")[len(unit(target).split(".")) :]
            if any(p.startswith("_") and p != "__init__" for p in tail) or (attr and attr.startswith("_") and not attr.startswith("__")):
                private.append(f"{name} imports {target}{'.' + attr if attr else ''}")
    return edges, private


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    edges, _ = graph(REPO)
    assert len(edges) > 100  # the walk found the code
    assert circles(edges) == []


def test_no_package_imports_another_packages_private_names() -> None:
    _, private = graph(REPO)
    assert private == []


def test_the_runner_and_the_flow_name_no_stage() -> None:
    """The stage order is written once (``curation/spine.py``): the modules that run stages,
    publish them and key their cache read the stages' declarations instead of naming them."""
    names = {s.name for s in spine.SPINE}
    places = [*sorted((REPO / "curation" / "run").glob("*.py")), *sorted((REPO / "flows").glob("*.py"))]
    named = []
    for path in places:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                named.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert len(places) > 8 and named == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A fake tree with a circle, a private import across packages and a stage name in the flow."""
    files = {
        "curation/__init__.py": "",
        "curation/a.py": "from curation.b import x\n",
        "curation/b.py": "def f():\n    from curation import a\nx = 1\n",
        "curation/store/__init__.py": "",
        "curation/store/_inner.py": "y = 2\n",
        "curation/report/__init__.py": "",
        "curation/report/html.py": "from curation.store._inner import y\nfrom curation.store import _hidden\n",
        "curation/stages/__init__.py": "",
        "curation/stages/ingest/__init__.py": "",
        "curation/stages/ingest/_fields.py": "z = 3\n",
        "curation/stages/ingest/readers.py": "from curation.stages.ingest._fields import z\n",  # same package: allowed
        "flows/__init__.py": "",
        "curate/__init__.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges, private = graph(tmp_path)
    assert circles(edges) == [["curation.a", "curation.b"]]
    assert private == ["curation.report.html imports curation.store._inner.y", "curation.report.html imports curation.store._hidden"]


@pytest.mark.parametrize("stage", [s.name for s in spine.SPINE])
def test_every_stage_declares_its_upstream_before_it(stage: str) -> None:
    order = [s.name for s in spine.SPINE]
    assert all(order.index(u) < order.index(stage) for u in spine.stage(stage).upstream)
