"""The shape of the code (DESIGN.md, "Shape of the code"), checked rather than hoped for.

- no import cycle anywhere in kiln/, counting every import (module level, inside functions,
  under TYPE_CHECKING: a lazy import still ties two modules together);
- the layering, the independence of the targets and the CLI's reach, as import-linter
  contracts in pyproject.toml ``[tool.importlinter]`` (``lint-imports`` checks them);
- no module over :data:`MAX_LINES` lines;
- nothing outside kiln/targets/ branches on a target's name.

Everything here reads the source (ast) or runs a tool on it; nothing imports torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from kiln.targets import TARGETS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "kiln"
MAX_LINES = 600


def _python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


# --------------------------------------------------------------------------- import cycles


def _modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``package_dir``."""
    out: dict[str, Path] = {}
    for path in _python_files(package_dir):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name ``from <level dots><name> import ...`` refers to, inside ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _imported_names(module: str, is_package: bool, tree: ast.AST, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module name, line) for every import in ``tree``, wherever it is."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                # `from pkg import name` imports the submodule pkg.name where there is one.
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            # importlib.import_module("kiln.x") / import_module(".x", __package__): a literal one counts too.
            target = node.args[0].value
            if target.startswith("."):
                level = len(target) - len(target.lstrip("."))
                target = _absolute(module, is_package, level, target.lstrip(".") or None)
            yield target, node.lineno


def import_graph(package_dir: Path) -> dict[str, dict[str, list[str]]]:
    """module -> {imported module of the same package -> ["file:line", ...]} (self-imports dropped).

    Importing ``kiln.a.b`` also runs ``kiln/a/__init__.py``; that implicit edge is not counted
    (as in grimp), or every package whose ``__init__`` imports its own submodules would be a cycle.
    """
    known = _modules(package_dir)
    root = package_dir.name
    graph: dict[str, dict[str, list[str]]] = {m: {} for m in known}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in _imported_names(module, path.name == "__init__.py", tree, known):
            while name and name not in known:  # `import kiln.a.b.attr` -> the module kiln.a.b
                name = name.rpartition(".")[0]
            where = f"{_rel(path)}:{line}"
            if name and name != module and name.split(".")[0] == root and where not in graph[module].get(name, []):
                graph[module].setdefault(name, []).append(where)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit); components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            advanced = False
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
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
    return sorted(found)


def _shortest_cycle(graph: dict[str, dict[str, list[str]]], members: set[str]) -> list[str]:
    """One shortest cycle inside a strongly connected component (breadth-first from each member)."""
    best: list[str] = []
    for start in sorted(members):
        prev: dict[str, str] = {}
        queue, last = deque([start]), None
        while queue and last is None:
            v = queue.popleft()
            for w in sorted(graph[v]):
                if w == start:
                    last = v
                    break
                if w in members and w not in prev:
                    prev[w] = v
                    queue.append(w)
        if last is not None:
            path = [last]
            while path[-1] != start:
                path.append(prev[path[-1]])
            cycle = [*reversed(path), start]
            if not best or len(cycle) < len(best):
                best = cycle
    return best


def describe_cycles(graph: dict[str, dict[str, list[str]]], cycles: list[list[str]]) -> str:
    lines = []
    for component in cycles:
        members = set(component)
        lines.append(f"cycle among {len(component)} modules: {', '.join(component)}")
        shortest = _shortest_cycle(graph, members)
        lines.append("  shortest: " + " -> ".join(shortest))
        for a, b in zip(shortest, shortest[1:]):
            lines.append(f"    {a} -> {b}   ({', '.join(graph[a][b])})")
        lines.append("  every import inside it:")
        for m in component:
            for imported, where in sorted(graph[m].items()):
                if imported in members:
                    lines.append(f"    {m} -> {imported}   ({', '.join(where)})")
    return "\n".join(lines)


def test_no_import_cycles() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk really saw kiln
    cycles = strongly_connected_components(graph)
    if cycles:
        print(describe_cycles(graph, cycles))
    assert cycles == [], "import cycles in kiln/ (every import counts):\n" + describe_cycles(graph, cycles)


def test_the_cycle_finder_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle closed only by a function-level or a TYPE_CHECKING import,
    or by a relative `from . import`, is still a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": "def thing():\n    from pkg import c\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n",
        "d.py": "import importlib\nimportlib.import_module('pkg.sub.e')\n",
        "sub/__init__.py": "",
        "sub/e.py": "from .. import d\n",
        "f.py": "import os\nfrom . import a\n",  # imports into the cycle, is not part of it
    }
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.c": [f"{pkg / 'b.py'}:2"]}
    assert strongly_connected_components(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d", "pkg.sub.e"]]


# --------------------------------------------------------------------------- import-linter contracts


def _load_pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_import_contracts_hold() -> None:
    """Layers, independent targets, a CLI that goes through kiln.api: `lint-imports` says."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.fail(f"{exe} not found: install the dev extra (pip install -e '.[dev]'), which brings import-linter")
    r = subprocess.run(
        [str(exe), "--no-cache"],  # reads pyproject.toml from cwd (its --config flag is deprecated in 2.x)
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, f"lint-imports exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "0 broken" in r.stdout, r.stdout


def _children(package_dir: Path) -> set[str]:
    """The direct children of a package: its modules and subpackages."""
    out = {p.stem for p in package_dir.glob("*.py") if p.stem != "__init__"}
    out |= {p.name for p in package_dir.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    return out


def test_cli_contract_forbids_every_other_part_of_kiln() -> None:
    """import-linter's forbidden contract lists modules; this keeps the list complete, so a new
    package of kiln is out of the CLI's reach until someone decides otherwise."""
    contracts = _load_pyproject()["tool"]["importlinter"]["contracts"]
    [cli] = [c for c in contracts if c["type"] == "forbidden" and c["source_modules"] == ["kiln.cli"]]
    allowed = {"cli", "api", "errors", "spec", "_version", "_redact", "_warn", "__main__"}
    expected = {f"kiln.{name}" for name in _children(PACKAGE) - allowed}
    assert set(cli["forbidden_modules"]) == expected


# --------------------------------------------------------------------------- module size


def test_no_module_is_too_long() -> None:
    long = {_rel(p): n for p in _python_files(PACKAGE) if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines (split them by responsibility): {long}"


# --------------------------------------------------------------------------- target names

TARGET_NAMES = frozenset(n.lower() for t in TARGETS.values() for n in (t.name, *t.aliases))

# (file, name) -> why a target's name may appear there as a comparison operand or dict key.
# Only data tables belong here (never a branch); an entry that no longer matches anything fails.
ALLOWED_TARGET_NAMES: dict[tuple[str, str], str] = {}


def _target_name(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip().lower() in TARGET_NAMES:
        return node.value
    return None


def _names_in_collection(node: ast.AST) -> list[str]:
    """Target names among the elements of a tuple/list/set/dict literal, or of set()/frozenset() of one."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset", "tuple", "list") and node.args:
        node = node.args[0]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        elements: Iterable[ast.AST | None] = node.elts
    elif isinstance(node, ast.Dict):
        elements = node.keys
    else:
        return []
    return [n for e in elements if (n := _target_name(e))]


def target_name_uses(path: Path) -> list[tuple[int, str, str]]:
    """(line, name, how) wherever ``path`` compares something with a target's name or keys a dict by one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # Names bound to a collection of target names: `_GPU = ("trtllm",)` ... `if t in _GPU`.
    collections: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            found = _names_in_collection(node.value)
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if found and isinstance(target, ast.Name):
                    collections[target.id] = found
    hits: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if name := _target_name(operand):
                    hits.append((node.lineno, name, "compared"))
                hits += [(node.lineno, n, "compared (in a literal)") for n in _names_in_collection(operand)]
                if isinstance(operand, ast.Name) and operand.id in collections:
                    hits += [(node.lineno, n, f"compared (through {operand.id})") for n in collections[operand.id]]
        elif isinstance(node, ast.Dict):
            hits += [(node.lineno, n, "a dict key") for k in node.keys if (n := _target_name(k))]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            hits += [(node.lineno, kw.arg, "a dict key") for kw in node.keywords if kw.arg and kw.arg.lower() in TARGET_NAMES]
        elif isinstance(node, ast.MatchValue) and (name := _target_name(node.value)):
            hits.append((node.lineno, name, "a match case"))
        elif isinstance(node, ast.MatchMapping):
            hits += [(node.lineno, n, "a match-mapping key") for k in node.keys if (n := _target_name(k))]
    return hits


def test_nothing_outside_targets_branches_on_a_target_name() -> None:
    assert {"torch-aoti", "trtllm", "neuron"} <= TARGET_NAMES
    targets_dir = PACKAGE / "targets"
    found: list[str] = []
    used: set[tuple[str, str]] = set()
    for path in _python_files(PACKAGE):
        if path.is_relative_to(targets_dir):
            continue
        for line, name, how in target_name_uses(path):
            if (_rel(path), name) in ALLOWED_TARGET_NAMES:
                used.add((_rel(path), name))
                continue
            found.append(f"{_rel(path)}:{line}: target name {name!r} {how}")
    assert found == [], (
        "only kiln/targets/ may branch on a target's name; ask the Target instead (a field or a method):\n"
        + "\n".join(found)
    )
    assert set(ALLOWED_TARGET_NAMES) == used, f"stale allowlist entries: {set(ALLOWED_TARGET_NAMES) - used}"


def test_the_target_name_check_sees_each_form(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(textwrap.dedent("""
        GPU = ("trtllm", "neuron")
        def f(t, spec):
            if t == "torch-aoti": pass
            if spec.target != "TensorRT-LLM": pass
            if t in ("aoti", "vllm"): pass
            if t not in GPU: pass
            table = {"neuron": 1, "other": 2}
            kw = dict(trtllm=1)
            match t:
                case "neuronx" | "x":
                    pass
            print("trtllm")            # a message, not a branch
            label = ("neuron", "desc")  # data, not a branch
            return table, kw, label
    """))
    assert sorted((line, name) for line, name, _ in target_name_uses(src)) == [
        (4, "torch-aoti"), (5, "TensorRT-LLM"), (6, "aoti"), (7, "neuron"), (7, "trtllm"),
        (8, "neuron"), (9, "trtllm"), (11, "neuronx"),
    ]
