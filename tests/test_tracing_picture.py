"""docs/trace-agent.svg (and .png): an agent run's trace drawn from the spans a real receiver got.

The run: a gateway on 127.0.0.1:0 exporting to the tests' OTLP/HTTP receiver; a
scripted model that streams three tool calls one after another (each tool
starts as soon as its arguments are complete, while the model still writes
the next), then a text answer. The spans the receiver decoded are drawn by
``scripts/draw_trace.py``. ``UPDATE_TRACE_PICTURE=1`` writes the exported spans
(``docs/trace-agent.json``), the SVG and, through Chromium, the PNG into docs/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from scripts.draw_trace import _png, draw_svg
from tests._agent_fakes import ScriptedLLM, finish, one_call, text
from tests._otlp_receiver import ReceivedSpan, receiving_otlp
from tests._reliability import running_gateway
from trio_agent.config import ServerConfig

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
TITLE = "An agent run through trio_agent, as exported over OTLP/HTTP"


class _Model(ScriptedLLM):
    @property
    def model(self) -> str:
        return "qwen3-8b"

    def statistics(self) -> None:
        return None


def _turns() -> list[list[Any]]:
    words = [text(w) for w in "Checking the three sources at once.".split(" ")]
    calls = [
        *one_call(0, "call_1", "nap", {"seconds": 0.25, "tag": "weather"}, gap=0.03),
        *one_call(1, "call_2", "nap", {"seconds": 0.4, "tag": "calendar"}, gap=0.03),
        *one_call(2, "call_3", "nap", {"seconds": 0.15, "tag": "news"}, gap=0.03),
    ]
    answer = [step for w in "All three answered: sunny, two meetings, quiet news day.".split(" ")
              for step in (0.02, text(w + " "))]  # fmt: skip
    return [[0.12, *words, *calls, finish("tool_calls", 180, 60)], [0.1, *answer, finish("stop", 260, 14)]]


def _as_dict(s: ReceivedSpan) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d["events"] = [list(e) for e in s.events]
    return d


async def test_an_agent_runs_trace_draws_as_a_timeline(tmp_path: Path) -> None:
    with receiving_otlp() as rx, trio.fail_after(60):
        config = ServerConfig(
            port=0, access_log=False, otlp_endpoint=rx.url, trace_export_interval=0.2, example_tools=False, tools=("tests._tracing_tools",)
        )
        async with running_gateway(config, backend=_Model(_turns())) as srv:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                body = {"messages": [{"role": "user", "content": "Weather, calendar and news, please."}]}
                response = await client.post("/agent", json=body)
                assert response.status_code == 200, response.text
        await rx.wait_for(lambda spans: any(s.name == "POST /agent" for s in spans))
    spans = [_as_dict(s) for s in rx.spans if s.trace_id == rx.one("POST /agent").trace_id]
    svg = draw_svg(spans, title=TITLE)
    root = ET.fromstring(svg)  # well-formed
    assert root.tag.endswith("svg")
    drawn = svg.count("<rect ") - 1  # less the background
    assert drawn == len(spans) == 1 + 1 + 2 + 2 + 3  # server, run, 2 steps, 2 model calls, 3 tools
    for s in spans:
        assert s["name"] in svg
    out = ROOT / "docs" if os.environ.get("UPDATE_TRACE_PICTURE") == "1" else tmp_path
    (out / "trace-agent.json").write_text(json.dumps(spans, indent=1) + "\n")
    (out / "trace-agent.svg").write_text(svg)
    if out != tmp_path:
        _png(out / "trace-agent.svg", out / "trace-agent.png")
        assert (out / "trace-agent.png").read_bytes().startswith(b"\x89PNG")
