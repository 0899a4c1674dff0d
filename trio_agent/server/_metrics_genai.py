"""The OpenTelemetry GenAI client metrics, rendered as Prometheus histograms.

One observation per model call the gateway makes (a chat stream, a whole
chat, a batch item, a ``/v1`` call or relay, each model call of an agent
run), following the GenAI semantic conventions in their Prometheus form:

- ``gen_ai_client_operation_duration_seconds`` (``gen_ai.client.operation.duration``):
  from the call's start (after admission) to its end, whatever the end;
- ``gen_ai_client_token_usage`` (``gen_ai.client.token.usage``): the tokens the
  upstream reported, one observation per ``gen_ai_token_type`` (``input``,
  ``output``; embeddings only ``input``); a call whose upstream reported no
  usage records none.

Labels: ``gen_ai_operation_name`` (``chat``, ``embeddings``,
``text_completion``), ``gen_ai_request_model``; on the duration also
``outcome`` (``ok``, ``error``, ``cancelled``) and, unless ``ok``,
``error_type`` (the error code the client got, ``cancelled`` for a call
abandoned by a disconnect, a deadline or the drain). No label carries a
per-request value. The model comes from the client, so its label values are
capped: the first :data:`MAX_MODEL_LABELS` distinct models this process sees
(each at most :data:`_MAX_MODEL_CHARS` characters) keep their name, every
later one is counted as ``_OTHER``.

Buckets are the conventions' advice: token counts in powers of 4 from 1 to
4**13, durations doubling from 0.01 s to 81.92 s.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from types import TracebackType

import trio

from ..errors import TrioAgentError
from ..llm import Usage
from ._metrics_merge import format_value

__all__ = [
    "DURATION_BUCKETS",
    "MAX_MODEL_LABELS",
    "OTHER",
    "TOKEN_BUCKETS",
    "GenAIMetrics",
    "ModelCall",
]

TOKEN_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))  # 1 .. 67,108,864
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
#: Distinct model names a process keeps as label values; later ones count as OTHER.
MAX_MODEL_LABELS = 32
#: The label value of a model past the cap (and of an error without a code).
OTHER = "_OTHER"
_MAX_MODEL_CHARS = 128


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _LabelledHistogram:
    """A fixed-bucket histogram per label set (the label text, rendered once when first seen)."""

    __slots__ = ("buckets", "help", "name", "series")

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.help = help
        self.buckets = buckets
        # label text -> [count per bucket (+Inf last)..., sum, count]
        self.series: dict[str, list[float]] = {}

    def observe(self, labels: str, value: float) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0] * (len(self.buckets) + 3)
        row[bisect_left(self.buckets, value)] += 1
        row[-2] += value
        row[-1] += 1

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        name = self.name
        for labels, row in sorted(self.series.items()):
            running = 0.0
            for bound, n in zip(self.buckets, row, strict=False):
                running += n
                yield f'{name}_bucket{{{labels},le="{format_value(bound)}"}} {format_value(running)}'
            yield f'{name}_bucket{{{labels},le="+Inf"}} {format_value(row[-1])}'
            yield f"{name}_sum{{{labels}}} {format_value(row[-2])}"
            yield f"{name}_count{{{labels}}} {format_value(row[-1])}"


class GenAIMetrics:
    """The two GenAI histograms of one process; :meth:`call` measures one model call."""

    __slots__ = ("duration", "models", "tokens")

    def __init__(self) -> None:
        self.duration = _LabelledHistogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (gen_ai.client.operation.duration): each model call, "
            "by operation, requested model and outcome.",
            DURATION_BUCKETS,
        )
        self.tokens = _LabelledHistogram(
            "gen_ai_client_token_usage",
            "Tokens used per model call as the upstream reported them (gen_ai.client.token.usage), "
            "by operation, requested model and token type.",
            TOKEN_BUCKETS,
        )
        # model name -> its escaped label value; at most MAX_MODEL_LABELS entries
        self.models: dict[str, str] = {}

    def model_label(self, model: str) -> str:
        """``model`` as a label value: itself while the cap allows, else ``_OTHER``."""
        label = self.models.get(model)
        if label is not None:
            return label
        if len(self.models) >= MAX_MODEL_LABELS or len(model) > _MAX_MODEL_CHARS:
            return OTHER
        label = self.models[model] = _escape(model)
        return label

    def call(self, operation: str, model: str) -> ModelCall:
        """A model call to measure: ``with``/``async with`` it around the call (see :class:`ModelCall`)."""
        return ModelCall(self, operation, model)

    def record(
        self,
        operation: str,
        model: str,
        duration: float,
        *,
        usage: Usage | None = None,
        error_type: str | None = None,
    ) -> None:
        """One finished model call: its duration and, when known, its tokens."""
        base = f'gen_ai_operation_name="{operation}",gen_ai_request_model="{self.model_label(model)}"'
        if error_type is None:
            outcome = 'outcome="ok"'
        elif error_type == "cancelled":
            outcome = 'outcome="cancelled",error_type="cancelled"'
        else:
            outcome = f'outcome="error",error_type="{_escape(error_type)}"'
        self.duration.observe(f"{base},{outcome}", duration)
        if usage is not None:
            self.record_usage(operation, model, usage.prompt_tokens, usage.completion_tokens, base=base)

    def record_usage(
        self, operation: str, model: str, input_tokens: int, output_tokens: int, *, base: str | None = None
    ) -> None:
        """The tokens of one model call (input and output, one observation each)."""
        if base is None:
            base = f'gen_ai_operation_name="{operation}",gen_ai_request_model="{self.model_label(model)}"'
        self.tokens.observe(f'{base},gen_ai_token_type="input"', input_tokens)
        if operation != "embeddings":  # an embedding has input tokens only
            self.tokens.observe(f'{base},gen_ai_token_type="output"', output_tokens)

    def render(self) -> Iterator[str]:
        yield from self.duration.render()
        yield from self.tokens.render()


class ModelCall:
    """One model call being measured, from ``__enter__`` to ``__exit__`` (sync or async ``with``).

    Its end is recorded on exit: an exception leaving the block is the
    outcome (``trio.Cancelled`` is ``cancelled``; a trio_agent error its
    code); otherwise what :meth:`finish` said (the usage, or the failure a
    stream ended with without raising it). Exit never checkpoints, so it is
    safe in a cancelled scope.
    """

    __slots__ = ("_error", "_metrics", "_usage", "model", "operation", "started_at")

    def __init__(self, metrics: GenAIMetrics, operation: str, model: str) -> None:
        self._metrics = metrics
        self.operation = operation
        self.model = model
        self.started_at = 0.0
        self._usage: Usage | None = None
        self._error: str | None = None

    def finish(self, usage: Usage | None = None, failure: TrioAgentError | str | None = None) -> None:
        """The call's usage (as the upstream reported it), and the failure it ended with, if any
        (an error, or its code)."""
        self._usage = usage
        if failure is not None:
            self._error = failure if isinstance(failure, str) else failure.code

    def __enter__(self) -> ModelCall:
        self.started_at = trio.current_time()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        error = self._error if exc is None else error_type(exc)
        self._metrics.record(
            self.operation,
            self.model,
            trio.current_time() - self.started_at,
            usage=self._usage,
            error_type=error,
        )

    async def __aenter__(self) -> ModelCall:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def error_type(exc: BaseException) -> str:
    """The ``error_type`` label of an exception: ``cancelled``, a trio_agent error's code, or ``_OTHER``.

    In an exception group, the first member that is not a cancellation decides.
    """
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.subgroup(lambda e: not isinstance(e, trio.Cancelled))
        if rest is None:
            return "cancelled"
        first: BaseException = rest
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        exc = first
    if isinstance(exc, trio.Cancelled):
        return "cancelled"
    return exc.code if isinstance(exc, TrioAgentError) else OTHER
