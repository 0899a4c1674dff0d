"""Small example tools, offered by default by ``trio-agent serve``.

Each is deterministic or bounded, needs no network, and shows one kind of tool:
sync (``get_time``, ``calculate``, ``roll_dice``) runs in a worker thread, async
(``get_weather``, ``sleep``) in the run's nursery; ``sleep`` reports progress
and declares its own deadline and concurrency.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import math
import operator
import random
from collections.abc import Callable
from typing import Annotated, Any, Literal

import trio
from pydantic import Field

from ._tools import report_progress, tool

__all__ = ["calculate", "get_time", "get_weather", "roll_dice", "sleep"]

#: Arithmetic that ``calculate`` understands; anything else in the expression is refused.
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_MAX_EXPRESSION_CHARS = 200
_MAX_EXPONENT = 1000
#: Bounds a power's base too, so nested powers cannot build numbers of millions of digits.
_MAX_POWER_BASE = 10**6


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > _MAX_EXPONENT or abs(left) > _MAX_POWER_BASE):
            raise ValueError(f"power too large (base at most {_MAX_POWER_BASE:.0e}, exponent at most {_MAX_EXPONENT})")
        return _BINARY[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_evaluate(a) for a in node.args))  # type: ignore[no-any-return]
    raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")


@tool
def calculate(
    expression: Annotated[str, Field(examples=["(3 + 4) * sqrt(16) / 2", "2 ** 10 - 24", "round(pi * 3 ** 2, 2)"])],
) -> float | int:
    """Evaluate an arithmetic expression exactly and return the number.

    Supports + - * / // % **, parentheses, the constants pi and e, and the
    functions sqrt, abs, round, min, max, log, exp, sin, cos, tan.

    Args:
        expression: The expression, e.g. "(3 + 4) * sqrt(16) / 2".
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from exc
    return _evaluate(tree)


@tool
def get_time() -> str:
    """The current date and time in UTC, as ISO 8601 (e.g. "2026-01-31T12:00:00+00:00")."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


@tool
async def get_weather(
    city: Annotated[str, Field(examples=["Paris", "Oslo", "Tokyo", "Lima"])],
    unit: Literal["celsius", "fahrenheit"] = "celsius",
) -> dict[str, Any]:
    """Current weather for a city (a deterministic fake: the same city always gets the same weather).

    Args:
        city: The city's name, e.g. "Paris".
        unit: Temperature unit, "celsius" or "fahrenheit".
    """
    digest = hashlib.sha256(city.strip().lower().encode()).digest()
    celsius = digest[0] % 40 - 5
    conditions = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy"][digest[1] % 6]
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit, "conditions": conditions}


@tool(timeout=60.0, max_concurrency=16)
async def sleep(seconds: Annotated[float, Field(ge=0, le=30)]) -> str:
    """Wait for some seconds (at most 30), reporting progress each second, then say so.

    Args:
        seconds: How long to wait, between 0 and 30.
    """
    whole = math.floor(seconds)
    for done in range(whole):
        await trio.sleep(1)
        await report_progress(done + 1, seconds, f"{done + 1} of {seconds:g} s")
    await trio.sleep(seconds - whole)
    return f"slept {seconds:g} s"


@tool
def roll_dice(
    sides: Annotated[int, Field(ge=2, le=1000)] = 6,
    count: Annotated[int, Field(ge=1, le=100)] = 1,
) -> dict[str, Any]:
    """Roll dice and return each roll and the total.

    Args:
        sides: Faces on each die (2 to 1000).
        count: How many dice to roll (1 to 100).
    """
    rolls = [random.randint(1, sides) for _ in range(count)]
    return {"rolls": rolls, "total": sum(rolls)}
