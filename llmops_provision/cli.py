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
    from llmops_provision.validate import cli_validate

    p = sub.add_parser(
        "validate",
        help="check inventories, config files, app directories and descriptor.json files",
        description=(
            "Check inputs without touching a host: an inventory (template + llmops_config "
            "overrides merged per host, validated, cross-host rules), a config JSON file, "
            "an application directory or its descriptor.json. Exit 0 when all are valid, "
            "2 otherwise; one line per error: FILE: JSON.PATH: problem (allowed: ...)."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to check")
    p.add_argument(
        "--format", choices=("text", "json"), default="text", help="output for people or machines"
    )
    p.add_argument(
        "--effective",
        action="store_true",
        help="also print each valid inventory's effective configs (host -> type -> config)",
    )
    p.set_defaults(func=cli_validate)


def _add_lab(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`lab up|down|status|ssh|reboot` -- owned by lab.py (issue: local lab)."""


def _add_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`bundle APP_DIR` -- owned by bundle.py (issue: OCR services)."""
    from llmops_provision import bundle

    p = sub.add_parser(
        "bundle",
        help="build dist/<name>-<version>.tar.gz: app + dependency wheels, models, SHA256SUMS",
        description="Build an offline-installable bundle of an app dir holding descriptor.json. "
        "A version already built in --out is verified and reused.",
    )
    p.add_argument("app_dir", metavar="APP_DIR", help="app directory, e.g. apps/ocr")
    p.add_argument("--out", default="dist", help="output directory (default: dist)")
    p.add_argument("--force", action="store_true", help="rebuild even if this version exists")
    p.add_argument(
        "--find-links",
        action="append",
        metavar="DIR",
        help="extra local wheel dir (repeatable; /opt/wheels is always used if present)",
    )
    p.add_argument(
        "--wheel-cache",
        metavar="DIR",
        help="cache of downloaded wheels (default: $LLMOPS_WHEEL_CACHE or ~/.cache/llmops/wheels)",
    )
    p.set_defaults(func=bundle.cmd_bundle)


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
