"""The ``trio-agent`` command line: flags and environment -> config objects -> calls.

No logic lives here. Subcommands:

* ``serve``     run the gateway (trio_agent.server)
* ``mock-llm``  run the OpenAI-compatible mock LLM server (trio_agent.mock_server)
* ``bench``     run the load benchmark (trio_agent.bench)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway (mock LLM by default)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    print("trio-agent serve: not built yet", file=sys.stderr)
    return 2


def _add_mock_llm(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mock-llm", help="run the OpenAI-compatible mock LLM server")
    p.set_defaults(func=_run_mock_llm)


def _run_mock_llm(args: argparse.Namespace) -> int:
    print("trio-agent mock-llm: not built yet", file=sys.stderr)
    return 2


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="run the load benchmark")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    print("trio-agent bench: not built yet", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_mock_llm(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
