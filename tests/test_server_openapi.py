"""GET /openapi.json, and schemathesis against a real Hypercorn on port 0 with that document.

Schemathesis generates valid and invalid requests for every operation (bounded examples)
and checks each answer: never a 5xx, status codes, content types, headers and bodies as
documented, invalid data refused, valid data accepted.

Run alone with ``pytest -s -m e2e tests/test_server_openapi.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests._asgi import request
from tests._fakes import make_gateway
from tests._reliability import running_gateway
from trio_agent.config import MockLLMConfig, ServerConfig
from trio_agent.llm import MockLLM
from trio_agent.server._openapi import OPENAPI

MAX_EXAMPLES = 20


async def test_openapi_json_is_served_without_a_key() -> None:
    gw, _ = make_gateway(api_keys=frozenset({"k"}))
    r = await request(gw, "GET", "/openapi.json")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc == OPENAPI
    assert doc["openapi"] == "3.1.0"
    # Every route of the router table is described with its methods, and nothing else.
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == {(r.method, r.path) for r in gw.router.routes}
    public = {p for p, ops in doc["paths"].items() if all(op.get("security") == [{}] for op in ops.values())}
    assert public == set(gw.router.public_paths)


def _run_schemathesis(base_url: str) -> dict[str, Any]:
    """Every operation, positive then negative cases; returns counts. Runs in a thread."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        positive_data_acceptance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # Refusals the document describes: 413 (body or batch over its limit) and 431 as well as
    # schemathesis's defaults; a 5xx is never expected.
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413, 415, 422, 429, 431]}}}
    )
    schema = schemathesis.openapi.from_dict(OPENAPI, config=config)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
        positive_data_acceptance,
    ]
    counts: dict[str, Any] = {"cases": 0, "statuses": {}}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            if mode.is_negative and not operation.body and not operation.query:
                continue  # nothing to make invalid on a plain GET

            # The relayed routes pass their bodies to the upstream, which judges what the
            # gateway does not own: a body valid for the gateway may still be the upstream's 400.
            relayed = operation.path in ("/v1/embeddings", "/v1/completions", "/v1/responses")
            used = [c for c in checks if not (relayed and c is positive_data_acceptance)]

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases on every CI run
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=base_url, checks=used, timeout=5)  # noqa: B023 (run() is called right below, in this iteration)
                counts["cases"] += 1
                key = f"{case.method} {case.path} {response.status_code}"
                counts["statuses"][key] = counts["statuses"].get(key, 0) + 1

            run()
    return counts


@pytest.mark.e2e
async def test_schemathesis_finds_no_5xx_and_no_drift() -> None:
    # Lag shedding off: schemathesis runs in a thread of this process, and its GIL time shows
    # up as scheduler lag (a 503 it would report as a server error).
    config = ServerConfig(port=0, access_log=False, max_concurrency=8, max_loop_lag=0)
    # No tool calls: an agent run answers at once (the example `sleep` tool would take seconds).
    llm = MockLLM(MockLLMConfig(ttft=0.0, itl=0.0, tokens=3, tool_calls=0))
    with trio.fail_after(120):
        async with running_gateway(config, backend=llm) as srv:
            counts = await trio.to_thread.run_sync(_run_schemathesis, srv.url)
            print(f"\nschemathesis: {counts['cases']} cases; statuses {counts['statuses']}")
            assert counts["cases"] >= 8 * MAX_EXAMPLES
            assert not any(key.endswith(("500", "502", "503", "504")) for key in counts["statuses"])
            s = srv.gw.limits.statistics()
            assert (s.in_flight, s.queued) == (0, 0) and llm.statistics().active == 0
