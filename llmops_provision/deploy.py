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
import shlex
import string
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
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


def platform_url(target: Target) -> str:
    """``https://<first lb host>[:port]``, where users reach the platform; the CA that signs
    it is ``secrets_dir(target.name) / "tls-ca.crt"``."""
    from llmops_provision.checks import host_access

    lb = sorted(target.inventory.hosts_of("lb"))[0]
    port = int(target.configs[lb]["lb"]["tls"]["port"])
    address = host_access(target.inventory, lb).address
    return f"https://{address}" + ("" if port == 443 else f":{port}")


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


def _refuse(console: Console, errors: Sequence[object]) -> None:
    for error in errors:
        _err(console, f"error: {error}")
    _err(console, f"{len(errors)} error(s); nothing was changed on any host.")


def _validated(args: argparse.Namespace, console: Console) -> Target | None:
    try:
        return load_target(args.inventory)
    except InvalidInput as exc:
        _refuse(console, exc.errors)
        return None


def prepare(
    args: argparse.Namespace,
    console: Console,
    check: Callable[[Target], str | None] | None = None,
) -> tuple[Target, dict[str, Any]] | None:
    """What a deploying command (apply, rollout) checks before it touches any host: inventory
    and configs, then ``check`` (an error message, or None), then the bundle; then it makes the
    credentials still missing. Returns (target, bundle vars), or None after printing the errors
    (exit 2)."""
    target = _validated(args, console)
    if target is None:
        return None
    problem = check(target) if check is not None else None
    if problem:
        _refuse(console, [problem])
        return None
    try:
        bundle_vars = _bundle_vars(args, target, console)
    except InvalidInput as exc:
        _refuse(console, exc.errors)
        return None
    made = ensure_secrets(target.name)
    if made:
        _err(console, f"generated credentials {', '.join(made)} in {secrets_dir(target.name)}")
    return target, bundle_vars


def _bundle_vars(args: argparse.Namespace, target: Target, console: Console) -> dict[str, Any]:
    """The bundle to deploy: --bundle as given, else built (or reused) from apps/ocr."""
    needs_app = any(target.inventory.hosts_of(t) for t in ("api", "web"))
    if args.server_type and args.server_type not in ("api", "web"):
        needs_app = False
    if not needs_app:
        return {}
    bundle = getattr(args, "bundle", None)
    if bundle and "://" in bundle:
        return {"llmops_bundle": bundle}  # fetched and checked (SHA256SUMS) on the hosts
    if bundle:
        return _verified_bundle_vars(Path(bundle).resolve(), target)
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


def _verified_bundle_vars(path: Path, target: Target) -> dict[str, Any]:
    """A local --bundle checked here, before any host is touched: its SHA256SUMS, descriptor and
    model hashes, and that its release fits the inventory's configs."""
    from llmops_provision.bundle import BundleError, verify_bundle
    from llmops_provision.config import check_release

    try:
        info = verify_bundle(path)
    except BundleError as exc:
        raise InvalidInput(
            [
                ValidationError(
                    str(path),
                    "",
                    p.removeprefix(f"{path}: "),
                    "a bundle built by `llmops-provision bundle`",
                )
                for p in exc.problems
            ]
        ) from exc
    errors = check_release(target.inventory, target.configs, info.descriptor)
    if errors:
        raise InvalidInput(errors)
    return {
        "llmops_bundle": str(path),
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
    """The newest deployment record of an inventory kept on this controller, if any."""
    path = state_dir() / "deployments" / f"{inventory_name}.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        return None
    data: dict[str, Any] = json.loads(lines[-1])
    return data


# Deployment records in the platform database. The controller cannot reach the database (the
# firewall admits web and api hosts only), so `python -m llmops_ocr.db.deployments` runs on an api
# or web host, in the release's venv, as the service user with its db-password credential (as the
# roles' migrations do), with the record as JSON on stdin.
_RELEASE_PYTHON = "/opt/llmops/current/venv/bin/python"
_SERVICE_USERS = {"api": "llmops-api", "web": "llmops-web"}
_DB_TIMEOUT_S = 60.0
_DB_ATTEMPTS = 2


@dataclass(frozen=True)
class Recorded:
    """Where a deployment record went: the local file always, the database when it could."""

    local_path: Path
    db_host: str = ""  # the host that wrote it to the platform database ("" = not written)
    db_error: str = ""  # why the database has no record (when db_host is "")

    def describe(self) -> str:
        if self.db_host:
            return (
                f"deployment recorded in the platform database (through {self.db_host}) "
                f"and in {self.local_path}"
            )
        return (
            f"warning: deployment recorded only in {self.local_path}: the platform database "
            f"could not be written ({self.db_error})"
        )


def db_command(target: Target, host: str, server_type: str, *args: str) -> str:
    """Shell command that runs ``llmops_ocr.db.deployments ARGS`` on ``host`` as its service."""
    cfg = target.configs[host][server_type]
    db = cfg["database"]  # effective config: engine and (sqlite) path are always there
    user = _SERVICE_USERS[server_type]
    props = [
        f"User={user}",
        f"Group={user}",
        "SupplementaryGroups=llmops",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "UMask=0007",
        f"Environment=LLMOPS_CONFIG=/etc/llmops/{server_type}.json",
    ]
    if db["engine"] == "sqlite":
        props.append(f"ReadWritePaths={Path(db['path']).parent}")
    else:
        props.append("LoadCredential=db-password:/etc/credstore/llmops-db-password")
    argv = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--service-type=exec"]
    for prop in props:
        argv += ["-p", prop]
    argv += [_RELEASE_PYTHON, "-m", "llmops_ocr.db.deployments", "--type", server_type, *args]
    return (
        f"test -x {_RELEASE_PYTHON} || {{ echo 'no release installed on this host' >&2; exit 4; }}"
        f"; exec {shlex.join(argv)}"
    )


def db_hosts(target: Target, prefer: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(host, server type) pairs that can reach the database: ``prefer`` first, then api, web."""
    out: list[tuple[str, str]] = []
    order = [*prefer, *target.inventory.hosts_of("api"), *target.inventory.hosts_of("web")]
    for host in dict.fromkeys(order):  # each host once, in that order
        types = target.configs.get(host, {})
        server_type = next((t for t in ("api", "web") if t in types), None)
        if server_type is not None:
            out.append((host, server_type))
    return out


def _run_on_host(target: Target, host: str, command: str, stdin: str) -> tuple[int, str, str]:
    from llmops_provision.checks import host_access

    access = host_access(target.inventory, host)
    if access.ssh_user not in ("", "root") and not access.local:
        command = f"sudo -n sh -c {shlex.quote(command)}"
    argv = ["sh", "-c", command] if access.local else [*access.ssh_argv(), command]
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_DB_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"no answer within {_DB_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return 127, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def _why(host: str, rc: int, err: str) -> str:
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    return f"{host}: {lines[-1] if lines else f'exit {rc}'}"


def _db_run(
    target: Target,
    db_args: Sequence[str],
    stdin: str,
    purpose: str,
    prefer: Sequence[str] = (),
    parse: Callable[[str], Any] = str,
) -> tuple[str, Any, str]:
    """Run ``llmops_ocr.db.deployments DB_ARGS`` on the api/web hosts in turn (at most
    _DB_ATTEMPTS) until one answers: (host, parse(its output), "") or ("", None, why not)."""
    hosts = db_hosts(target, prefer)
    if not hosts:
        return "", None, f"the inventory has no api or web host to {purpose} it from"
    errors: list[str] = []
    for host, server_type in hosts[:_DB_ATTEMPTS]:
        command = db_command(target, host, server_type, *db_args)
        rc, out, err = _run_on_host(target, host, command, stdin)
        if rc != 0:
            errors.append(_why(host, rc, err))
            continue
        try:
            return host, parse(out), ""
        except ValueError:
            errors.append(f"{host}: unreadable answer {out[:80]!r}")
    return "", None, "; ".join(errors)


def db_record(
    target: Target, record: Mapping[str, Any], prefer: Sequence[str] = ()
) -> tuple[str, str]:
    """Write ``record`` to the platform database; returns (host that wrote it, "") or ("", why)."""
    host, _, error = _db_run(target, ["record"], json.dumps(record), "write", prefer)
    return host, error


def db_last_deployment(target: Target) -> tuple[dict[str, Any] | None, str, str]:
    """The newest database record of this inventory: (record or None, host read on, error)."""
    args = ["last", "--inventory", target.name]
    host, rows, error = _db_run(target, args, "", "read", parse=json.loads)
    return (rows[0] if rows else None), host, error


def db_record_of(record: Mapping[str, Any], finished: float) -> dict[str, Any]:
    """The database form (llmops_ocr.db.deployments) of a local deployment record."""
    details = {k: record[k] for k in ("kind", "user", "limit", "hosts", "seconds") if k in record}
    bundle = str(record.get("bundle") or "")
    return {
        "inventory": record["inventory"],
        "bundle_name": bundle.rsplit("/", 1)[-1],
        "version": record.get("version") or "",
        "sha256": record.get("sha256") or "",
        "hosts": sorted(record.get("hosts") or {}),
        "result": record["result"],
        "message": json.dumps(details, sort_keys=True),
        "started_at": record["time"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
    }


def record_deployment(
    target: Target, record: Mapping[str, Any], prefer: Sequence[str] = ()
) -> Recorded:
    """Keep ``record`` locally (always) and in the platform database (when it can be reached).

    A database that cannot be written does not fail the deployment: the caller warns."""
    finished = time.time()
    host, error = db_record(target, db_record_of(record, finished), prefer)
    local = _record(target, {**record, "recorded_in": "database" if host else "local"})
    return Recorded(local, host, error)


def record_from_db(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database record in the shape of a local one (what status prints)."""
    try:
        details = json.loads(row.get("message") or "{}")
    except json.JSONDecodeError:
        details = {"message": row.get("message")}
    if not isinstance(details, dict):
        details = {}
    return {
        "time": row.get("started_at") or "",
        "user": details.get("user", "?"),
        "kind": details.get("kind", "apply"),
        "inventory": row.get("inventory"),
        "limit": details.get("limit"),
        "bundle": row.get("bundle_name") or "",
        "version": row.get("version") or "",
        "sha256": row.get("sha256") or "",
        "hosts": details.get("hosts") or {h: "?" for h in row.get("hosts") or []},
        "result": row.get("result") or "?",
        "seconds": details.get("seconds"),
    }


def newest_deployment(target: Target) -> tuple[dict[str, Any] | None, str]:
    """The last deployment and where it was read: the platform database, else the local file."""
    row, host, error = db_last_deployment(target)
    if host:
        if row is None:
            return None, f"platform database, read through {host}"
        return record_from_db(row), f"platform database, read through {host}"
    local = state_dir() / "deployments" / f"{target.name}.jsonl"
    return last_deployment(target.name), f"local record {local}; database not read: {error}"


def describe_deployment(record: Mapping[str, Any] | None, source: str) -> str:
    """One line for people: the last deployment and where it was read."""
    if record is None:
        return f"last deployment: none recorded ({source})"
    return (
        f"last deployment: {record.get('kind', 'apply')} {record.get('time')} by "
        f"{record.get('user', '?')}: {record.get('result')} (bundle {record.get('version') or '-'}"
        f", limit {record.get('limit') or 'all'}) [{source}]"
    )


def cmd_apply(args: argparse.Namespace) -> int:
    """``apply INVENTORY [--limit] [--server-type] [--bundle]``: converge the hosts."""
    console = Console(stderr=True)
    prepared = prepare(args, console)
    if prepared is None:
        return 2
    target, bundle_vars = prepared
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
    recorded = record_deployment(
        target,
        {
            "kind": "apply",
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
    _err(console, recorded.describe())
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
    last, source = newest_deployment(target)
    if args.json:
        print(
            json.dumps({"hosts": rows, "last_deployment": last, "last_deployment_source": source})
        )
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
    out.print(describe_deployment(last, source), markup=False, highlight=False)
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
