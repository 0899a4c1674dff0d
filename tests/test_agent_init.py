"""trio_agent.agent.__all__ lists exactly its public names, each documented; MCP names load lazily."""

import types

import trio_agent.agent as agent


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(agent).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(agent.__all__) == public
    assert list(agent.__all__) == sorted(set(agent.__all__))


def test_every_public_name_has_a_docstring() -> None:
    undocumented = [
        name
        for name in agent.__all__
        if name not in ("AgentEvent", "ToolErrorKind") and not (getattr(agent, name).__doc__ or "").strip()
    ]
    assert undocumented == []


def test_mcp_names_come_from_the_optional_module() -> None:
    assert agent.MCPServerSpec.__module__ == "trio_agent.agent._mcp"
    assert agent.MCPServerStatus(name="x", up=False, tools=(), connects=0).up is False
