"""`llmops-provision validate PATH...`: inventories, config files, app directories, descriptors.

Each path is classified (``kind_of``) and checked by the function that owns that kind of input;
nothing here knows schema details. Exit code 0 when every input is valid, 2 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops_provision.config import (
    check_inventory_configs,
    load_json,
    validate_config,
    verify_app_dir,
)
from llmops_provision.errors import InvalidInput, ValidationError
from llmops_provision.inventory import load_inventory
from llmops_provision.schemas import validate_against

EXIT_OK = 0
EXIT_INVALID = 2


@dataclass
class Result:
    """The outcome for one input path."""

    path: str
    kind: str
    errors: list[ValidationError]
    summary: str = ""
    effective: dict[str, Any] | None = field(default=None)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "ok": self.ok,
            "summary": self.summary,
            "errors": [e.to_dict() for e in self.errors],
        }
        if self.effective is not None:
            out["effective"] = self.effective
        return out


def _check_inventory(path: str) -> Result:
    try:
        inv = load_inventory(path)
    except InvalidInput as exc:
        return Result(path, "inventory", exc.errors)
    configs, errors = check_inventory_configs(inv)
    n = len(inv.hosts)
    summary = f"{n} host{'s' if n != 1 else ''}, environment {inv.environment}"
    return Result(path, "inventory", errors, summary, None if errors else configs)


def _check_config(path: str) -> Result:
    try:
        data = load_json(Path(path), path)
    except InvalidInput as exc:
        return Result(path, "config", exc.errors)
    if isinstance(data, dict) and "server_type" not in data and "components" in data:
        return _check_descriptor_json(path, data)
    summary = f"server type {data.get('server_type')}" if isinstance(data, dict) else ""
    return Result(path, "config", validate_config(data, path), summary)


def _check_descriptor_json(path: str, data: Any) -> Result:
    """A descriptor under another name: schema only (its files are checked with its directory)."""
    return Result(path, "descriptor", validate_against("descriptor", data, path))


def _check_app(path: str) -> Result:
    p = Path(path)
    app_dir = p.parent if p.is_file() else p
    errors = verify_app_dir(app_dir)
    summary = ""
    if not errors:
        desc = json.loads((app_dir / "descriptor.json").read_text(encoding="utf-8"))
        summary = (
            f"{desc['name']} {desc['version']}: components {', '.join(sorted(desc['components']))}"
            f", {len(desc['models'])} model(s)"
        )
    return Result(path, "app" if p.is_dir() else "descriptor", errors, summary)


def _check_bundle(path: str) -> Result:
    """A bundle (.tar.gz from `llmops-provision bundle`): SHA256SUMS, descriptor, model hashes."""
    from llmops_provision.bundle import BundleError, verify_bundle

    try:
        info = verify_bundle(Path(path))
    except BundleError as exc:
        errors = [ValidationError(path, "", p.removeprefix(f"{path}: ")) for p in exc.problems]
        return Result(path, "bundle", errors)
    summary = f"{info.name} {info.version}: {len(info.wheels)} wheels, sha256 {info.sha256}"
    return Result(path, "bundle", [], summary)


Checker = Callable[[str], Result]

# Kinds of input and their checkers; other modules may add kinds (e.g. bundles).
CHECKERS: dict[str, Checker] = {
    "inventory": _check_inventory,
    "config": _check_config,
    "app": _check_app,
    "descriptor": _check_app,
    "bundle": _check_bundle,
}


def kind_of(path: str) -> str | None:
    """Which kind of input ``path`` is, from its name and type; None when it is none of them."""
    p = Path(path)
    if p.is_dir():
        return "app"
    if p.name == "descriptor.json":
        return "descriptor"
    if p.name.endswith((".tar.gz", ".tgz")):
        return "bundle"
    suffix = p.suffix.lower()
    if suffix in (".yml", ".yaml"):
        return "inventory"
    if suffix == ".json":
        return "config"
    return None


def check_path(path: str) -> Result:
    """Validate one input of any kind."""
    if not Path(path).exists():
        return Result(path, "missing", [ValidationError(path, "", "no such file or directory")])
    kind = kind_of(path)
    if kind is None:
        return Result(
            path,
            "unknown",
            [
                ValidationError(
                    path,
                    "",
                    "not a kind of input validate knows",
                    "an inventory (.yml/.yaml), a config (.json), descriptor.json, "
                    "an application directory or a bundle (.tar.gz)",
                )
            ],
        )
    return CHECKERS[kind](path)


def check_paths(paths: Sequence[str]) -> list[Result]:
    return [check_path(p) for p in paths]


def _print_text(results: list[Result], effective: bool) -> None:
    for r in results:
        if r.ok:
            print(f"ok  {r.path} ({r.kind}{': ' + r.summary if r.summary else ''})")
        for e in r.errors:
            print(str(e))
    bad = sum(len(r.errors) for r in results)
    if bad:
        n_inputs = sum(1 for r in results if not r.ok)
        print(f"{bad} error(s) in {n_inputs} of {len(results)} input(s)", file=sys.stderr)
    if effective:
        eff = {r.path: r.effective for r in results if r.effective is not None}
        print(json.dumps(eff, indent=2, sort_keys=True))


def cli_validate(args: argparse.Namespace) -> int:
    """Entry point of the ``validate`` subcommand."""
    try:
        results = check_paths(args.paths)
    except Exception as exc:  # a bug, not bad input: say so, with the traceback only on --debug
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(
            f"internal error while validating: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 1
    ok = all(r.ok for r in results)
    if args.format == "json":
        doc: dict[str, Any] = {"ok": ok, "inputs": [r.to_dict() for r in results]}
        if not args.effective:
            for item in doc["inputs"]:
                item.pop("effective", None)
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        _print_text(results, args.effective)
    return EXIT_OK if ok else EXIT_INVALID
