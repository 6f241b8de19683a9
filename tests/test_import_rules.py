"""The packages' import rules, checked statically over every module's source.

- ``hyperct_core`` (the model library) never imports ``agent`` or ``storage``;
- ``storage`` never imports ``agent`` or ``hyperct_core``;
- the DICOM node (``agent.node.*``) and every project module it reaches never imports
  torch, timm or hyperct_core's model modules: receiving must not load the model stack.

Imports are read with :mod:`ast`, including those inside functions (they run when the
function does); only ``if TYPE_CHECKING:`` blocks are skipped, since they never run.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "storage", "hyperct_core")

#: Packages each package must never import.
LAYERS = {
    "hyperct_core": ("agent", "storage"),
    "storage": ("agent", "hyperct_core"),
    # The series rules are pure functions of facts: no receive path, no database.
    "agent.series": ("agent.node", "agent.intake", "storage", "sqlalchemy", "pynetdicom"),
    # One DICOM record: read by the node, the intake and the CLI, knowing none of them.
    "agent.dicom": ("agent.node", "agent.intake", "agent.pipeline", "storage"),
}
#: Where the node's imports start: every module of agent.node.
NODE_ENTRY = "agent.node"
#: What ``serve --role node`` runs besides agent.node (the sweep, delivery, the
#: dashboard, the supervisor of ``--role all``): none of it may reach the model either.
NODE_ROLE_ENTRIES = (
    NODE_ENTRY,
    "agent.pipeline.sweep",
    "agent.pipeline.deliver",
    "agent.pipeline.workers",
    "agent.web",
    "agent.supervise",
    # The drift check runs on the node (a card read as JSON, numpy statistics).
    "agent.monitor",
    # Archive retrieval and the echo SR intake run on the node too.
    "agent.backfill",
    "agent.outcomes",
)
#: Libraries the node must not load.
NODE_FORBIDDEN_LIBRARIES = ("torch", "torchvision", "timm")
#: hyperct_core's model modules (each imports torch itself; listed so that a name
#: moving between them keeps failing clearly).
NODE_FORBIDDEN_MODULES = tuple(
    f"hyperct_core.{name}"
    for name in (
        "model",
        "backbone",
        "lora",
        "hypernet",
        "inference",
        "train",
        "checkpoint",
        "evaluate",
    )
)


@dataclass(frozen=True)
class Import:
    name: str  # dotted name as written, relative imports resolved
    line: int


class ImportGraph:
    """The modules of ``packages`` under ``root`` and what each imports."""

    def __init__(self, root: Path, packages: Iterable[str]) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                self.paths[".".join(parts)] = path
        self._imports: dict[str, list[Import]] = {}

    def imports(self, module: str) -> list[Import]:
        if module not in self._imports:
            path = self.paths[module]
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            self._imports[module] = list(_imports_in(tree.body, package))
        return self._imports[module]

    def project_modules(self, name: str) -> list[str]:
        """Project modules that importing ``name`` runs: the longest module prefix, and its
        parent packages (``from a.b import c`` names ``a.b.c``, a module or an attribute)."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.paths:
                return [".".join(parts[:i]) for i in range(1, end + 1)]
        return []

    def location(self, module: str, line: int) -> str:
        return f"{self.paths[module].relative_to(self.root)}:{line}"


def _imports_in(body: list[ast.stmt], package: str) -> Iterator[Import]:
    for node in body:
        yield from _imports_of_node(node, package)


def _imports_of_node(node: ast.AST, package: str) -> Iterator[Import]:
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        yield from _imports_in(node.orelse, package)
        return
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield Import(alias.name, node.lineno)
        return
    if isinstance(node, ast.ImportFrom):
        base = _resolve(node, package)
        yield Import(base, node.lineno)
        for alias in node.names:
            if alias.name != "*":
                yield Import(f"{base}.{alias.name}", node.lineno)
        return
    for child in ast.iter_child_nodes(node):
        yield from _imports_of_node(child, package)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_violations(graph: ImportGraph, layers: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Every import of a package its layer forbids, as ``module imports name (file:line)``."""
    found = []
    for module in graph.paths:
        forbidden = tuple(
            name for layer, names in layers.items() if _is_under(module, [layer]) for name in names
        )
        for imp in graph.imports(module):
            if _is_under(imp.name, forbidden):
                found.append(f"{module} imports {imp.name} ({graph.location(module, imp.line)})")
    return sorted(set(found))


def reachable(graph: ImportGraph, entry: str) -> dict[str, str | None]:
    """Project modules reached from the modules under ``entry``: module -> who imported it."""
    parents: dict[str, str | None] = {}
    queue: deque[str] = deque()
    for module in graph.paths:
        if _is_under(module, [entry]):
            for start in graph.project_modules(module):
                if start not in parents:
                    parents[start] = None
                    queue.append(start)
    while queue:
        module = queue.popleft()
        for imp in graph.imports(module):
            for target in graph.project_modules(imp.name):
                if target not in parents:
                    parents[target] = module
                    queue.append(target)
    return parents


def closure_violations(
    graph: ImportGraph, entry: str, libraries: Iterable[str], modules: Iterable[str]
) -> list[str]:
    """Each forbidden import reached from ``entry``, with the chain of imports that reaches it."""
    libraries, modules = tuple(libraries), tuple(modules)
    parents = reachable(graph, entry)
    found = []
    for module in parents:
        for imp in graph.imports(module):
            if _is_under(imp.name, libraries) or _is_under(imp.name, modules):
                chain = [imp.name, module]
                while (parent := parents[chain[-1]]) is not None:
                    chain.append(parent)
                where = graph.location(module, imp.line)
                found.append(" -> ".join(reversed(chain)) + f" ({where})")
    return sorted(set(found))


# --- the project ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph(ROOT, PACKAGES)


def test_layers_import_only_downwards(graph: ImportGraph) -> None:
    found = layer_violations(graph, LAYERS)
    assert not found, "forbidden imports:\n" + "\n".join(found)


@pytest.mark.parametrize("entry", NODE_ROLE_ENTRIES)
def test_node_never_reaches_the_model_stack(graph: ImportGraph, entry: str) -> None:
    found = closure_violations(graph, entry, NODE_FORBIDDEN_LIBRARIES, NODE_FORBIDDEN_MODULES)
    assert not found, "the node reaches the model stack:\n" + "\n".join(found)


def test_node_closure_is_followed(graph: ImportGraph) -> None:
    # The check means something only if the walk follows the node's real imports.
    closure = reachable(graph, NODE_ENTRY)
    for module in ("agent.node.transport", "agent.node.handlers", "agent.errors", "storage"):
        assert module in closure
    assert any(m.startswith("storage.") for m in closure)


# --- the checker on planted violations ------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_planted_violations(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "agent/__init__.py": "",
            "agent/errors.py": "class AgentError(Exception):\n    pass\n",
            "agent/node/__init__.py": "",
            "agent/node/server.py": "from agent import helpers\nfrom . import clean\n",
            "agent/node/clean.py": "import os\nfrom ..errors import AgentError\n",
            "agent/helpers.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    import timm\n"
                "class Loader:\n"
                "    def load(self):\n"
                "        import torch.nn\n"
                "        return torch.nn\n"
            ),
            "agent/node/late.py": (
                "def model():\n"
                "    from hyperct_core.inference import Screener\n"
                "    return Screener\n"
            ),
            "agent/pipeline.py": "import torch\n",  # not reached from the node
            "storage/__init__.py": "",
            "storage/db.py": "def f():\n    from agent.errors import AgentError\n",
            "hyperct_core/__init__.py": "",
            "hyperct_core/inference.py": "import torch\nclass Screener:\n    pass\n",
            "hyperct_core/tasks.py": "import storage.db\n",
        },
    )
    fake = ImportGraph(tmp_path, PACKAGES)

    assert layer_violations(fake, LAYERS) == [
        "hyperct_core.tasks imports storage.db (hyperct_core/tasks.py:1)",
        "storage.db imports agent.errors (storage/db.py:2)",
        "storage.db imports agent.errors.AgentError (storage/db.py:2)",
    ]
    found = closure_violations(fake, NODE_ENTRY, NODE_FORBIDDEN_LIBRARIES, NODE_FORBIDDEN_MODULES)
    assert found == [
        "agent.node.late -> hyperct_core.inference (agent/node/late.py:2)",
        "agent.node.late -> hyperct_core.inference -> torch (hyperct_core/inference.py:1)",
        "agent.node.late -> hyperct_core.inference.Screener (agent/node/late.py:2)",
        "agent.node.server -> agent.helpers -> torch.nn (agent/helpers.py:6)",
    ]


def test_checker_passes_a_clean_node(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "agent/__init__.py": "",
            "agent/node/__init__.py": "",
            "agent/node/server.py": "import socket\nfrom agent.node import tls\n",
            "agent/node/tls.py": "import ssl\n",
            "agent/screen.py": "import torch\n",
        },
    )
    fake = ImportGraph(tmp_path, PACKAGES)
    assert closure_violations(fake, NODE_ENTRY, NODE_FORBIDDEN_LIBRARIES, ()) == []
    assert set(reachable(fake, NODE_ENTRY)) == {
        "agent",
        "agent.node",
        "agent.node.server",
        "agent.node.tls",
    }
