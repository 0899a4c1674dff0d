"""The gateway's HTTP API as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

A static description (limits are the :class:`~trio_agent.config.ServerConfig`
defaults). ``tests/test_server_openapi.py`` runs schemathesis against a real
server with it, so the document and the server cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy
from typing import Any

from ..agent import load_tools

__all__ = ["OPENAPI", "openapi_for"]

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_DESCRIPTIONS = {
    "400": "malformed JSON or wrong Content-Type (/v1: any mistake in the body, in OpenAI's words)",
    "401": "missing or wrong API key",
    "404": "no such path",
    "405": "method not allowed",
    "408": "the body did not arrive within request_timeout",
    "413": "body over max_body_bytes (or a batch over max_batch_items)",
    "415": "unsupported media type",
    "422": "a field is missing, wrong or unknown",
    "429": "the API key has per_key_max_concurrency requests in flight",
    "431": "request headers over max_header_bytes",
    "500": "internal error",
    "502": "the upstream failed",
    "503": "overloaded or shutting down (Retry-After set)",
    "504": "a deadline ran out before the answer started",
}


def _errors(*codes: str, openai: bool = False) -> dict[str, Any]:
    schema = _ref("OpenAIError" if openai else "Error")
    out: dict[str, Any] = {}
    for code in codes:
        resp = _json(schema, _ERROR_DESCRIPTIONS[code])
        if code in ("429", "503"):
            resp["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        out[code] = resp
    return out


_COMMON = ("400", "401", "404", "405", "408", "413", "422", "429", "431", "500", "502", "503", "504")


def _sse(kinds: list[str] | None) -> dict[str, Any]:
    """An event stream; the schema describes ONE event (``event``, ``id``, ``data``)."""
    if kinds is None:  # OpenAI's frames: data only, a JSON chunk or [DONE]
        event: dict[str, Any] = {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string"}},
        }
    else:
        event = {
            "type": "object",
            "required": ["event", "id", "data"],
            "properties": {
                "event": {"enum": kinds},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"enum": kinds}},
                    },
                },
            },
        }
    return {"text/event-stream": {"schema": event}}


_STREAM_EVENTS = ["thinking", "token", "done", "error"]
_BATCH_EVENTS = ["thinking", "result", "done", "error"]

# "Not only whitespace" as the server checks it (Python's str.isspace, not ECMA's \s).
_NOT_BLANK = r"[^\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "tool", "developer"]},
        "content": {"type": "string", "minLength": 1, "maxLength": 100_000, "pattern": _NOT_BLANK},
    },
}
# null is the same as leaving the option out.
_OPTIONS = {
    "model": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
}
_CHAT_BODY = {
    "type": "object",
    "description": "Exactly one of `question` or `messages`; unknown fields are refused (422).",
    "additionalProperties": False,
    "properties": {
        "question": {"type": "string", "minLength": 1, "maxLength": 100_000, "pattern": _NOT_BLANK},
        "messages": {"type": "array", "minItems": 1, "maxItems": 256, "items": _ref("Message")},
        **_OPTIONS,
    },
    "oneOf": [{"required": ["question"]}, {"required": ["messages"]}],
}
_EXAMPLE_TOOLS = [t.name for t in load_tools("trio_agent.agent.examples")]
_AGENT_EVENTS = [
    "thinking", "step_start", "token", "tool_call", "tool_started", "tool_progress",
    "tool_result", "tool_error", "step_end", "done", "error",
]  # fmt: skip
_AGENT_BODY = {
    "type": "object",
    "description": (
        "A chat body plus `tools` (an allowlist of tool names; an unknown name is a 400 "
        "naming it) and `max_steps` (at most the server's max_agent_steps)."
    ),
    "additionalProperties": False,
    "properties": {
        **{k: v for k, v in _CHAT_BODY["properties"].items() if k != "tool_choice"},  # type: ignore[attr-defined]
        # The names a gateway offers: this static document lists the example tools (what
        # `serve` offers by default); a running gateway's /openapi.json lists its own.
        "tools": {"type": ["array", "null"], "items": {"enum": _EXAMPLE_TOOLS}},
        "max_steps": {"type": ["integer", "null"], "minimum": 1, "maximum": 8},
    },
    "oneOf": [{"required": ["question"]}, {"required": ["messages"]}],
}
_AGENT_RESULT = {
    "type": "object",
    "required": ["run_id", "answer", "finish_reason", "steps", "tool_calls", "usage", "events"],
    "properties": {
        "run_id": {"type": "string"},
        "answer": {"type": "string"},
        "finish_reason": {"enum": ["stop", "length", "max_steps"]},
        "steps": {"type": "integer", "minimum": 1},
        "tool_calls": {"type": "integer", "minimum": 0},
        "usage": {"$ref": "#/components/schemas/Usage"},
        "events": {
            "type": "array",
            "description": "every event of the run, in order, as the SSE route's data",
            "items": {"type": "object", "required": ["type"], "properties": {"type": {"enum": _AGENT_EVENTS}}},
        },
    },
}
_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {k: {"type": "integer", "minimum": 0} for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
}
_TIMINGS = {
    "type": "object",
    "required": ["queued_ms", "ttft_ms", "total_ms"],
    "properties": {
        "queued_ms": {"type": "number"},
        "ttft_ms": {"type": ["number", "null"]},
        "total_ms": {"type": "number"},
    },
}
_CHAT_RESULT = {
    "type": "object",
    "required": ["content", "finish_reason", "model", "usage", "timings"],
    "properties": {
        "content": {"type": "string"},
        "finish_reason": {"type": ["string", "null"]},
        "model": {"type": "string"},
        "usage": _ref("Usage"),
        "timings": _ref("Timings"),
    },
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "retryable", "request_id"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "retryable": {"type": "boolean"},
                "request_id": {"type": "string"},
                "field": {"type": "string"},
                "retry_after": {"type": "integer", "minimum": 1},
                "limit_bytes": {"type": "integer"},
                "upstream_status": {"type": "integer"},
            },
        }
    },
}
_OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
                "request_id": {"type": "string"},
            },
        }
    },
}
_BATCH_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "questions": {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": {"type": "string", "minLength": 1, "maxLength": 100_000, "pattern": _NOT_BLANK},
        },
        "requests": {"type": "array", "minItems": 1, "maxItems": 64, "items": _ref("ChatBody")},
    },
    "oneOf": [{"required": ["questions"]}, {"required": ["requests"]}],
}
_BATCH_RESULT = {
    "type": "object",
    "required": ["request_id", "results"],
    "properties": {
        "request_id": {"type": "string"},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "status"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "status": {"enum": ["ok", "error", "timeout"]},
                },
            },
        },
    },
}
_TEXT_PARTS = {
    "type": "array",
    "items": {
        "description": "A content part: text (joined for the gateway's view) or any other type, passed on.",
        "anyOf": [
            {"type": "object", "required": ["type", "text"],
             "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
            {"type": "object", "required": ["type", "refusal"],
             "properties": {"type": {"const": "refusal"}, "refusal": {"type": "string"}}},
            {"type": "object", "required": ["type"],
             "properties": {"type": {"type": "string", "not": {"enum": ["text", "refusal"]}}}},
        ],
    },
}
_CONTENT = {"anyOf": [{"type": "string", "maxLength": 100_000}, _TEXT_PARTS]}
_NAME = {"type": "string"}
_OPENAI_MESSAGE = {
    "description": "A chat message; fields not listed are passed on.",
    "oneOf": [
        {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": {"enum": ["system", "user", "developer"]}, "content": _CONTENT, "name": _NAME},
        },
        {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"const": "assistant"},
                "content": {"anyOf": [_CONTENT, {"type": "null"}]},
                "name": _NAME,
                "tool_calls": {
                    "type": ["array", "null"],
                    "items": {
                        "type": "object",
                        "required": ["id", "function"],
                        "properties": {
                            "id": {"type": "string"},
                            "function": {
                                "type": "object",
                                "required": ["name", "arguments"],
                                "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
        {
            "type": "object",
            "required": ["role", "content", "tool_call_id"],
            "properties": {
                "role": {"const": "tool"}, "content": _CONTENT, "tool_call_id": {"type": "string"}, "name": _NAME,
            },
        },
    ],
}
_TOOL = {
    "description": "A function tool (checked), or a tool of another type (passed on).",
    "anyOf": [
        {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                        "description": {"type": "string"},
                        "parameters": {"type": ["object", "null"]},
                    },
                },
            },
        },
        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "not": {"const": "function"}}}},
    ],
}
_TOOL_CHOICE = {
    "anyOf": [
        {"enum": ["none", "auto", "required", None]},
        {
            "type": "object",
            "required": ["type", "function"],
            "properties": {
                "type": {"const": "function"},
                "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            },
        },
        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "not": {"const": "function"}}}},
    ],
}
_OPENAI_BODY = {
    "type": "object",
    "description": (
        "OpenAI's chat completions request, passed to the upstream unchanged (the default model "
        "filled in when none is given); the gateway checks only the fields listed."
    ),
    "required": ["messages"],
    "properties": {
        "model": {"type": ["string", "null"]},
        "messages": {"type": "array", "minItems": 1, "maxItems": 256, "items": _ref("OpenAIMessage")},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": ["boolean", "null"]}},
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
        "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        "tools": {"type": ["array", "null"], "minItems": 1, "items": _TOOL},
        "tool_choice": _TOOL_CHOICE,
    },
}
_RELAY_BODY = {
    "type": "object",
    "description": (
        "Relayed to the upstream as sent (the default model filled in when none is given); the "
        "upstream judges every field but these."
    ),
    "properties": {
        "model": {"type": ["string", "null"]},
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": ["boolean", "null"]}},
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
        "max_output_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": 8192},
    },
}
_OPENAI_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "minItems": 1},
        "usage": {"type": "object"},
    },
}
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
# A bearer key when the server runs with --api-key, none otherwise (an empty requirement).
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {}]
_PUBLIC: list[dict[str, list[str]]] = [{}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "trio_agent gateway",
        "version": "0.1.0",
        "description": (
            "Streams an LLM's reply over Server-Sent Events with admission control, deadlines "
            "and cancellation. Every error is JSON with a request id; every response carries "
            "X-Request-ID. Routes other than the probes, /metrics, /openapi.json and / need "
            "`Authorization: Bearer <key>` when the server is started with API keys."
        ),
    },
    "servers": [{"url": "http://127.0.0.1:8000"}],
    "security": _BEARER,
    "paths": {
        "/chat/stream": {
            "post": {
                "summary": "One reply as Server-Sent Events: thinking, token..., then done or error.",
                "operationId": "chatStream",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChatBody")}}},
                "responses": {
                    "200": {"description": "the event stream", "content": _sse(_STREAM_EVENTS)},
                    **_errors(*_COMMON),
                },
            }
        },
        "/agent/stream": {
            "post": {
                "summary": (
                    "One agent run as Server-Sent Events: thinking, then per step step_start, token..., "
                    "tool_call/tool_started/tool_progress/tool_result/tool_error..., step_end; then done or error."
                ),
                "operationId": "agentStream",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AgentBody")}}},
                "responses": {
                    "200": {"description": "the event stream", "content": _sse(_AGENT_EVENTS)},
                    **_errors(*_COMMON),
                },
            }
        },
        "/agent": {
            "post": {
                "summary": "One agent run as a whole JSON answer, with its events as a list.",
                "operationId": "agent",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AgentBody")}}},
                "responses": {"200": _json(_ref("AgentResult"), "the answer and the trace"), **_errors(*_COMMON)},
            }
        },
        "/chat": {
            "post": {
                "summary": "One reply as a whole JSON answer.",
                "operationId": "chat",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ChatBody")}}},
                "responses": {"200": _json(_ref("ChatResult"), "the answer"), **_errors(*_COMMON)},
            }
        },
        "/chat/batch": {
            "post": {
                "summary": "Several requests through the same admission; JSON, or SSE with Accept: text/event-stream.",
                "operationId": "chatBatch",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BatchBody")}}},
                "responses": {
                    "200": {
                        "description": "results in input order (JSON) or one result event each (SSE)",
                        "content": {
                            "application/json": {"schema": _ref("BatchResult")},
                            **_sse(_BATCH_EVENTS),
                        },
                    },
                    **_errors(*_COMMON),
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI-compatible chat completions, streamed or not.",
                "operationId": "openaiChatCompletions",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OpenAIBody")}}},
                "responses": {
                    "200": {
                        "description": "a chat.completion, or chat.completion.chunk events then [DONE]",
                        "content": {
                            "application/json": {"schema": _ref("OpenAICompletion")},
                            **_sse(None),
                        },
                    },
                    **_errors(*_COMMON, openai=True),
                },
            }
        },
        **{
            f"/v1/{name}": {
                "post": {
                    "summary": summary,
                    "operationId": operation,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RelayBody")}}},
                    "responses": {
                        "200": {
                            "description": "the upstream's answer as it sent it: JSON, or its events when streamed",
                            "content": {"application/json": {"schema": {"type": "object"}}, **_sse(None)},
                        },
                        **_errors(*_COMMON, openai=True),
                    },
                }
            }
            for name, operation, summary in (
                ("embeddings", "openaiEmbeddings", "OpenAI-compatible embeddings, relayed."),
                ("completions", "openaiCompletions", "OpenAI-compatible (legacy) completions, relayed, streamed or not."),
                ("responses", "openaiResponses", "OpenAI's Responses API, relayed; streamed events keep their event lines."),
            )
        },
        "/v1/models": {
            "get": {
                "summary": "The backend's models, OpenAI's list shape.",
                "operationId": "openaiModels",
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["object", "data"],
                         "properties": {"object": {"const": "list"}, "data": {"type": "array"}}},
                        "the models",
                    ),
                    **_errors("401", "405", "431", "500", "502", "504", openai=True),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness.",
                "operationId": "healthz",
                "security": _PUBLIC,
                "responses": {"200": _json(_STATUS, "the process runs"), **_errors("405", "431")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 once a drain started.",
                "operationId": "readyz",
                "security": _PUBLIC,
                "responses": {
                    "200": _json(_STATUS, "ready"),
                    "503": _json(_STATUS, "shutting down"),
                    **_errors("405", "431"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition.",
                "operationId": "metrics",
                "security": _PUBLIC,
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors("405", "431"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "operationId": "openapi",
                "security": _PUBLIC,
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors("405", "431")},
            }
        },
        "/": {
            "get": {
                "summary": "The chat page.",
                "operationId": "chatPage",
                "security": _PUBLIC,
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                    **_errors("405", "431"),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "headers": {
            "RetryAfter": {
                "description": "whole seconds to wait before retrying",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        },
        "schemas": {
            "Message": _MESSAGE,
            "ChatBody": _CHAT_BODY,
            "AgentBody": _AGENT_BODY,
            "AgentResult": _AGENT_RESULT,
            "Usage": _USAGE,
            "Timings": _TIMINGS,
            "ChatResult": _CHAT_RESULT,
            "BatchBody": _BATCH_BODY,
            "BatchResult": _BATCH_RESULT,
            "OpenAIMessage": _OPENAI_MESSAGE,
            "OpenAIBody": _OPENAI_BODY,
            "OpenAICompletion": _OPENAI_COMPLETION,
            "RelayBody": _RELAY_BODY,
            "Error": _ERROR,
            "OpenAIError": _OPENAI_ERROR,
        },
    },
}


def openapi_for(tool_names: list[str]) -> dict[str, Any]:
    """:data:`OPENAPI` with the agent body's tool names those of a running gateway."""
    doc = copy.deepcopy(OPENAPI)
    items: dict[str, Any] = {"enum": tool_names} if tool_names else {"not": {}}  # no tools: only an empty list
    doc["components"]["schemas"]["AgentBody"]["properties"]["tools"]["items"] = items
    return doc
