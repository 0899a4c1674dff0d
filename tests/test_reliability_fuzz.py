"""Hostile input: hypothesis throws malformed requests at the in-process ASGI app.

Wrong types, missing and unknown fields, huge strings, deep nesting, invalid UTF-8, lone
surrogates, wrong content types and unknown methods: every answer is a 2xx or a 4xx with our
JSON error body (or OpenAI's on /v1), never a 5xx.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._asgi import Response, request
from tests._fakes import make_gateway
from trio_agent.config import MockLLMConfig

MOCK = MockLLMConfig(ttft=0.0, itl=0.0, tokens=2)
POST_PATHS = ["/chat", "/chat/stream", "/chat/batch", "/v1/chat/completions"]
PATHS = [*POST_PATHS, "/v1/models", "/healthz", "/readyz", "/metrics", "/", "/nope", "/chat/"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["question", "messages", "model", "max_tokens", "temperature", "questions", "requests",
          "stream", "stream_options", "n", "role", "content"]


@st.composite
def chat_like(draw: st.DrawFn) -> Any:
    """A plausible body with some fields replaced, removed or added."""
    base: dict[str, Any] = draw(
        st.sampled_from(
            [
                {"question": "hi"},
                {"messages": [{"role": "user", "content": "hi"}]},
                {"questions": ["a", "b"]},
                {"requests": [{"question": "a"}]},
                {"messages": [{"role": "user", "content": "hi"}], "stream": True},
            ]
        )
    )
    body = dict(base)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()):
            body[name] = draw(json_values)
        else:
            body.pop(name, None)
    if draw(st.booleans()) and "messages" in body and isinstance(body["messages"], list):
        body["messages"] = [*body["messages"], draw(json_values)]
    return body


def check(r: Response, path: str) -> None:
    assert r.status < 500, (r.status, r.body[:300])
    if r.status >= 400:
        assert r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["code"]
        assert err["request_id"] == r.headers["x-request-id"]
    if r.status == 200 and r.events and not path.startswith("/v1/"):
        kinds = [e.event for e in r.events]
        assert kinds.count("done") + kinds.count("error") == 1, kinds


async def send(method: str, path: str, body: bytes | None, content_type: str | None) -> Response:
    headers = {} if content_type is None else {"content-type": content_type}
    gw, llm = make_gateway(MOCK, access_log=False, max_messages=8, max_message_chars=2000)
    with trio.fail_after(5):
        r = await request(gw, method, path, body=body, headers=headers)
    s = gw.limits.statistics()
    assert (s.in_flight, s.queued, llm.active, gw.drain.active) == (0, 0, 0, 0)
    return r


@FUZZ
@given(path=st.sampled_from(POST_PATHS), body=json_values | chat_like())
async def test_any_json_body_is_answered_without_a_5xx(path: str, body: Any) -> None:
    check(await send("POST", path, orjson.dumps(body), "application/json"), path)


@FUZZ
@given(path=st.sampled_from(POST_PATHS), raw=st.binary(max_size=200))
async def test_any_bytes_are_answered_without_a_5xx(path: str, raw: bytes) -> None:
    r = await send("POST", path, raw, "application/json")
    check(r, path)


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS) | st.text(min_size=1, max_size=30).map(lambda s: "/" + s),
    content_type=st.none()
    | st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                       "application/json; charset=utf-8", "application/jsonx", ""])
    | st.text(max_size=30).filter(lambda s: s.isascii() and "\n" not in s and "\r" not in s),
)
async def test_any_method_path_and_content_type_is_answered_without_a_5xx(
    method: str, path: str, content_type: str | None
) -> None:
    r = await send(method, path, b'{"question": "hi"}', content_type)
    check(r, path)
    if method == "POST" and path in POST_PATHS and r.status >= 400:
        media = (content_type or "").split(";")[0].strip().lower()
        # A JSON body is never refused for its media type (422 for /chat/batch or /v1 is
        # about the fields: {"question": ...} is not their shape).
        err = r.json()["error"]
        about_media = err.get("field", err.get("param")) == "content-type"  # ours / OpenAI's
        if media == "application/json":
            assert not about_media
        else:
            assert r.status == 400 and about_media


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting far past any parser's depth
        b'{"question": ' * 5000 + b'"x"' + b"}" * 5000,
        b'{"question": "\xff\xfe invalid utf-8"}',
        b'{"question": "\\ud800 lone surrogate"}',
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
        b'{"question": "' + b"x" * 900_000 + b'"}',  # under max_body_bytes, over max_message_chars
        b'{"question": "hi", "question": 5}',
        b"\xef\xbb\xbf" + b'{"question": "BOM"}',
        b'{"question": "hi"} trailing',
        b"null",
        b"NaN",
        b'{"max_tokens": 1e999, "question": "x"}',
        b'{"max_tokens": 99999999999999999999999999, "question": "x"}',
        b'{"temperature": -1e400, "question": "x"}',
        b'{"questions": [' + b'"q",' * 1000 + b'"q"]}',
    ],
    ids=lambda v: repr(v[:24]) if isinstance(v, bytes) else v,
)
async def test_hostile_bodies_are_4xx(path: str, raw: bytes) -> None:
    r = await send("POST", path, raw, "application/json")
    check(r, path)
    assert 400 <= r.status < 500 or (r.status == 200 and b"BOM" in raw), (r.status, r.body[:200])
