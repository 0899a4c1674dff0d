"""The events of one agent run, one frozen dataclass per SSE event type.

A run yields, in order: for each step ``StepStart``, the model's ``Token``\\ s
and ``ToolCallEvent``\\ s as they stream (each call the moment its arguments are
complete), each call's ``ToolStarted`` (after its wait for a limiter),
``ToolProgress`` and exactly one of ``ToolResult`` / ``ToolError``, then
``StepEnd``; the run ends with exactly one ``Done``. Tool events of parallel
calls interleave. ``to_json()`` is the SSE event's data: ``{"type": ..., ...}``
with the event's fields; the SSE ``event:`` name is ``type``.

``thinking`` (admission) and ``error`` belong to the HTTP layer: the run raises
its errors (:class:`~trio_agent.errors.UpstreamError` and others) rather than
yielding them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

__all__ = [
    "AgentEvent",
    "Done",
    "StepEnd",
    "StepStart",
    "Token",
    "ToolCallEvent",
    "ToolError",
    "ToolErrorKind",
    "ToolProgress",
    "ToolResult",
    "ToolStarted",
    "UsageTotals",
]

#: Why a call produced no result: its deadline, an exception, arguments that are not JSON
#: or fail the schema, a name the run does not offer, or it was not run (run cancelled, or the
#: run's tool-call cap reached).
ToolErrorKind = Literal["timeout", "error", "invalid_arguments", "unknown_tool", "cancelled"]


class _Event:
    __slots__ = ()
    type: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        """The SSE data of this event: ``{"type": ..., **fields}``."""
        return {"type": self.type, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageTotals:
    """Token counts of a step, or summed over a run's steps."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class StepStart(_Event):
    """A model call begins (steps count from 1)."""

    type: ClassVar[str] = "step_start"
    step: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Token(_Event):
    """Model text, as it streams."""

    type: ClassVar[str] = "token"
    step: int
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallEvent(_Event):
    """The model called a tool; sent the moment the call's arguments are complete.

    ``arguments`` is the parsed JSON, or the text as sent when it is not JSON
    (a ``ToolError`` with kind ``invalid_arguments`` follows).
    """

    type: ClassVar[str] = "tool_call"
    step: int
    call_id: str
    name: str
    arguments: Any


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolStarted(_Event):
    """The call got its limiter slots and runs; ``queued_ms`` is how long it waited for them."""

    type: ClassVar[str] = "tool_started"
    call_id: str
    name: str
    queued_ms: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolProgress(_Event):
    """A running tool reported progress (an MCP progress notification, or ``report_progress``)."""

    type: ClassVar[str] = "tool_progress"
    call_id: str
    progress: float
    total: float | None = None
    message: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolResult(_Event):
    """The call returned; ``content`` is what the model sees (cut at the output limit if ``truncated``)."""

    type: ClassVar[str] = "tool_result"
    call_id: str
    name: str
    content: str
    duration_ms: float
    truncated: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolError(_Event):
    """The call produced no result; the model sees ``{"error": message}`` as the tool's answer."""

    type: ClassVar[str] = "tool_error"
    call_id: str
    name: str
    kind: ToolErrorKind
    message: str
    duration_ms: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class StepEnd(_Event):
    """A model call ended and every tool it called has a result or an error."""

    type: ClassVar[str] = "step_end"
    step: int
    finish_reason: str
    usage: UsageTotals
    tool_calls: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Done(_Event):
    """The run's one terminal event.

    ``finish_reason`` is ``stop`` or ``length`` (the model's, on its answer) or
    ``max_steps`` (a step or tool-call limit was reached and the model was asked
    once more without tools). ``answer`` is the final answer's text; ``usage``
    is summed over steps; times are in milliseconds (``model_ms`` summed over
    model calls, including the wait for an upstream slot; ``tool_ms`` summed
    over the calls that ran, so ``tool_ms`` above the wall time of the tool
    phases is the parallelism).
    """

    type: ClassVar[str] = "done"
    finish_reason: str
    answer: str
    steps: int
    tool_calls: int
    usage: UsageTotals
    duration_ms: float
    model_ms: float
    tool_ms: float = 0.0


AgentEvent = StepStart | Token | ToolCallEvent | ToolStarted | ToolProgress | ToolResult | ToolError | StepEnd | Done
