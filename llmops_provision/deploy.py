"""apply, plan, status, backup and restore: validate the inventory, then run playbooks.

Data flows one way: inventory -> effective configs (nothing touched on an error, exit 2) ->
secrets -> playbook run (runner.py) -> summary -> deployment record.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import secrets
import string
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from llmops_provision.errors import InvalidInput, ValidationError
from llmops_provision.inventory import Inventory, load_inventory
from llmops_provision.runner import RunResult, print_result, run_playbook, state_dir
from llmops_provision.schemas import project_root
from llmops_provision.server_types import REGISTRY

# Credentials every inventory gets (docs/CONTRACTS.md "Credentials").
CREDENTIALS: tuple[str, ...] = ("api-token", "db-password", "session-key", "admin-password")
_ALPHABET = string.ascii_letters + string.digits
_SECRET_LENGTH = 40
_BACKUP_MSG = "llmops_backup="
# Names of backups the database role writes (llmops-db-backup): UTC time and the engine's suffix.
BACKUP_NAME = re.compile(r"llmops-[0-9]{8}T[0-9]{6}Z\.(dump|sqlite3)")
_STATUS_MSG = "llmops_status="


@dataclass(frozen=True)
class Target:
    """A validated inventory: parsed hosts and groups plus every host's effective configs."""

    path: Path
    inventory: Inventory
    configs: dict[str, dict[str, dict[str, Any]]]

    @property
    def name(self) -> str:
        """The inventory's name (file name without extension): names its secrets dir."""
        return self.path.stem


def _err(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


def load_target(path: str | Path) -> Target:
    """Parse and validate an inventory; raises InvalidInput with every problem found."""
    from llmops_provision.config import effective_configs

    p = Path(path)
    if not p.is_file():
        raise InvalidInput(
            [ValidationError(str(path), "", "no such inventory file", "a YAML inventory path")]
        )
    inv = load_inventory(p)
    return Target(path=p.resolve(), inventory=inv, configs=effective_configs(inv))


def secrets_dir(inventory_name: str) -> Path:
    """``.llmops/secrets/<inventory-name>/`` (0700; see runner.state_dir)."""
    return state_dir() / "secrets" / inventory_name


def ensure_secrets(inventory_name: str, names: Sequence[str] = CREDENTIALS) -> list[str]:
    """Generate the missing credentials (0600 files, 0700 dir); return the names generated.

    Values never pass through a command line, an environment variable or a log: roles read the
    files from the controller with lookup().
    """
    directory = secrets_dir(inventory_name)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    made = []
    for name in names:
        path = directory / name
        if path.exists():
            continue
        value = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LENGTH))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        made.append(name)
    return made


def _base_vars(target: Target) -> dict[str, Any]:
    return {
        "llmops_effective_configs": target.configs,
        "llmops_secrets_dir": str(secrets_dir(target.name)),
        "llmops_inventory_name": target.name,
    }


def _playbooks(server_type: str | None) -> str | list[str]:
    """site.yml, or for one server type the base playbook and that type's playbook."""
    if server_type is None:
        return "site.yml"
    return ["playbooks/common.yml", f"playbooks/{server_type}.yml"]


def _limit(server_type: str | None, limit: str | None) -> str | None:
    """Ansible --limit from the options: a server type's group, intersected with --limit."""
    parts = [p for p in (server_type, limit) if p]
    if server_type and limit:
        return f"{server_type}:&{limit}"
    return parts[0] if parts else None


def _validated(args: argparse.Namespace, console: Console) -> Target | None:
    try:
        return load_target(args.inventory)
    except InvalidInput as exc:
        for error in exc.errors:
            _err(console, f"error: {error}")
        _err(console, f"{len(exc.errors)} error(s); nothing was changed on any host.")
        return None


def _bundle_vars(args: argparse.Namespace, target: Target, console: Console) -> dict[str, Any]:
    """The bundle to deploy: --bundle as given, else built (or reused) from apps/ocr."""
    needs_app = any(target.inventory.hosts_of(t) for t in ("api", "web"))
    if args.server_type and args.server_type not in ("api", "web"):
        needs_app = False
    if not needs_app:
        return {}
    bundle = getattr(args, "bundle", None)
    if bundle:
        if "://" not in bundle:
            bundle = str(Path(bundle).resolve())
        return {"llmops_bundle": bundle}
    from llmops_provision.bundle import BundleError, build_bundle

    try:
        result = build_bundle(
            project_root() / "apps" / "ocr",
            project_root() / "dist",
            log=lambda msg: _err(console, msg),
        )
    except BundleError as exc:
        raise InvalidInput(
            [ValidationError("apps/ocr", "", p, "a bundle that builds") for p in exc.problems]
        ) from exc
    info = result.info
    return {
        "llmops_bundle": str(info.path),
        "llmops_bundle_version": info.version,
        "llmops_bundle_sha256": info.sha256,
    }


def _record(target: Target, record: Mapping[str, Any]) -> Path:
    """Append a deployment record to ``.llmops/deployments/<inventory>.jsonl``."""
    directory = state_dir() / "deployments"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{target.name}.jsonl"
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    return path


def last_deployment(inventory_name: str) -> dict[str, Any] | None:
    """The newest deployment record of an inventory, if any."""
    path = state_dir() / "deployments" / f"{inventory_name}.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        return None
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def cmd_apply(args: argparse.Namespace) -> int:
    """``apply INVENTORY [--limit] [--server-type] [--bundle]``: converge the hosts."""
    console = Console(stderr=True)
    target = _validated(args, console)
    if target is None:
        return 2
    try:
        bundle_vars = _bundle_vars(args, target, console)
    except InvalidInput as exc:
        for error in exc.errors:
            _err(console, f"error: {error}")
        return 2
    made = ensure_secrets(target.name)
    if made:
        _err(console, f"generated credentials {', '.join(made)} in {secrets_dir(target.name)}")
    started = time.time()
    result = run_playbook(
        _playbooks(args.server_type),
        target.path,
        extra_vars={**_base_vars(target), **bundle_vars},
        limit=_limit(args.server_type, args.limit),
        show_progress=not args.no_progress,
        log_name=f"{target.name}-apply",
    )
    print_result(result, console, title=f"apply {target.name}")
    _record(
        target,
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "user": getpass.getuser(),
            "inventory": target.name,
            "limit": _limit(args.server_type, args.limit),
            "bundle": bundle_vars.get("llmops_bundle", ""),
            "version": bundle_vars.get("llmops_bundle_version", ""),
            "sha256": bundle_vars.get("llmops_bundle_sha256", ""),
            "hosts": {h.host: h.status for h in result.hosts},
            "result": "ok" if result.ok else "failed",
            "seconds": round(result.seconds, 1),
        },
    )
    return 0 if result.ok else 1


def cmd_plan(args: argparse.Namespace) -> int:
    """``plan INVENTORY``: check mode with diff; lists what apply would change, host by host."""
    console = Console(stderr=True)
    out = Console()
    target = _validated(args, console)
    if target is None:
        return 2
    ensure_secrets(target.name)
    result = run_playbook(
        _playbooks(args.server_type),
        target.path,
        extra_vars=_base_vars(target),
        limit=_limit(args.server_type, args.limit),
        check=True,
        diff=True,
        show_progress=not args.no_progress,
        log_name=f"{target.name}-plan",
    )
    if not result.changes:
        out.print("no changes: every host is as the inventory says", highlight=False)
    for change in result.changes:
        out.print(f"[yellow]~[/] {change.host}: {change.task}", highlight=False)
        if change.diff:
            for line in change.diff.splitlines():
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
                out.print(f"    {line}", style=style or None, markup=False, highlight=False)
    print_result(result, console, title=f"plan {target.name} (check mode, nothing changed)")
    return 0 if result.ok else 1


def _probe_vars(target: Target) -> dict[str, list[dict[str, Any]]]:
    """Health probes per host (from server_types), resolved to URLs/ports on its address."""
    probes: dict[str, list[dict[str, Any]]] = {}
    for host, per_type in target.configs.items():
        address = str(target.inventory.hosts[host].vars.get("llmops_address", ""))
        address = address or target.inventory.hosts[host].address
        shown = f"[{address}]" if ":" in address else address
        items: list[dict[str, Any]] = []
        for type_name, cfg in per_type.items():
            for probe in REGISTRY[type_name].health_probes(cfg):
                entry: dict[str, Any] = {"name": probe.name, "kind": probe.kind}
                if probe.kind == "http":
                    entry["url"] = f"{probe.scheme}://{shown}:{probe.port}{probe.path}"
                    entry["expect"] = list(probe.expect)
                elif probe.kind == "tcp":
                    entry.update(host=address, port=probe.port)
                else:
                    entry["path"] = probe.path
                items.append(entry)
        probes[host] = items
    return probes


def parse_units(text: str) -> list[dict[str, str]]:
    """``systemctl show`` output for several units -> one dict per unit that exists."""
    units: list[dict[str, str]] = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields and fields.get("LoadState") != "not-found":
            units.append(fields)
    return units


def status_rows(result: RunResult) -> dict[str, dict[str, Any]]:
    """Per host, the status the status playbook reported (or why there is none)."""
    rows: dict[str, dict[str, Any]] = {}
    for host, _task, msg in result.messages:
        if msg.startswith(_STATUS_MSG):
            data = json.loads(msg[len(_STATUS_MSG) :])
            data["units"] = parse_units(str(data.get("units", "")))
            for probe in data.get("probes", []):
                # uri's "Status code was -1 and not [200]: Request failed: <urlopen error X>"
                probe["detail"] = str(probe["detail"]).rsplit("Request failed: ", 1)[-1]
            rows[host] = data
    for failure in result.failures:
        rows.setdefault(
            failure.host,
            {"error": ("unreachable: " if failure.unreachable else "") + failure.message},
        )
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    """``status INVENTORY``: per host and service: systemd state, health, release, last deploy."""
    console = Console(stderr=True)
    out = Console()
    target = _validated(args, console)
    if target is None:
        return 2
    result = run_playbook(
        "playbooks/status.yml",
        target.path,
        extra_vars={"llmops_status_probes": _probe_vars(target)},
        limit=args.limit,
        show_progress=False,
        log_name=f"{target.name}-status",
    )
    rows = status_rows(result)
    if args.json:
        print(json.dumps({"hosts": rows, "last_deployment": last_deployment(target.name)}))
        return 0 if result.ok and _healthy(rows) else 1
    table = Table(title=f"status {target.name}", title_justify="left")
    for column in ("host", "types", "unit", "state", "release"):
        table.add_column(column)
    for host in target.inventory.hosts:
        types = ",".join(target.inventory.server_types_of(host))
        row = rows.get(host)
        if row is None:
            continue
        if "error" in row:
            table.add_row(host, types, "-", f"[red]{row['error'].splitlines()[0]}[/]", "")
            continue
        release = Path(str(row.get("release") or "")).name or "-"
        for i, unit in enumerate(row["units"]):
            state = f"{unit.get('ActiveState', '?')}/{unit.get('SubState', '?')}"
            style = "green" if unit.get("ActiveState") == "active" else "red"
            table.add_row(
                host if i == 0 else "",
                types if i == 0 else "",
                unit.get("Id", "?").removesuffix(".service"),
                f"[{style}]{state}[/] ({unit.get('UnitFileState', '')})",
                release if i == 0 else "",
            )
        for probe in row.get("probes", []):
            mark = "[green]ok[/]" if probe["ok"] else "[red]FAIL[/]"
            table.add_row("", "", f"probe: {probe['name']}", f"{mark} {probe['detail']}", "")
    out.print(table)
    last = last_deployment(target.name)
    if last:
        out.print(
            f"last deployment: {last['time']} by {last['user']}: {last['result']}"
            f" (bundle {last.get('version') or '-'}, limit {last.get('limit') or 'all'})",
            highlight=False,
        )
    else:
        out.print("last deployment: none recorded from this controller", highlight=False)
    return 0 if result.ok and _healthy(rows) else 1


def _healthy(rows: Mapping[str, Mapping[str, Any]]) -> bool:
    return all(
        "error" not in r and all(p["ok"] for p in r.get("probes", [])) for r in rows.values()
    )


def cmd_backup(args: argparse.Namespace) -> int:
    """``backup INVENTORY``: one database backup now; prints the new backup's name."""
    console = Console(stderr=True)
    target = _validated(args, console)
    if target is None:
        return 2
    result = run_playbook(
        "playbooks/backup.yml",
        target.path,
        extra_vars=_base_vars(target),
        show_progress=not args.no_progress,
        log_name=f"{target.name}-backup",
    )
    print_result(result, console, title=f"backup {target.name}")
    for host, _task, msg in result.messages:
        if msg.startswith(_BACKUP_MSG):
            print(f"{host} {msg[len(_BACKUP_MSG) :]}")
    return 0 if result.ok else 1


def cmd_restore(args: argparse.Namespace) -> int:
    """``restore INVENTORY --from NAME``: restore a backup with web and api stopped around it."""
    console = Console(stderr=True)
    if not BACKUP_NAME.fullmatch(args.from_):
        _err(
            console,
            f"error: --from {args.from_!r} is not a backup name (allowed: "
            "llmops-YYYYmmddTHHMMSSZ.dump or .sqlite3, as printed by `llmops-provision backup`); "
            "nothing was changed on any host.",
        )
        return 2
    target = _validated(args, console)
    if target is None:
        return 2
    result = run_playbook(
        "playbooks/restore.yml",
        target.path,
        extra_vars={**_base_vars(target), "database_restore_from": args.from_},
        show_progress=not args.no_progress,
        log_name=f"{target.name}-restore",
    )
    print_result(result, console, title=f"restore {target.name} from {args.from_}")
    return 0 if result.ok else 1


def add_common_options(parser: argparse.ArgumentParser, *, limit: bool = True) -> None:
    """INVENTORY plus the options every playbook command shares."""
    parser.add_argument("inventory", metavar="INVENTORY", help="Ansible YAML inventory")
    if limit:
        parser.add_argument("--limit", metavar="HOSTS", help="only these hosts (Ansible pattern)")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        default=not sys.stderr.isatty(),
        help="no live progress display (default when stderr is not a terminal)",
    )
