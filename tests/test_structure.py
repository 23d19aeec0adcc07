"""How gateway/ is put together: imports point one way, handlers stay on top, every module stands alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"

# below the handlers: none of these may see a web.Request (STYLE.md)
LOWER = ("gateway.datasources", "gateway.backends", "gateway.http", "gateway.crypto", "gateway.sql",
         "gateway.config", "gateway.errors", "gateway.binding", "gateway.db", "gateway.accounts",
         "gateway.embedded", "gateway.frames", "gateway.query", "gateway.expressions", "gateway.legacy",
         "gateway.cache")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "sql" in path.relative_to(PACKAGE).parts[:-1]:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _runtime_imports(path: Path) -> set[str]:
    """Every module `path` imports when it runs (imports under `if TYPE_CHECKING:` left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


IMPORTS = {name: _runtime_imports(path) for name, path in MODULES.items()}


def _internal(name: str) -> set[str]:
    return {target for target in IMPORTS[name] if target in MODULES and target != name}


def test_only_the_app_factory_imports_handler_modules():
    offenders = {name: sorted(t for t in _internal(name) if t.startswith("gateway.api."))
                 for name in MODULES if name != "gateway.app" and not name.startswith("gateway.api")}
    assert {name: found for name, found in offenders.items() if found} == {}
    handlers = [name for name in MODULES if name.startswith("gateway.api.")]
    for handler in handlers:
        others = [t for t in _internal(handler) if t.startswith("gateway.api.") and t != handler]
        assert others == [], f"{handler} imports {others}"


def test_nothing_below_the_handlers_imports_aiohttp_web():
    offenders = {}
    for name in MODULES:
        if name.startswith(LOWER):
            web = {t for t in IMPORTS[name] if t in ("aiohttp.web", "aiohttp.web_request", "aiohttp.web_response")}
            if web:
                offenders[name] = sorted(web)
    assert offenders == {}


# Ranks, low to high: a module imports only modules of a lower rank, or of its own package (a package's
# __init__ its submodules; a module of a nested package such as backends/testdata/ the enclosing package's
# too); a prefix ranks a whole package, so gateway.expressions covers its submodules. The pool and the
# data source models are leaves on purpose: the pool is a plain HTTP client that knows nothing of
# gateway (errors.translate maps its exceptions), and the models are data shapes every layer speaks.
RANKS = (
    ("gateway.http.pool", "gateway.http.form", "gateway.config", "gateway.sql", "gateway.embedded",
     "gateway.frames", "gateway.gtime"),
    ("gateway.errors", "gateway.logs"),
    ("gateway.datasources.models", "gateway.binding", "gateway.crypto", "gateway.keys", "gateway.http.headers",
     "gateway.chart",
     "gateway.db"),
    ("gateway.http.client",),
    ("gateway.backends", "gateway.datasources.store", "gateway.accounts"),
    ("gateway.datasources.cache", "gateway.datasources.service", "gateway.expressions", "gateway.cache",
     "gateway.metrics"),
    ("gateway.auth", "gateway.responses", "gateway.query", "gateway.legacy", "gateway.provisioning"),
    ("gateway.api",),
    ("gateway.app",),
    ("gateway.__main__",),
)


def _rank(name: str) -> int:
    for rank, prefixes in enumerate(RANKS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return rank
    raise AssertionError(f"{name} has no rank in tests/test_structure.py")


def test_imports_point_one_way():
    wrong = []
    for name in MODULES:
        if name in ("gateway", "gateway.api", "gateway.backends", "gateway.cache", "gateway.datasources",
                    "gateway.http"):
            continue  # empty package markers
        package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
        for target in _internal(name):
            if target in ("gateway.api", "gateway.backends", "gateway.cache", "gateway.datasources", "gateway.http"):
                continue
            home = target.rsplit(".", 1)[0]
            if home != "gateway" and (package == home or package.startswith(home + ".")):
                continue  # within a subpackage (backends.registry -> backends.prometheus, expressions -> .pipeline)
            if _rank(target) >= _rank(name):
                wrong.append(f"{name} -> {target}")
    assert wrong == []
    assert _rank("gateway.auth") > _rank("gateway.keys")  # the check above is not vacuous


def test_the_import_graph_has_no_cycles():
    graph = {name: _internal(name) for name in MODULES}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target):], target] if target in trail else [name, target])
            elif target not in state:
                walk(target, [*trail, target])
        state[name] = 2

    for name in MODULES:
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_the_structure_test_sees_the_layout():
    # guards the tests above against passing vacuously after a move
    for name in ("gateway.app", "gateway.errors", "gateway.http.client", "gateway.http.pool",
                 "gateway.backends.base", "gateway.datasources.cache", "gateway.api.proxy",
                 "gateway.expressions", "gateway.expressions.pipeline", "gateway.backends.testdata.walks"):
        assert name in MODULES
    assert "gateway.errors" in _internal("gateway.http.client")
    assert "gateway.expressions.values" in _internal("gateway.expressions.pipeline")
    assert "gateway.backends.base" in _internal("gateway.backends.testdata.walks")


@pytest.mark.parametrize("chunk", range(4))
def test_every_module_imports_on_its_own_in_a_fresh_interpreter(chunk):
    names = sorted(MODULES)[chunk::4]

    def load(name: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
        return name, done.returncode, done.stderr[-2000:]

    with ThreadPoolExecutor(4) as pool:
        failures = [(name, err) for name, code, err in pool.map(load, names) if code != 0]
    assert failures == []
