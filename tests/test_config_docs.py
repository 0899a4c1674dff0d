"""docs/configuration.md is generated from the config classes and must not drift from them."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_file_matches_the_generator() -> None:
    gen = _generator()
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == gen.render(), (
        "docs/configuration.md is out of date with trio_agent/config.py and trio_agent/cli.py: "
        f"run `{gen.REGENERATE}` and commit the result"
    )


def test_every_field_of_every_config_class_is_documented() -> None:
    gen = _generator()
    text = gen.render()
    from trio_agent import config

    classes = gen.config_classes()
    assert {c.__name__ for c in classes} >= {
        "ServerConfig", "UpstreamConfig", "MockLLMConfig", "MockServerConfig", "BenchConfig"
    }
    for cls in classes:
        section = text.split(f"## {cls.__name__}\n", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in section, (cls.__name__, f.name)
            env = config.env_name(cls, f.name)
            if env is not None:
                assert f"`{env}`" in section


def test_flags_and_variables_are_the_real_ones() -> None:
    text = _generator().render()
    row = next(line for line in text.splitlines() if line.startswith("| `max_concurrency` |"))
    assert "`TRIO_AGENT_MAX_CONCURRENCY`" in row and "`serve --max-concurrency`" in row and "`50`" in row
    row = next(line for line in text.splitlines() if line.startswith("| `base_url` |"))
    assert "`TRIO_AGENT_UPSTREAM_URL`" in row and "`serve --upstream-url`" in row


def test_check_mode_passes_on_the_committed_file() -> None:
    ok = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_check_mode_reports_drift_with_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = _generator()
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration\n\nan old version\n")
    assert gen.main(["--check"], output=stale) == 1
    assert gen.REGENERATE in capsys.readouterr().err
    assert gen.main([], output=stale) == 0
    assert gen.main(["--check"], output=stale) == 0
