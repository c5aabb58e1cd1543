"""
The shape of the code: rules that keep the tree as docs/design.md draws it.

  - all SQL text lives under trackermail/store/;
  - no import cycles between trackermail's modules (function-level imports
    count too: a lazy import that breaks a cycle only hides it);
  - no module over MAX_LINES lines;
  - every `test-case-name` header names a test module that exists.
"""

from __future__ import annotations

import ast
import re
import tokenize
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trackermail"
MAX_LINES = 600

# Work in progress on this branch of history: modules still being split or
# emptied of SQL. Each entry goes when its module is done; the tests fail
# for anything not listed.
_NOT_YET_SPLIT: set[str] = set()
_SQL_NOT_YET_MOVED: set[str] = set()

_SQL = re.compile(
    r"\b(SELECT\s+\S.*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE|DROP\s+TABLE)\b",
    re.S,
)


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sql_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in C{path} that reads as SQL."""
    found = []
    with open(path, "rb") as f:
        tokens = tokenize.tokenize(f.readline)
        for token in tokens:
            if token.type == tokenize.STRING and _SQL.search(token.string):
                found.append((token.start[0], token.string[:60]))
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """The trackermail modules C{path} imports, at any depth of its code."""
    tree = ast.parse(path.read_bytes(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from package import module" imports the module; "from
            # module import name" the module itself.
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name == "trackermail" or name.startswith("trackermail."):
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in source_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            if imported in modules and imported != name and imported != "trackermail":
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


class ArchitectureTests(SynchronousTestCase):
    def test_sql_only_in_the_store(self):
        """No module outside trackermail/store/ holds SQL text."""
        offenders = []
        for path in source_files():
            if (PACKAGE / "store") in path.parents:
                continue
            if str(path.relative_to(ROOT)) in _SQL_NOT_YET_MOVED:
                continue
            for line, text in sql_strings(path):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
        self.assertEqual(offenders, [])

    def test_no_import_cycles(self):
        """trackermail's modules import each other without a cycle."""
        self.assertEqual(cycles(import_graph()), [])

    def test_module_size(self):
        """No module of trackermail is longer than 600 lines."""
        too_long = []
        for path in source_files():
            with open(path, encoding="utf-8") as f:
                count = sum(1 for _ in f)
            if count > MAX_LINES and str(path.relative_to(ROOT)) not in _NOT_YET_SPLIT:
                too_long.append(f"{path.relative_to(ROOT)}: {count} lines")
        self.assertEqual(too_long, [])

    def test_test_case_names_exist(self):
        """Every test-case-name header names a test module of the tree."""
        header = re.compile(r"test-case-name:\s*([\w.]+(?:\s*,\s*[\w.]+)*)")
        missing = []
        for path in source_files():
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            match = header.search(first)
            if match is None and path.name == "__init__.py":
                continue
            if match is None:
                missing.append(f"{path.relative_to(ROOT)}: no test-case-name header")
                continue
            for name in (n.strip() for n in match.group(1).split(",")):
                target = ROOT.joinpath(*name.split(".")).with_suffix(".py")
                package = ROOT.joinpath(*name.split("."), "__init__.py")
                if not target.exists() and not package.exists():
                    missing.append(f"{path.relative_to(ROOT)}: {name} does not exist")
        self.assertEqual(missing, [])


class DetectorTests(SynchronousTestCase):
    """The detectors above find what they look for."""

    def test_cycle_found(self):
        """A two-module loop is reported; a chain is not."""
        self.assertEqual(cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}), [["a", "b"]])
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": set()}), [])

    def test_sql_found(self):
        """A string holding a statement reads as SQL; prose does not."""
        path = Path(self.mktemp() + ".py")
        path.write_text('x = "SELECT id FROM emails"\ny = "select the update"\n'
                        'z = "DELETE FROM t WHERE a = ?"\n', encoding="utf-8")
        self.assertEqual([line for line, _ in sql_strings(path)], [1, 3])

    def test_imports_resolved(self):
        """Absolute, relative and from-package imports name the modules they reach."""
        self.assertEqual(imports_of(PACKAGE / "store" / "base.py"),
                         {"trackermail.store.schema"})
