"""The README's status table lists every error code the gateway can answer."""

from __future__ import annotations

import re
from pathlib import Path

from trio_agent import errors

ROOT = Path(__file__).resolve().parent.parent

# Codes of errors that never reach a client: the library's own (SSE codec,
# concurrency helpers, configuration) and the abstract roots.
_NOT_ANSWERED = {"config_error", "admission_refused", "bad_request", "retry_budget_exhausted"}
# retry_budget_exhausted: an upstream call refused by the retry budget answers with the
# code of the failure that was not retried (issue 17: a detail of the message, not a code).


def _gateway_codes() -> set[str]:
    answered = (errors.AdmissionError, errors.RequestError, errors.UpstreamError)
    codes = {
        obj.code
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, answered)
    }
    codes |= {errors.TrioAgentError.code, errors.DeadlineError.code}  # internal_error, timeout
    for path in (ROOT / "trio_agent" / "server").rglob("*.py"):
        codes |= set(re.findall(r'code="([a-z_]+)"', path.read_text()))
    return codes - _NOT_ANSWERED


def test_every_code_is_in_the_readme_status_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Status and error codes", 1)[1].split("\n## ", 1)[0]
    missing = sorted(code for code in _gateway_codes() if f"`{code}`" not in table)
    assert not missing, f"README.md's status table lacks {missing}"


def test_the_readme_stays_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert not re.search(r"`[0-9a-f]{7,40}`", readme), "no commit hashes in the README"
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", readme):
        assert (ROOT / target).exists(), target


def test_relative_links_in_docs_resolve() -> None:
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").rglob("*.md")]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
