"""The Python examples in docs/ run as shown: each block in a fresh interpreter, its output compared.

A ```python block followed at once by a ```text block must print exactly that text; a block
without one must simply run and exit 0. Real time and (for embedding.md) real sockets on
127.0.0.1 port 0, hence ``e2e``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("docs/library.md", "docs/embedding.md")
_BLOCK = re.compile(r"```python\n(.*?)```\n(?:```text\n(.*?)```\n)?", re.DOTALL)


def _examples() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in DOCS:
        for i, m in enumerate(_BLOCK.finditer((ROOT / doc).read_text())):
            found.append((f"{doc}#{i + 1}", m.group(1), m.group(2)))
    return found


EXAMPLES = _examples()


def test_the_docs_have_examples() -> None:
    assert sum(name.startswith("docs/library.md") for name, _, _ in EXAMPLES) >= 7
    assert sum(name.startswith("docs/embedding.md") for name, _, _ in EXAMPLES) >= 2


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "code", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_runs_as_shown(name: str, code: str, expected: str | None) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stderr}"
    if expected is not None:
        assert done.stdout == expected, f"{name} printed:\n{done.stdout}"
