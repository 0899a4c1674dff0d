"""The package's import graph: no cycles (TYPE_CHECKING imports included), handlers below the app."""

from __future__ import annotations

import ast
import pathlib

import trio_agent

ROOT = pathlib.Path(trio_agent.__file__).parent


def _graph() -> dict[str, set[str]]:
    mods: dict[str, pathlib.Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = ["trio_agent", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # every import, TYPE_CHECKING too
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # ``from . import _x`` depends on the module _x, not on the package itself.
                sub = {f"{target}.{a.name}" for a in node.names} & mods.keys()
                deps |= sub or ({target} & mods.keys())
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & mods.keys()
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_request_handling_does_not_import_the_app() -> None:
    """The stream and chat services and the route handlers get collaborators, never the Gateway."""
    graph = _graph()
    for name in ("_stream", "_chat", "_routes_chat", "_routes_info", "_errors", "_router"):
        assert "trio_agent.server._app" not in graph[f"trio_agent.server.{name}"], name


def test_the_mock_llm_and_the_bench_do_not_import_the_gateway_app() -> None:
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith(("trio_agent.bench", "trio_agent.llm")):
            assert not any(d.startswith("trio_agent.server") for d in deps), name
