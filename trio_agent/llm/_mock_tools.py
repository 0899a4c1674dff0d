"""What the mocks answer, decided deterministically: tool calls, values from JSON schemas, replies to tool results.

Shared by the in-process :class:`~trio_agent.MockLLM` and the mock LLM server
(which serves a ``MockLLM``), so both call the same tools with the same
arguments for the same request and seed.

- :func:`plan_tool_calls`: which tools to call for a request (``tool_calls``
  of them, round-robin over the offered function tools; ``tool_choice``
  ``"none"`` gives none, a named function gives only that one; once the
  conversation since its last user message holds ``rounds`` assistant turns
  that called tools, none, so an agent loop ends with a text answer).
- :func:`value_for_schema`: a JSON value that validates against a JSON schema
  (types, required properties, enums, consts, defaults, bounds, lengths,
  formats, nested objects and arrays, local ``$ref``), drawn from a seeded RNG.
- :func:`argument_fragments`: a JSON text cut where a tokenizer would cut it,
  for streaming arguments piece by piece.
- :func:`tool_results_reply`: a text answer quoting the tool results it got.
"""

from __future__ import annotations

import datetime
import math
import random
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ._types import ChatMessage, ChatRequest, ToolCall

__all__ = [
    "argument_fragments",
    "call_id",
    "function_tools",
    "json_reply",
    "plan_tool_calls",
    "response_format_schema",
    "tool_results_reply",
    "tool_rounds",
    "value_for_schema",
]

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()
_ID_CHARS = string.ascii_letters + string.digits
_MAX_DEPTH = 8  # past this nesting only what is required is generated (recursive $ref)
_GIVE_UP_DEPTH = 4 * _MAX_DEPTH
_FRAGMENT = re.compile(r"\w+|[^\w]+", re.ASCII)
_QUOTE_CHARS = 80  # how much of each tool result the reply quotes


def call_id(rng: random.Random) -> str:
    """An OpenAI-looking tool call id (``call_`` and 24 letters or digits) from ``rng``."""
    return "call_" + "".join(rng.choices(_ID_CHARS, k=24))


def function_tools(request: ChatRequest) -> list[Mapping[str, Any]]:
    """The ``function`` parts of the function tools ``request`` offers (its own view, else its body's)."""
    tools: Sequence[Any] = request.tools
    if not tools and request.openai_body is not None:
        offered = request.openai_body.get("tools")
        tools = offered if isinstance(offered, list) else ()
    out: list[Mapping[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            continue
        # Chat completions nests the function; the Responses API puts its fields on the tool.
        fn = tool.get("function", tool)
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            out.append(fn)
    return out


def _tool_choice(request: ChatRequest) -> Any:
    if request.tool_choice is not None:
        return request.tool_choice
    if request.openai_body is not None:
        return request.openai_body.get("tool_choice")
    return None


def tool_rounds(messages: Sequence[ChatMessage]) -> int:
    """How many assistant turns called tools since the last user message."""
    turns = 0
    for m in reversed(messages):
        if m.role == "user":
            break
        if m.role == "assistant" and m.tool_calls:
            turns += 1
    return turns


def plan_tool_calls(
    request: ChatRequest, count: int, rng: random.Random, *, rounds: int = 1
) -> list[ToolCall]:
    """The tool calls the mock answers ``request`` with (empty: answer with text).

    ``count`` calls (one if ``parallel_tool_calls`` is false), round-robin over
    the offered function tools (or only the one ``tool_choice`` names); none when ``count`` is 0, no function tool is
    offered, ``tool_choice`` is ``"none"``, or the conversation since its last
    user message already holds ``rounds`` assistant turns that called tools
    (with ``rounds`` 1: a request whose last message is a tool result). Ids and
    arguments come from ``rng``.
    """
    if count <= 0 or rounds <= 0:
        return []
    last = request.messages[-1] if request.messages else None
    if last is not None and last.role == "tool" and rounds == 1:
        return []
    if tool_rounds(request.messages) >= rounds:
        return []
    tools = function_tools(request)
    choice = _tool_choice(request)
    if choice == "none" or not tools:
        return []
    if request.openai_body is not None and request.openai_body.get("parallel_tool_calls") is False:
        count = 1  # as OpenAI: one call per turn when parallel calls are off
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        # Chat completions: {"type": "function", "function": {"name": ...}}; Responses: {"type": "function", "name": ...}
        name = fn.get("name") if isinstance(fn, Mapping) else choice.get("name")
        tools = [t for t in tools if t.get("name") == name] or tools[:1]
    calls = []
    for k in range(count):
        fn = tools[k % len(tools)]
        params = fn.get("parameters")
        schema = params if isinstance(params, Mapping) else {"type": "object", "properties": {}}
        value = value_for_schema(schema, rng)
        calls.append(
            ToolCall(id=call_id(rng), name=str(fn["name"]), arguments=orjson.dumps(value).decode())
        )
    return calls


def argument_fragments(text: str) -> list[str]:
    """``text`` cut into word and punctuation runs, as a model streams a JSON text (never empty)."""
    return _FRAGMENT.findall(text) or [text]


def tool_results_reply(messages: Sequence[ChatMessage]) -> str:
    """A text answer mentioning each tool result after the last user or assistant turn."""
    results: list[ChatMessage] = []
    for m in reversed(messages):
        if m.role != "tool":
            break
        results.append(m)
    results.reverse()
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    quoted = []
    for m in results:
        text = " ".join((m.content or "").split())
        if len(text) > _QUOTE_CHARS:
            text = text[: _QUOTE_CHARS - 3] + "..."
        label = m.name or names.get(m.tool_call_id or "") or m.tool_call_id or "tool"
        quoted.append(f"{label} returned {text}")
    return "I called the tools: " + "; ".join(quoted) + "."


def response_format_schema(body: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The JSON schema a chat ``response_format`` (or a Responses ``text.format``) asks for.

    ``{"type": "object"}`` for plain JSON mode; None when no JSON is asked for.
    """
    if body is None:
        return None
    fmt = body.get("response_format")
    if fmt is None:
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    if fmt.get("type") == "json_schema":
        # Chat completions nests it ({"json_schema": {"schema": ...}}); Responses does not.
        holder = fmt.get("json_schema", fmt)
        schema = holder.get("schema") if isinstance(holder, Mapping) else None
        return schema if isinstance(schema, Mapping) else {"type": "object"}
    return None


def json_reply(schema: Mapping[str, Any], rng: random.Random) -> str:
    """A JSON text that validates against ``schema``."""
    return orjson.dumps(value_for_schema(schema, rng)).decode()


# -- values from JSON schemas ---------------------------------------------------------


def value_for_schema(schema: Mapping[str, Any], rng: random.Random) -> Any:
    """A JSON value valid against ``schema`` (see the module docstring for what is understood).

    ``pattern`` and ``not`` are not understood; ``default`` is used when given, else one of ``examples``
    (a valid schema's default and examples are assumed valid).
    """
    return _value(schema, schema, rng, 0)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(_MAX_DEPTH):  # a chain of $ref to $ref
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        target: Any = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping):
            return {}
        # Siblings of $ref (draft 2019+) refine the target.
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest} if rest else target
    return schema


def _value(schema: Any, root: Mapping[str, Any], rng: random.Random, depth: int) -> Any:
    if schema is True or not isinstance(schema, Mapping):
        return "value"
    if depth > _GIVE_UP_DEPTH:  # only a schema requiring endless nesting gets here: none is valid
        return {}
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    if "default" in schema:
        return schema["default"]
    # A schema's own examples read as the model would answer (a valid schema's examples are
    # assumed valid, like its default).
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return rng.choice(schema["examples"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            # The first option that is not null: Optional[X] gives anyOf [X, null].
            chosen = next(
                (o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")),
                options[0],
            )
            base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            merged = {**base, **_resolve(chosen, root)} if isinstance(chosen, Mapping) else chosen
            return _value(merged, root, rng, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged_all: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in all_of:
            if isinstance(part, Mapping):
                part = _resolve(part, root)
                props = {**merged_all.get("properties", {}), **part.get("properties", {})}
                required = [*merged_all.get("required", []), *part.get("required", [])]
                merged_all = {**merged_all, **part, "properties": props, "required": required}
        return _value(merged_all, root, rng, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or kind
        kind = kinds[0] if kinds else None
    if kind is None:
        if "properties" in schema or "required" in schema:
            kind = "object"
        elif "items" in schema or "prefixItems" in schema:
            kind = "array"
        else:
            kind = "string"
    if kind == "object":
        return _object(schema, root, rng, depth)
    if kind == "array":
        return _array(schema, root, rng, depth)
    if kind == "integer":
        return _integer(schema, rng)
    if kind == "number":
        return _number(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng)


def _object(schema: Mapping[str, Any], root: Mapping[str, Any], rng: random.Random, depth: int) -> Any:
    props = schema.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = [r for r in schema.get("required", ()) if isinstance(r, str)]
    out: dict[str, Any] = {}
    for name in required:
        sub = props.get(name, {})
        out[name] = _value(sub, root, rng, depth + 1)
    if depth < _MAX_DEPTH:
        for name, sub in props.items():
            if name not in out and rng.random() < 0.5:
                out[name] = _value(sub, root, rng, depth + 1)
    low = schema.get("minProperties")
    extra = schema.get("additionalProperties", True)
    k = 0
    while isinstance(low, int) and len(out) < low and k < low + len(props):
        name = next((p for p in props if p not in out), f"extra_{k}")
        sub = props.get(name, extra if isinstance(extra, Mapping) else {})
        out[name] = _value(sub, root, rng, depth + 1)
        k += 1
    return out


def _array(schema: Mapping[str, Any], root: Mapping[str, Any], rng: random.Random, depth: int) -> list[Any]:
    low = schema.get("minItems", 0)
    high = schema.get("maxItems")
    low = low if isinstance(low, int) and low >= 0 else 0
    size = max(low, 1 if depth < _MAX_DEPTH else 0)
    if isinstance(high, int):
        size = min(size + rng.randrange(2), high)
    size = max(size, low)
    prefix = schema.get("prefixItems")
    prefix = prefix if isinstance(prefix, list) else []
    items = schema.get("items", {})
    out = []
    for i in range(size):
        sub = prefix[i] if i < len(prefix) else items
        out.append(_value(sub, root, rng, depth + 1))
    if schema.get("uniqueItems"):
        unique: list[Any] = []
        for v in out:
            if v not in unique:
                unique.append(v)
        out = unique
    return out


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[float, float]:
    """The closed interval a number must fall in: the schema's bounds, else 1000 wide around 0."""
    nudge = 1.0 if integer else 1e-6
    low: float | None = None
    high: float | None = None
    if isinstance(schema.get("minimum"), int | float):
        low = float(schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = max(low if low is not None else -math.inf, float(schema["exclusiveMinimum"]) + nudge)
    if isinstance(schema.get("maximum"), int | float):
        high = float(schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = min(high if high is not None else math.inf, float(schema["exclusiveMaximum"]) - nudge)
    if low is None and high is None:
        return -1000.0, 1000.0
    if low is None:
        assert high is not None
        return high - 1000.0, high
    if high is None:
        return low, low + 1000.0
    return low, high


def _integer(schema: Mapping[str, Any], rng: random.Random) -> int:
    low, high = _bounds(schema, integer=True)
    lo, hi = math.ceil(low), math.floor(high)
    step = schema.get("multipleOf")
    if isinstance(step, int) and step > 0:
        first, last = math.ceil(lo / step), math.floor(hi / step)
        return step * (rng.randint(first, last) if first <= last else first)
    return rng.randint(lo, hi) if lo <= hi else lo


def _number(schema: Mapping[str, Any], rng: random.Random) -> float:
    low, high = _bounds(schema, integer=False)
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        first, last = math.ceil(low / step), math.floor(high / step)
        n = rng.randint(first, last) if first <= last else first
        return float(n * step) if isinstance(step, float) else float(n) * step
    if low > high:
        return low
    # Two decimals, kept inside the bounds.
    value = round(rng.uniform(low, high), 2)
    return min(max(value, low), high)


def _string(schema: Mapping[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    text: str
    if fmt == "date-time":
        text = datetime.datetime(2026, 1, 1 + rng.randrange(28), rng.randrange(24), tzinfo=datetime.UTC).isoformat()
    elif fmt == "date":
        text = datetime.date(2026, 1, 1 + rng.randrange(28)).isoformat()
    elif fmt == "time":
        text = f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
    elif fmt == "email":
        text = f"{rng.choice(_WORDS)}@example.com"
    elif fmt in ("uri", "url"):
        text = f"https://example.com/{rng.choice(_WORDS)}"
    elif fmt == "uuid":
        text = "-".join(
            "".join(rng.choices("0123456789abcdef", k=n)) for n in (8, 4, 4, 4, 12)
        )
    else:
        text = rng.choice(_WORDS)
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text = (text + " " + rng.choice(_WORDS)) * (low // max(len(text), 1) + 1)
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    if isinstance(low, int) and len(text) < low:
        text = text + "x" * (low - len(text))
    return text
