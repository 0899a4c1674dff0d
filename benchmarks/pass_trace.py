"""Where a streamed request's time to first token goes, in trio scheduler passes.

Runs ``trio-agent serve`` in this process with a trio instrument counting the
scheduler's passes (one per ``before_io_wait``) and stamps on each POST:
its bytes handled by the connection (``arrive``), the app called, the body
read, the first write (head and ``thinking``), the first token written. On
exit (SIGTERM or Ctrl-C) it writes the stamps and pass times to ``--out`` and
prints the split. Under load a pass is every ready task's turn, tens of
milliseconds at 1000 streams, so every yield on a request's path costs that.

    python -m benchmarks.pass_trace --out /tmp/trace.json -- --port 8020 --no-access-log \\
        --max-concurrency 4096 --max-queued 4096 --max-loop-lag 0
    trio-agent bench --url http://127.0.0.1:8020 --concurrency 1000 --duration 12 --warmup 3
    kill -TERM <pid>            # or: python -m benchmarks.pass_trace --report /tmp/trace.json

It patches trio_agent's internals (``_LeanH11Protocol.handle``,
``Gateway.__call__``/``_open``, ``BodyReader.read_json``, ``_TokenPipe._count``): a
diagnostic, not something to serve with.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import sys
import time
from typing import Any

import trio

STAGES = ("arrive", "call", "body", "first write", "first token")


class _Tracer:
    def __init__(self) -> None:
        self.passes = 0
        self.pass_times: list[float] = []
        self.records: list[list[tuple[int, float]]] = []
        self._arrived: dict[Any, tuple[int, float]] = {}
        self._by_task: dict[Any, list[tuple[int, float]]] = {}
        self._by_info: dict[int, list[tuple[int, float]]] = {}

    def stamp(self) -> tuple[int, float]:
        return (self.passes, time.perf_counter())

    def install(self) -> None:
        from hypercorn.events import RawData

        from trio_agent.http._early import LeanH11Protocol
        from trio_agent.server import _app, _body, _stream

        tracer = self
        handle = LeanH11Protocol.handle

        async def traced_handle(self: Any, event: Any) -> None:
            if isinstance(event, RawData) and event.data.startswith(b"POST"):
                tracer._arrived[self.client] = tracer.stamp()
            await handle(self, event)

        call = _app.Gateway.__call__

        async def traced_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await call(self, scope, receive, send)
                return
            arrived = tracer._arrived.pop(scope["client"], None)
            if arrived is None:
                await call(self, scope, receive, send)
                return
            stamps = [arrived, tracer.stamp()]
            task = trio.lowlevel.current_task()
            tracer._by_task[task] = stamps

            async def traced_send(message: Any) -> None:
                if len(stamps) == 3:
                    stamps.append(tracer.stamp())
                await send(message)

            try:
                await call(self, scope, receive, traced_send)
            finally:
                tracer._by_task.pop(task, None)
                if len(stamps) == len(STAGES):
                    tracer.records.append(stamps)

        open_request = _app.Gateway._open

        def traced_open(self: Any, *args: Any) -> Any:
            info = open_request(self, *args)
            stamps = tracer._by_task.get(trio.lowlevel.current_task())
            if stamps is not None:
                tracer._by_info[id(info)] = stamps
            return info

        read_json = _body.BodyReader.read_json

        async def traced_read_json(self: Any, call: Any) -> Any:
            result = await read_json(self, call)
            stamps = tracer._by_task.get(trio.lowlevel.current_task())
            if stamps is not None and len(stamps) == 2:
                stamps.append(tracer.stamp())
            return result

        count = _stream._TokenPipe._count

        def traced_count(self: Any, tokens: int, events: int) -> None:
            if self.first_at is None:
                stamps = tracer._by_info.pop(id(self._out.info), None)
                if stamps is not None and len(stamps) == 4:
                    stamps.append(tracer.stamp())
            count(self, tokens, events)

        LeanH11Protocol.handle = traced_handle  # type: ignore[method-assign]
        _app.Gateway.__call__ = traced_call  # type: ignore[method-assign]
        _app.Gateway._open = traced_open  # type: ignore[method-assign, assignment]
        _body.BodyReader.read_json = traced_read_json  # type: ignore[method-assign]
        _stream._TokenPipe._count = traced_count  # type: ignore[method-assign]


class _PassCounter(trio.abc.Instrument):
    def __init__(self, tracer: _Tracer) -> None:
        self._tracer = tracer

    def before_io_wait(self, timeout: float) -> None:
        self._tracer.passes += 1
        self._tracer.pass_times.append(time.perf_counter())


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def report(data: dict[str, Any], skip: float = 0.25) -> str:
    """The split of each stage (passes and ms, p50/p90/p99), and the pass length under load."""
    records = data["records"]
    records = records[int(len(records) * skip) :]  # leave out the first connections' storm
    if not records:
        return "no complete request recorded"
    lines = [f"{len(records)} requests (the first {skip:.0%} left out)"]
    for i in range(len(STAGES) - 1):
        passes = [r[i + 1][0] - r[i][0] for r in records]
        ms = [(r[i + 1][1] - r[i][1]) * 1000 for r in records]
        lines.append(
            f"{STAGES[i]:>11} -> {STAGES[i + 1]:<11} passes p50 {_pct(passes, 50):3.0f} "
            f"p99 {_pct(passes, 99):3.0f} | ms p50 {_pct(ms, 50):6.0f} p90 {_pct(ms, 90):6.0f} "
            f"p99 {_pct(ms, 99):6.0f}"
        )
    passes = [r[-1][0] - r[0][0] for r in records]
    ms = [(r[-1][1] - r[0][1]) * 1000 for r in records]
    lines.append(
        f"{'server TTFT':>26} passes p50 {_pct(passes, 50):3.0f} p99 {_pct(passes, 99):3.0f} "
        f"| ms p50 {_pct(ms, 50):6.0f} p90 {_pct(ms, 90):6.0f} p99 {_pct(ms, 99):6.0f}"
    )
    lo, hi = records[0][0][1], records[-1][-1][1]
    times = [t for t in data["pass_times"] if lo <= t <= hi]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    if gaps:
        lines.append(
            f"pass length while those ran: {len(gaps)} passes, mean {sum(gaps) / len(gaps):.1f} ms, "
            f"p50 {_pct(gaps, 50):.1f}, p99 {_pct(gaps, 99):.1f}, max {max(gaps):.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default="pass_trace.json", help="where the stamps are written")
    parser.add_argument("--report", metavar="FILE", help="print the split of a trace and exit")
    parser.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then trio-agent serve's flags")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return 0
    from trio_agent import cli

    tracer = _Tracer()
    tracer.install()
    run = trio.run

    def instrumented_run(*a: Any, **k: Any) -> Any:
        k.setdefault("instruments", []).append(_PassCounter(tracer))
        return run(*a, **k)

    trio.run = instrumented_run  # type: ignore[assignment]

    def dump() -> None:
        data = {"records": tracer.records, "pass_times": tracer.pass_times}
        with open(args.out, "w") as f:
            json.dump(data, f)
        print(report(data), file=sys.stderr)

    atexit.register(dump)
    serve_args = [a for a in args.serve_args if a != "--"]
    return cli.main(["serve", *serve_args])


if __name__ == "__main__":
    raise SystemExit(main())
