"""trio_agent.__all__ lists exactly the public names the package exports."""

import types

import trio_agent


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(trio_agent).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(trio_agent.__all__) == public


def test_all_is_sorted_and_unique() -> None:
    assert list(trio_agent.__all__) == sorted(set(trio_agent.__all__))


def test_every_public_name_has_a_docstring() -> None:
    missing = [
        name
        for name in trio_agent.__all__
        if not (getattr(trio_agent, name).__doc__ or "").strip()
    ]
    assert missing == []


def test_the_root_exports_the_library_only() -> None:
    """The root holds the SSE codec, the concurrency helpers, errors and config: no server parts."""
    for name in ("Gateway", "create_app", "serve", "Drain", "Histogram", "worker_config",
                 "OpenAIBackend", "MockLLM", "serve_mock_llm", "Admission"):
        assert name not in trio_agent.__all__ and not hasattr(trio_agent, name)
    assert {"SSEDecoder", "encode_event", "map_concurrently", "as_completed", "TrioAgentError",
            "UpstreamError", "ServerConfig"} <= set(trio_agent.__all__)


def test_import_trio_agent_is_light() -> None:
    """``import trio_agent`` loads no framework, server or HTTP client (checked in a fresh process)."""
    import subprocess
    import sys

    heavy = ("quart", "quart_trio", "hypercorn", "httpx", "httpcore", "h11", "werkzeug", "redis")
    code = (
        "import sys, trio_agent\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"import trio_agent loaded: {out.stdout.strip()}"
