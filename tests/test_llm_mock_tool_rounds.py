"""``MockLLMConfig.tool_rounds`` (``--mock-tool-rounds``): tool calls for N assistant turns, then text.

Shared by the in-process mock and the mock LLM server (both plan through
``plan_tool_calls``), so an agent run against either takes N tool steps.
"""

from __future__ import annotations

import random

import pytest
import trio

from trio_agent.cli import build_parser, main
from trio_agent.config import MockLLMConfig, server_config_from_env
from trio_agent.llm import ChatMessage, ChatRequest, MockLLM, ToolCall
from trio_agent.llm._mock_tools import plan_tool_calls, tool_rounds

TOOLS = ({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}},)


def _turns(n: int, *, question: str = "q") -> tuple[ChatMessage, ...]:
    messages = [ChatMessage(role="user", content=question)]
    for k in range(n):
        call = ToolCall(id=f"call_{k}", name="f", arguments="{}")
        messages.append(ChatMessage(role="assistant", content=None, tool_calls=(call,)))
        messages.append(ChatMessage(role="tool", content="ok", tool_call_id=f"call_{k}"))
    return tuple(messages)


def test_calls_continue_until_the_rounds_are_used() -> None:
    rng = random.Random(0)
    for done in range(4):
        request = ChatRequest(messages=_turns(done), tools=TOOLS)
        assert tool_rounds(request.messages) == done
        assert bool(plan_tool_calls(request, 2, rng, rounds=3)) == (done < 3)
    # Rounds count since the last user message: a new question starts again.
    again = ChatRequest(messages=(*_turns(3), ChatMessage(role="user", content="more")), tools=TOOLS)
    assert len(plan_tool_calls(again, 2, rng, rounds=3)) == 2
    # One round (the default) is the old rule: after a tool result, text.
    assert plan_tool_calls(ChatRequest(messages=_turns(1), tools=TOOLS), 1, rng) == []


async def test_the_mock_answers_tool_calls_for_n_turns_then_text(autojump_clock: trio.testing.MockClock) -> None:
    llm = MockLLM(MockLLMConfig(ttft=0.01, itl=0.001, tool_calls=2, tool_rounds=2))
    kinds = []
    for done in range(3):
        result = await llm.complete_chat(ChatRequest(messages=_turns(done), tools=TOOLS))
        kinds.append("tools" if result.tool_calls else "text")
    assert kinds == ["tools", "tools", "text"]


@pytest.mark.parametrize("command", ["serve", "mock-llm"])
def test_the_flag_parses_and_is_checked(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args([command, "--mock-tool-rounds", "3"]).mock_tool_rounds == 3
    assert main([command, "--mock-tool-rounds", "0"]) == 2
    assert "tool_rounds must be >= 1" in capsys.readouterr().err
    assert server_config_from_env({"TRIO_AGENT_MOCK_TOOL_ROUNDS": "4"}).mock.tool_rounds == 4
