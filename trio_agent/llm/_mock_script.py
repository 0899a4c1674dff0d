"""The mock's script mode: JSON lines, one turn each, replayed in order (``--mock-script FILE``).

Each non-blank line is one turn, answering one chat request (the n-th request
of a server gets the n-th turn; after the last, the script starts over).
A turn is either

- a JSON **array of chunk objects**, replayed exactly as written, one per
  token time (each is one ``data:`` event; nothing is added, so include the
  ``finish_reason`` chunk and, if wanted, a usage chunk), for quirks of real
  servers; or
- a **compact object**, expanded the way the mock streams its own answers::

      {"content": "It is sunny."}
      {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
      {"tool_calls": [...], "quirks": ["one-delta", "index-zero"]}

  ``arguments`` is an object or a JSON text; ``id`` is optional. Quirks:
  ``one-delta`` sends each call's arguments whole in its first delta;
  ``index-zero`` sends every call at ``index`` 0, told apart by ``id``.
  ``finish_reason`` overrides the one the turn ends with.

Lines starting with ``#`` are comments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ._types import ToolCall
from ._wire import chunk_from_object

__all__ = ["QUIRKS", "ScriptTurn", "load_script", "parse_script"]

QUIRKS = frozenset({"one-delta", "index-zero"})


@dataclass(frozen=True, kw_only=True, slots=True)
class ScriptTurn:
    """One scripted answer: exact ``chunks`` (each with its JSON), or a compact turn."""

    #: Exact chunk objects and their JSON text, replayed as they are; None for a compact turn.
    chunks: tuple[tuple[Mapping[str, Any], bytes], ...] | None = None
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    quirks: frozenset[str] = frozenset()
    finish_reason: str | None = None


def _bad(line: int, why: str) -> ConfigError:
    return ConfigError(f"mock script line {line}: {why}")


def _compact(doc: Mapping[str, Any], line: int) -> ScriptTurn:
    unknown = set(doc) - {"content", "tool_calls", "quirks", "finish_reason"}
    if unknown:
        raise _bad(line, f"unknown keys {sorted(unknown)}")
    content = doc.get("content") or ""
    if not isinstance(content, str):
        raise _bad(line, "'content' must be a string")
    quirks = doc.get("quirks") or []
    if not isinstance(quirks, list) or not set(quirks) <= QUIRKS:
        raise _bad(line, f"'quirks' must be a list of {sorted(QUIRKS)}")
    finish = doc.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise _bad(line, "'finish_reason' must be a string")
    calls = []
    raw_calls = doc.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _bad(line, "'tool_calls' must be a list")
    for k, call in enumerate(raw_calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise _bad(line, f"tool_calls[{k}] must be an object with a string 'name'")
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        call_id = call.get("id") or f"call_script{line:04d}x{k:02d}"
        calls.append(ToolCall(id=str(call_id), name=call["name"], arguments=arguments))
    return ScriptTurn(
        content=content, tool_calls=tuple(calls), quirks=frozenset(quirks), finish_reason=finish
    )


def _exact(doc: Sequence[Any], line: int) -> ScriptTurn:
    chunks = []
    calls: list[list[str]] = []  # [id, name, arguments] per call, in order of first appearance
    by_index: dict[int, int] = {}
    text: list[str] = []
    finish = None
    for k, obj in enumerate(doc):
        if not isinstance(obj, dict):
            raise _bad(line, f"chunk {k} is not an object")
        try:
            chunk = chunk_from_object(obj, None)
        except (AttributeError, TypeError, IndexError) as exc:
            raise _bad(line, f"chunk {k} is not a chat.completion.chunk ({exc})") from None
        chunks.append((obj, orjson.dumps(obj)))
        text.append(chunk.delta)
        finish = chunk.finish_reason or finish
        # The whole message, for a non-streamed request: a delta with a new id starts a call
        # (servers that reuse index 0 tell calls apart by id), else it extends its index's call.
        for d in chunk.tool_calls:
            current = by_index.get(d.index)
            if current is None or (d.id is not None and d.id != calls[current][0]):
                by_index[d.index] = len(calls)
                calls.append([d.id or "", d.name or "", d.arguments])
            else:
                entry = calls[current]
                entry[1] = entry[1] or d.name or ""
                entry[2] += d.arguments
    return ScriptTurn(
        chunks=tuple(chunks),
        content="".join(text),
        tool_calls=tuple(ToolCall(id=i, name=n, arguments=a) for i, n, a in calls),
        finish_reason=finish,
    )


def parse_script(text: str) -> list[ScriptTurn]:
    """The turns of a script's text. Raises :class:`~trio_agent.ConfigError` naming the bad line."""
    turns = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            doc = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            raise _bad(number, f"not JSON ({exc})") from None
        if isinstance(doc, list):
            turns.append(_exact(doc, number))
        elif isinstance(doc, dict):
            turns.append(_compact(doc, number))
        else:
            raise _bad(number, "a turn is a list of chunk objects or a compact object")
    if not turns:
        raise ConfigError("mock script has no turns")
    return turns


def load_script(path: str | Path) -> list[ScriptTurn]:
    """Read and parse a script file (see the module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the mock script {str(path)!r}: {exc.strerror}") from None
    return parse_script(text)
