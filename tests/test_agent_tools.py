"""@tool: schemas and validation from type hints through pydantic, options, the registry,
load_tools, sync tools in threads, and the example tools."""

from __future__ import annotations

import json
import sys
import threading
from typing import Annotated, Literal

import pytest
import trio
import trio.testing
from pydantic import Field

from tests._agent_fakes import ScriptedLLM, finish, one_call, text
from trio_agent.agent import (
    FunctionTool,
    Tool,
    ToolDefinitionError,
    ToolError,
    ToolRegistry,
    ToolResult,
    examples,
    load_tools,
    open_agent,
    tool,
)


@tool
def search(query: str, limit: Annotated[int, Field(ge=1, le=10)] = 3, mode: Literal["web", "news"] = "web") -> list[str]:
    """Search the index.

    Longer explanation that the model also sees.

    Args:
        query: What to look for,
            in plain words.
        limit: How many results.
        mode: Where to search.

    Returns:
        Titles.
    """
    return [f"{query} {i}" for i in range(limit)]


def test_schema_comes_from_hints_and_docstring() -> None:
    schema = search.openai_schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the index.\n\nLonger explanation that the model also sees."
    params = fn["parameters"]
    assert params["required"] == ["query"]
    assert params["additionalProperties"] is False
    assert params["properties"]["query"]["description"] == "What to look for, in plain words."
    assert params["properties"]["limit"]["maximum"] == 10
    assert params["properties"]["mode"]["enum"] == ["web", "news"]
    json.dumps(schema)  # plain JSON


def test_validation_applies_defaults_and_refuses_with_a_readable_message() -> None:
    assert search.validate({"query": "trio"}) == {"query": "trio", "limit": 3, "mode": "web"}
    with pytest.raises(ValueError, match=r"limit: Input should be less than or equal to 10"):
        search.validate({"query": "trio", "limit": 11})
    with pytest.raises(ValueError, match=r"query: Field required; other: Extra inputs are not permitted"):
        search.validate({"other": 1})


def test_the_decorated_function_is_still_callable() -> None:
    assert search("x", limit=2) == ["x 0", "x 1"]
    assert search.__name__ == "search" and isinstance(search, Tool)


def test_options_and_bad_definitions() -> None:
    @tool(name="renamed", timeout=2.5, max_concurrency=3, description="custom")
    async def f(x: int) -> int:
        return x

    assert (f.name, f.timeout, f.max_concurrency, f.description) == ("renamed", 2.5, 3, "custom")
    with pytest.raises(ToolDefinitionError, match="must match"):
        tool(name="has.dot")(lambda: 1)

    def varargs(*args: int) -> int:
        return 0

    with pytest.raises(ToolDefinitionError, match="keyword"):
        tool(varargs)
    with pytest.raises(ToolDefinitionError, match="timeout"):
        tool(name="t", timeout=0)(lambda: 1)


def test_registry_refuses_two_tools_with_one_name() -> None:
    @tool(name="search")
    def other(q: str) -> str:
        return q

    registry = ToolRegistry([search])
    with pytest.raises(ToolDefinitionError, match="two tools"):
        registry.add(other)
    with pytest.raises(ToolDefinitionError, match="not a Tool"):
        registry.add(len)  # type: ignore[arg-type]


def test_load_tools_imports_a_module_and_finds_every_tool() -> None:
    tools = load_tools("trio_agent.agent.examples")
    assert [t.name for t in tools] == ["calculate", "get_time", "get_weather", "sleep", "roll_dice"]
    with pytest.raises(ToolDefinitionError, match="cannot import"):
        load_tools("no_such_module_here")
    with pytest.raises(ToolDefinitionError, match="defines no tools"):
        load_tools("json")


def test_importing_the_root_package_loads_neither_pydantic_nor_mcp() -> None:
    import subprocess

    code = "import sys, trio_agent; print(sorted(m for m in ('pydantic', 'mcp') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, trio_agent.agent; print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_calculate_is_arithmetic_only() -> None:
    assert examples.calculate("(3 + 4) * sqrt(16) / 2") == 14.0
    assert examples.calculate("2 ** 10 - -1") == 1025
    for bad in ("__import__('os')", "x", "open('f')", "(1).real", "9 ** 9 ** 9", "[1] * 3"):
        with pytest.raises(ValueError):
            examples.calculate(bad)


async def test_example_tools_are_deterministic_or_bounded(autojump_clock: trio.testing.MockClock) -> None:
    a = await examples.get_weather("Paris")
    assert a == await examples.get_weather(" paris ") | {"city": " paris "} | {"city": "Paris"}
    assert a["unit"] == "celsius"
    assert examples.sleep.validate({"seconds": 30})["seconds"] == 30
    with pytest.raises(ValueError):
        examples.sleep.validate({"seconds": 31})
    rolled = examples.roll_dice(sides=6, count=3)
    assert len(rolled["rolls"]) == 3 and sum(rolled["rolls"]) == rolled["total"]
    assert examples.get_time().endswith("+00:00")


@pytest.mark.e2e
async def test_sync_tools_run_in_threads_and_an_abandoned_thread_keeps_its_slot() -> None:
    release = threading.Event()
    threads: list[str] = []

    @tool(max_concurrency=1, timeout=0.2)
    def blocking(tag: str) -> str:
        """Blocks its thread until released."""
        threads.append(threading.current_thread().name)
        release.wait(10)
        return tag

    @tool
    def quick(x: int) -> int:
        """Doubles in a thread."""
        threads.append(threading.current_thread().name)
        return 2 * x

    backend = ScriptedLLM(
        [
            [*one_call(0, "b", "blocking", {"tag": "b"}), *one_call(1, "q", "quick", {"x": 21}), finish("tool_calls")],
            [text("k"), finish()],
        ]
    )
    with trio.fail_after(10):
        async with open_agent(backend, tools=[blocking, quick]) as agent:
            result = await agent.complete("go")
            errors = [e for e in result.events if isinstance(e, ToolError)]
            assert [(e.call_id, e.kind) for e in errors] == [("b", "timeout")]
            assert [e.content for e in result.events if isinstance(e, ToolResult)] == ["42"]
            assert threading.main_thread().name not in threads
            s = agent.statistics()
            # The timed-out call ended, its thread could not: it holds its tool's thread slot.
            assert (s.running_tools, s.worker_threads) == (0, 1)
            release.set()
            # The next call of the tool waits for that slot, so it runs after the old thread ended.
            second = ScriptedLLM([[*one_call(0, "b2", "blocking", {"tag": "again"}), finish("tool_calls")], [text("k"), finish()]])
            agent.backend = second
            result = await agent.complete("again")
            assert [e.content for e in result.events if isinstance(e, ToolResult)] == ["again"]
            assert agent.statistics().worker_threads == 0
    assert isinstance(blocking, FunctionTool) and not blocking.is_async
