"""Write docs/configuration.md from the config classes and the command line.

    .venv/bin/python scripts/gen_config_docs.py           # rewrite docs/configuration.md
    .venv/bin/python scripts/gen_config_docs.py --check   # exit 1 if it is out of date

Every frozen dataclass in ``trio_agent.config`` gets a section: its docstring, then one
row per field with its type, default, environment variable (``config.env_name``) and
the flags that set it (found by walking ``trio_agent.cli.build_parser()``). A field's
description is its ``metadata["doc"]`` when it has one, else the help text of its flag.
``tests/test_config_docs.py`` fails when the committed file differs from this output.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
REGENERATE = ".venv/bin/python scripts/gen_config_docs.py"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trio_agent import cli, config  # noqa: E402

# Which config objects each subcommand's flags fill, and with which flag prefix
# (``serve --mock-ttft`` sets ``MockLLMConfig.ttft``). Flags whose dest is not
# ``prefix + field`` are listed in _ALIASES.
_TARGETS: dict[str, list[tuple[type[Any], str]]] = {
    "serve": [
        (config.ServerConfig, ""),
        (config.UpstreamConfig, "upstream_"),
        (config.MockLLMConfig, "mock_"),
        (config.AgentConfig, ""),
    ],
    "mock-llm": [(config.MockServerConfig, ""), (config.MockLLMConfig, "")],
    "bench": [(config.BenchConfig, "")],
}
_ALIASES: dict[tuple[str, str], list[tuple[type[Any], str]]] = {
    ("serve", "upstream_url"): [(config.UpstreamConfig, "base_url")],
    ("mock-llm", "itl_spread"): [(config.MockLLMConfig, "jitter")],
    ("mock-llm", "fault_rate"): [
        (config.MockServerConfig, f"fault_{kind}_rate") for kind in config.MOCK_FAULT_KINDS
    ],
    ("bench", "no_keepalive"): [(config.BenchConfig, "keepalive")],
}
# Sections first in this order; any other config class follows in definition order.
_ORDER = (
    "ServerConfig", "UpstreamConfig", "MockLLMConfig", "AgentConfig", "MockServerConfig", "BenchConfig"
)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(action: argparse.Action) -> str:
    text = re.sub(r"\s*\[[^\]]*\]\s*$", "", action.help or "")  # drop "[default: ...; env ...]"
    return text.strip()


def flag_index() -> dict[tuple[type[Any], str], list[tuple[str, str, str]]]:
    """(config class, field) -> [(command, flag, help text)], from the real parser."""
    index: dict[tuple[type[Any], str], list[tuple[str, str, str]]] = {}
    for command, sub in _subparsers(cli.build_parser()).items():
        targets = _TARGETS.get(command, [])
        for action in sub._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if not longs or action.dest == "help":
                continue
            found = _ALIASES.get((command, action.dest), [])
            if not found:
                for cls, prefix in targets:
                    names = {f.name for f in dataclasses.fields(cls)}
                    if action.dest.startswith(prefix) and action.dest[len(prefix) :] in names:
                        found = [(cls, action.dest[len(prefix) :])]
                        break
            for key in found:
                index.setdefault(key, []).append((command, " / ".join(longs), _help(action)))
    return index


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", repr(tp))


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return f"{type(value).__name__}()"
    if isinstance(value, (frozenset, tuple)) and not value:
        return "(none)"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_classes() -> list[type[Any]]:
    """Every config dataclass defined in trio_agent.config, in definition order."""
    found = [
        obj
        for obj in vars(config).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == config.__name__
    ]
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(found, key=lambda c: rank.get(c.__name__, len(rank)))  # stable: definition order


def _markdown(doc: str) -> str:
    """reST inline markup of the docstrings -> Markdown."""
    doc = re.sub(r":(?:class|func|meth|mod|attr):`~?([^`]+)`", r"`\1`", doc)
    return doc.replace("``", "`")


def render() -> str:
    flags = flag_index()
    out = [
        "# Configuration",
        "",
        f"<!-- Generated by `{REGENERATE}` from trio_agent/config.py and trio_agent/cli.py;",
        "     do not edit by hand. tests/test_config_docs.py fails when this file is out of date. -->",
        "",
        "Every part of trio_agent takes a frozen, keyword-only config object; nothing reads globals.",
        "`trio-agent serve` builds its objects from `TRIO_AGENT_*` environment variables, then its flags",
        "(flags win). An unknown `TRIO_AGENT_*` variable, or a value that does not parse, is an error that",
        "names the variable. `trio-agent mock-llm` and `trio-agent bench` read flags only.",
        "",
    ]
    for cls in config_classes():
        hints = typing.get_type_hints(cls)
        out += [f"## {cls.__name__}", ""]
        doc = inspect.getdoc(cls) or ""
        out += [_markdown(doc), ""] if doc else []
        out += ["| field | type | default | environment | flag | meaning |", "|---|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            env = config.env_name(cls, f.name)
            given = flags.get((cls, f.name), [])
            flag_text = "<br>".join(f"`{command} {flag}`" for command, flag, _ in given)
            meaning = f.metadata.get("doc") or next((h for _, _, h in given if h), "see above")
            out.append(
                "| "
                + " | ".join(
                    [
                        f"`{f.name}`",
                        _cell(f"`{_type_name(hints[f.name])}`"),
                        _cell(f"`{_default(f)}`"),
                        f"`{env}`" if env else "",
                        flag_text,
                        _cell(meaning),
                    ]
                )
                + " |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str], output: Path = OUTPUT) -> int:
    text = render()
    if "--check" in argv:
        if not output.exists() or output.read_text() != text:
            print(f"{output} is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
