"""The layers of trio_agent, checked on the import statements of every module (DESIGN.md).

An AST scan, so imports under ``if TYPE_CHECKING:`` and inside functions count too:

* Hypercorn, h11 and httpcore are imported only in ``trio_agent/http/`` and in the one
  upstream-read module, ``trio_agent/llm/_h11_body.py`` (docs/decisions/003);
* ``http`` knows nothing above it (no server, mock server, llm, agent or bench);
* the gateway (``server``) and the mock LLM server (``mock_server``) stand side by side:
  neither imports the other;
* ``bench`` and ``agent`` never import ``server``; ``llm`` imports neither ``server`` nor ``http``;
* ``tracing`` imports none of the layers above it (they all may use it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trio_agent"

FOREIGN_INTERNALS = ("hypercorn", "h11", "httpcore")
FOREIGN_HOMES = ("trio_agent.http", "trio_agent.llm._h11_body")

# (importing layer, layers it must not import)
FORBIDDEN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("trio_agent.http", ("trio_agent.server", "trio_agent.mock_server", "trio_agent.llm",
                         "trio_agent.agent", "trio_agent.bench", "trio_agent.cli")),
    ("trio_agent.mock_server", ("trio_agent.server", "trio_agent.bench", "trio_agent.cli")),
    ("trio_agent.server", ("trio_agent.mock_server", "trio_agent.bench", "trio_agent.cli")),
    ("trio_agent.bench", ("trio_agent.server", "trio_agent.cli")),
    ("trio_agent.agent", ("trio_agent.server", "trio_agent.http", "trio_agent.cli")),
    ("trio_agent.llm", ("trio_agent.server", "trio_agent.http", "trio_agent.mock_server",
                        "trio_agent.cli")),
    # tracing sits with the light library: everything above may use it, it uses none of them.
    ("trio_agent.tracing", ("trio_agent.server", "trio_agent.http", "trio_agent.llm",
                            "trio_agent.agent", "trio_agent.mock_server", "trio_agent.bench",
                            "trio_agent.cli")),
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, relative imports resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            names.add(target)
            # `from . import x` / `from .pkg import sub` may name submodules
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def within(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def violations(module: str, imports: set[str]) -> list[str]:
    found = []
    for name in sorted(imports):
        top = name.split(".")[0]
        if top in FOREIGN_INTERNALS and not any(within(module, home) for home in FOREIGN_HOMES):
            found.append(f"{module} imports {name}: only trio_agent.http (and llm._h11_body) may")
        for layer, banned in FORBIDDEN:
            if within(module, layer):
                found.extend(
                    f"{module} imports {name}: {layer} must not import {b}"
                    for b in banned
                    if within(name, b)
                )
    return found


def scan() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        imports = imported_modules(
            path.read_text(), module, is_package=path.name == "__init__.py"
        )
        found.extend(violations(module, imports))
    return found


def test_the_tree_keeps_its_layers() -> None:
    found = scan()
    assert not found, "layer violations:\n" + "\n".join(found)


def test_the_scan_sees_the_tree() -> None:
    # A scan that found no modules, or no imports, would pass vacuously.
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert {"trio_agent.http._serve", "trio_agent.server._serve", "trio_agent.mock_server._serve"} <= modules
    serve = PACKAGE / "http" / "_serve.py"
    imports = imported_modules(serve.read_text(), "trio_agent.http._serve", is_package=False)
    assert "hypercorn.trio.lifespan" in imports and "trio_agent.http._listener" in imports


@pytest.mark.parametrize(
    ("module", "is_package", "source", "expected"),
    [
        ("trio_agent.mock_server._serve", False, "from ..server._serve import x", "must not import trio_agent.server"),
        ("trio_agent.mock_server", True, "from ..server import serve", "must not import trio_agent.server"),
        ("trio_agent.bench._run", False, "import trio_agent.server", "must not import trio_agent.server"),
        ("trio_agent.llm._openai", False, "from ..http import x", "must not import trio_agent.http"),
        ("trio_agent.agent._loop", False, "from trio_agent.server._app import Gateway", "must not import"),
        ("trio_agent.server._app", False, "from hypercorn.events import RawData", "only trio_agent.http"),
        ("trio_agent.llm._openai", False, "import httpcore", "only trio_agent.http"),
        ("trio_agent.server._x", False, "if TYPE_CHECKING:\n    import h11\n", "only trio_agent.http"),
        ("trio_agent.http._serve", False, "from ..server import serve", "must not import trio_agent.server"),
    ],
)
def test_the_scan_catches_a_crossing(module: str, is_package: bool, source: str, expected: str) -> None:
    found = violations(module, imported_modules(source, module, is_package=is_package))
    assert found and expected in found[0]


def test_the_scan_allows_the_homes_of_foreign_internals() -> None:
    for module in ("trio_agent.http._early", "trio_agent.llm._h11_body"):
        assert violations(module, imported_modules("import h11\nimport hypercorn.events", module, is_package=False)) == []
