"""The OpenAI-compatible mock LLM server: ``trio-agent mock-llm`` and :func:`serve_mock_llm`.

It speaks ``POST /v1/chat/completions`` (streamed and not) and
``GET /v1/models`` exactly as OpenAI does, paced by :class:`~trio_agent.MockLLM`,
and injects faults on demand (``X-Mock-Fault``) or at random, so that the
gateway, its upstream client and the benchmarks can be tested against a real
HTTP upstream without a key.
"""

from ._app import MockServerApp, MockServerStatistics
from ._faults import Fault, draw_fault, parse_fault_header
from ._serve import serve_mock_llm

__all__ = [
    "Fault",
    "MockServerApp",
    "MockServerStatistics",
    "draw_fault",
    "parse_fault_header",
    "serve_mock_llm",
]
