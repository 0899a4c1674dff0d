"""Tools: Python functions (``@tool``) and the registry an agent offers its model.

A :class:`Tool` has a name, a description and a JSON schema of its arguments
(what the model is shown), validates the arguments the model sent, and runs.
``@tool`` turns a sync or async function into a :class:`FunctionTool`; its
schema and validation come from the signature's type hints through a pydantic
model made with ``create_model`` (parameter descriptions from the docstring's
``Args:`` section). Async tools run in the run's nursery; sync tools run in a
worker thread (``trio.to_thread.run_sync``) behind their own thread limiter.

A tool may declare its own deadline (``timeout``) and how many of its calls may
run at once (``max_concurrency``); the agent turns both into cancel scopes and
``trio.CapacityLimiter``\\ s.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

import pydantic
import pydantic_core
import trio

from ..errors import ToolDefinitionError

__all__ = [
    "FunctionTool",
    "Tool",
    "ToolRegistry",
    "load_tools",
    "report_progress",
    "tool",
]

P = ParamSpec("P")
R = TypeVar("R")

#: OpenAI's rule for function names; MCP tools that clash are renamed ``SERVER__tool`` to stay in it.
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

class ProgressSink(Protocol):
    """Where a running call's progress goes: the run's event channel."""

    async def send(self, progress: float, total: float | None, message: str | None) -> None:
        """From a task of the call: waits for the consumer, like every other event."""


_progress: ContextVar[ProgressSink | None] = ContextVar("trio_agent_tool_progress", default=None)


async def report_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
    """From inside a running async tool: send a ``tool_progress`` event for this call.

    Outside a tool call it does nothing, so a tool stays callable as a plain function.
    """
    sink = _progress.get()
    if sink is not None:
        await sink.send(progress, total, message)


class Tool(ABC):
    """Something the model can call: a name, a description, an argument schema, and a way to run."""

    #: The name the model calls (``^[a-zA-Z0-9_-]{1,64}$``).
    name: str
    description: str
    #: The JSON schema of the arguments object.
    parameters: Mapping[str, Any]
    #: This tool's deadline per call; ``None`` = the agent's ``tool_timeout``.
    timeout: float | None = None
    #: How many calls of this tool may run at once in one agent; ``None`` = no own limit.
    max_concurrency: int | None = None

    def openai_schema(self) -> dict[str, Any]:
        """The tool as OpenAI's ``tools`` entry: ``{"type": "function", "function": {...}}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    @abstractmethod
    def validate(self, arguments: Mapping[str, Any]) -> Any:
        """Check the model's arguments; raise ``ValueError`` with a message the model can act on."""

    @abstractmethod
    async def call(self, arguments: Any, *, thread_limiter: trio.CapacityLimiter) -> Any:
        """Run with validated arguments; the return value becomes the tool message."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _docstring_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """The description (text before ``Args:``) and each argument's description from a Google-style docstring."""
    text = inspect.cleandoc(doc or "")
    lines = text.splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        header = re.fullmatch(r"(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):", stripped)
        if header:
            section = header.group(1)
            current = None
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            match = re.match(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if match and (current is None or len(line) - len(line.lstrip()) <= _indent_of(lines, current)):
                current = match.group(1)
                args[current] = match.group(2).strip()
            elif current is not None and stripped:
                args[current] = f"{args[current]} {stripped}".strip()
    return "\n".join(description).strip(), args


def _indent_of(lines: list[str], name: str) -> int:
    for line in lines:
        if re.match(rf"^\s*{re.escape(name)}\s*(\([^)]*\))?\s*:", line):
            return len(line) - len(line.lstrip())
    return 0


def _error_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(x) for x in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class FunctionTool(Tool, Generic[P, R]):
    """A Python function as a tool; calling the object calls the function."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        max_concurrency: int | None = None,
        abandon_on_cancel: bool = True,
    ) -> None:
        self.fn = fn
        self._call_fn: Callable[..., Any] = fn
        self.name = name or fn.__name__
        if not TOOL_NAME_RE.fullmatch(self.name):
            raise ToolDefinitionError(f"tool name {self.name!r} must match {TOOL_NAME_RE.pattern}")
        if timeout is not None and not timeout > 0:
            raise ToolDefinitionError(f"tool {self.name!r}: timeout must be > 0, got {timeout!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ToolDefinitionError(f"tool {self.name!r}: max_concurrency must be >= 1")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        #: A sync tool's thread cannot be killed: on cancellation it is abandoned (the call ends
        #: at once) and keeps its thread-limiter slot until it returns, so abandoned threads of
        #: one tool never exceed its limit. ``False`` waits for the thread instead.
        self.abandon_on_cancel = abandon_on_cancel
        self.is_async = inspect.iscoroutinefunction(fn)
        doc, arg_docs = _docstring_parts(fn.__doc__)
        self.description = description if description is not None else doc
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:
            raise ToolDefinitionError(f"tool {self.name!r}: cannot resolve type hints: {exc}") from exc
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise ToolDefinitionError(
                    f"tool {self.name!r}: parameter {param.name!r} must be passable by keyword"
                )
            if param.name.startswith("_"):
                raise ToolDefinitionError(f"tool {self.name!r}: parameter {param.name!r} starts with '_'")
            annotation = hints.get(param.name, Any)
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (
                annotation,
                pydantic.Field(default=default, description=arg_docs.get(param.name)),
            )
        try:
            self._model: type[pydantic.BaseModel] = pydantic.create_model(
                f"{self.name}_arguments",
                __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False),
                **fields,
            )
            schema = self._model.model_json_schema()
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError) as exc:
            raise ToolDefinitionError(f"tool {self.name!r}: {exc}") from exc
        schema.pop("title", None)
        self.parameters = schema
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        try:
            model = self._model.model_validate(dict(arguments))
        except pydantic.ValidationError as exc:
            raise ValueError(_error_message(exc)) from exc
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def call(self, arguments: Any, *, thread_limiter: trio.CapacityLimiter) -> Any:
        if self.is_async:
            return await self._call_fn(**arguments)
        return await trio.to_thread.run_sync(
            functools.partial(self._call_fn, **arguments),
            abandon_on_cancel=self.abandon_on_cancel,
            limiter=thread_limiter,
        )


@overload
def tool(fn: Callable[P, R], /) -> FunctionTool[P, R]: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    max_concurrency: int | None = None,
    abandon_on_cancel: bool = True,
) -> Callable[[Callable[P, R]], FunctionTool[P, R]]: ...
def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    max_concurrency: int | None = None,
    abandon_on_cancel: bool = True,
) -> FunctionTool[P, R] | Callable[[Callable[P, R]], FunctionTool[P, R]]:
    """Make a sync or async function a tool: ``@tool`` or ``@tool(timeout=5, max_concurrency=2)``.

    The function's type hints give the arguments' JSON schema and validation
    (pydantic), its docstring the description (the text before ``Args:``) and
    each argument's description (the ``Args:`` entries). ``timeout`` (seconds)
    and ``max_concurrency`` override the agent's defaults for this tool.
    """

    def make(f: Callable[P, R]) -> FunctionTool[P, R]:
        return FunctionTool(
            f,
            name=name,
            description=description,
            timeout=timeout,
            max_concurrency=max_concurrency,
            abandon_on_cancel=abandon_on_cancel,
        )

    return make(fn) if fn is not None else make


class ToolRegistry:
    """Tools by name; a second tool with a taken name is refused."""

    __slots__ = ("_tools",)

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> None:
        if not isinstance(t, Tool):
            raise ToolDefinitionError(f"{t!r} is not a Tool (decorate the function with @tool)")
        if t.name in self._tools and self._tools[t.name] is not t:
            raise ToolDefinitionError(f"two tools are named {t.name!r}")
        self._tools[t.name] = t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"<ToolRegistry {self.names()!r}>"


def load_tools(module_name: str) -> list[Tool]:
    """Import ``package.module`` and return every :class:`Tool` defined at its top level, in order."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ToolDefinitionError(f"cannot import tools module {module_name!r}: {exc}") from exc
    found: list[Tool] = []
    for value in vars(module).values():
        if isinstance(value, Tool) and value not in found:
            found.append(value)
    if not found:
        raise ToolDefinitionError(f"module {module_name!r} defines no tools (decorate functions with @tool)")
    return found


def tool_output_text(value: Any) -> str:
    """A tool's return value as the text of its tool message: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return pydantic_core.to_json(value, fallback=str).decode()


def set_progress_sink(sink: ProgressSink | None) -> None:
    """Used by the run: the progress sink of the call running in this task."""
    _progress.set(sink)


def get_progress_sink() -> ProgressSink | None:
    return _progress.get()
