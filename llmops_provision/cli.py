"""Command line of llmops-provision: parses arguments and dispatches; no logic of its own.

Each subcommand is registered by its own ``_add_<name>`` function below, which sets
``func`` to the function (living in the module that owns the data) that carries it out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llmops_provision import __version__


def _add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`validate PATH...` -- owned by config.py (issue: foundation)."""


def _add_lab(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`lab up|down|status|ssh|reboot` -- owned by lab.py (issue: local lab)."""


def _add_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`bundle APP_DIR` -- owned by bundle.py (issue: OCR services)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmops-provision",
        description="Provision the OCR serving platform's server types with Ansible.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_validate(sub)
    _add_lab(sub)
    _add_bundle(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
