"""The Python examples in docs/ run as shown: each page in a fresh interpreter, each output compared.

A ```python block followed at once by a ```text block must print exactly that text; a block
without one must simply run and exit 0. Real time and (for embedding.md) real sockets on
127.0.0.1 port 0, hence ``e2e``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("docs/library.md", "docs/embedding.md", "README.md")
# README's other Python blocks talk to a running gateway; only those shown with their output run.
_OUTPUT_ONLY = {"README.md"}
_BLOCK = re.compile(r"```python\n(.*?)```\n(?:```text\n(.*?)```\n)?", re.DOTALL)


def _examples() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in DOCS:
        for i, m in enumerate(_BLOCK.finditer((ROOT / doc).read_text())):
            if doc in _OUTPUT_ONLY and m.group(2) is None:
                continue
            found.append((f"{doc}#{i + 1}", m.group(1), m.group(2)))
    return found


EXAMPLES = _examples()


def test_the_docs_have_examples() -> None:
    assert sum(name.startswith("docs/library.md") for name, _, _ in EXAMPLES) >= 7
    assert sum(name.startswith("docs/embedding.md") for name, _, _ in EXAMPLES) >= 2
    assert sum(name.startswith("README.md") for name, _, _ in EXAMPLES) >= 1


# Runs one page's blocks in order in a fresh interpreter, each in its own namespace, and
# prints {"block name": [stdout, error or null]} as JSON: one interpreter start per page.
_RUNNER = """
import contextlib, io, json, sys, traceback
results = {}
for name, code in json.load(sys.stdin):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        results[name] = [out.getvalue(), None]
    except BaseException:
        results[name] = [out.getvalue(), traceback.format_exc()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outputs() -> dict[str, tuple[str, str | None]]:
    """Every page's examples, the pages run at once (each example mostly sleeps)."""
    procs = []
    for doc in DOCS:
        blocks = [(name, code) for name, code, _ in EXAMPLES if name.startswith(doc + "#")]
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        procs.append((proc, json.dumps(blocks)))
    results: dict[str, tuple[str, str | None]] = {}
    for proc, blocks_json in procs:
        try:
            out, err = proc.communicate(blocks_json, timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        assert proc.returncode == 0, err
        results.update({name: (stdout, error) for name, (stdout, error) in json.loads(out).items()})
    return results


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "expected"), [(n, e) for n, _, e in EXAMPLES], ids=[e[0] for e in EXAMPLES])
def test_example_runs_as_shown(
    name: str, expected: str | None, outputs: dict[str, tuple[str, str | None]]
) -> None:
    stdout, error = outputs[name]
    assert error is None, f"{name} failed:\n{error}"
    if expected is not None:
        assert stdout == expected, f"{name} printed:\n{stdout}"
