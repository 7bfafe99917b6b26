"""``start`` and ``stop``: one server type on this machine (the seed's start_server.sh).

``start`` applies ``playbooks/<type>.yml`` to the local host (connection local) through the
runner, with the type's config template merged with ``<config-dir>/<type>.json`` and, for web and
api, a bundle built from ``--app-dir``. ``stop`` stops and disables the type's systemd units.
Both need systemd as PID 1 (a Debian 12 server or a lab host).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from llmops_provision.errors import InvalidInput, ValidationError
from llmops_provision.runner import RunResult
from llmops_provision.schemas import merge_mode, project_root
from llmops_provision.server_types import REGISTRY

LOCAL_HOST = "localhost"
LOCAL_INVENTORY_NAME = "local"
# The systemd units each type's role installs (as playbooks/status.yml lists them).
UNITS: dict[str, tuple[str, ...]] = {
    "api": ("llmops-api.service",),
    "web": ("llmops-web.service",),
    "db": (
        "llmops-db-backup.timer",
        "prometheus-postgres-exporter.service",
        "postgresql@15-main.service",
        "postgresql.service",
    ),
    "lb": ("nginx.service", "prometheus-nginx-exporter.service"),
    "monitoring": (
        "prometheus.service",
        "prometheus-alertmanager.service",
        "systemd-journal-remote.socket",
        "systemd-journal-remote.service",
    ),
}
_APP_TYPES = ("api", "web")


def merge_config(server_type: str, base: Mapping[str, Any], override: Mapping[str, Any]) -> Any:
    """``override`` over ``base``: objects merge key by key unless the schema says replace."""
    out = copy.deepcopy(dict(base))

    def merge(target: dict[str, Any], over: Mapping[str, Any], at: tuple[str, ...]) -> None:
        for key, value in over.items():
            here = (*at, str(key))
            if (
                isinstance(value, Mapping)
                and isinstance(target.get(key), dict)
                and merge_mode(server_type, here) != "replace"
            ):
                merge(target[key], value, here)
            else:
                target[key] = copy.deepcopy(value)

    merge(out, override, ())
    return out


def local_config(server_type: str, config_dir: str | Path | None) -> dict[str, Any]:
    """The effective config: ``configs/<type>.json`` with ``<config-dir>/<type>.json`` over it.

    Raises InvalidInput naming the file and field of every problem.
    """
    from llmops_provision.config import load_json

    stype = REGISTRY[server_type]
    config = stype.template()
    shown = f"configs/{server_type}.json"
    if config_dir is not None:
        directory = Path(config_dir)
        if not directory.is_dir():
            raise InvalidInput(
                [
                    ValidationError(
                        str(config_dir),
                        "",
                        "no such directory",
                        f"a dir holding {server_type}.json",
                    )
                ]
            )
        path = directory / f"{server_type}.json"
        if path.is_file():
            override = load_json(path, str(path))
            if not isinstance(override, dict):
                raise InvalidInput(
                    [ValidationError(str(path), "", "not a JSON object", "an object of fields")]
                )
            override.setdefault("server_type", server_type)
            config = merge_config(server_type, config, override)
            shown = str(path)
    errors = stype.validate_config(config, shown)
    if errors:
        raise InvalidInput(errors)
    return config


def local_address() -> str:
    """This machine's primary IPv4 address (the source of its default route), else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def local_inventory(
    server_type: str, address: str, connection: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An inventory with this machine as the only host of the type's group (connection local;
    ``connection`` replaces those vars, e.g. to reach a lab host over SSH in tests)."""
    groups: dict[str, Any] = {name: {"hosts": {}} for name in REGISTRY}
    how = (
        dict(connection)
        if connection is not None
        else {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    )
    groups[server_type] = {"hosts": {LOCAL_HOST: {**how, "llmops_address": address}}}
    return {"all": {"vars": {"llmops_environment": "dev"}, "children": groups}}


def run_start(
    server_type: str,
    config: Mapping[str, Any],
    bundle: Mapping[str, Any],
    address: str,
    *,
    connection: Mapping[str, Any] | None = None,
    show_progress: bool = False,
) -> RunResult:
    """Run roles/common and the type's playbook on this machine through the runner."""
    from llmops_provision.deploy import ensure_secrets, secrets_dir
    from llmops_provision.runner import run_playbook

    ensure_secrets(LOCAL_INVENTORY_NAME)
    with tempfile.TemporaryDirectory(prefix="llmops-start-") as tmp:
        inventory = Path(tmp) / "local.yml"
        inventory.write_text(yaml.safe_dump(local_inventory(server_type, address, connection)))
        playbook = Path(tmp) / f"start-{server_type}.yml"
        playbook.write_text(yaml.safe_dump(start_playbook(server_type), sort_keys=False))
        return run_playbook(
            str(playbook),  # absolute: the runner's project_root() / playbook keeps it
            inventory,
            extra_vars=start_vars(server_type, config, secrets_dir(LOCAL_INVENTORY_NAME), bundle),
            show_progress=show_progress,
            log_name=f"local-start-{server_type}",
        )


def _bundle(app_dir: str, console: Console) -> dict[str, Any]:
    from llmops_provision.bundle import BundleError, build_bundle

    try:
        result = build_bundle(
            Path(app_dir), project_root() / "dist", log=lambda msg: console.print(msg, markup=False)
        )
    except BundleError as exc:
        raise InvalidInput(
            [ValidationError(app_dir, "", p, "an app dir that bundles") for p in exc.problems]
        ) from exc
    info = result.info
    return {
        "llmops_bundle": str(info.path),
        "llmops_bundle_version": info.version,
        "llmops_bundle_sha256": info.sha256,
    }


def _print_errors(errors: list[ValidationError]) -> None:
    # plain print: rich would wrap long paths in the middle
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{len(errors)} error(s); nothing was changed.", file=sys.stderr)


def start_vars(
    server_type: str, config: Mapping[str, Any], secrets_dir: Path, bundle: Mapping[str, Any]
) -> dict[str, Any]:
    """Extra vars of the local run (as apply passes them for an inventory)."""
    return {
        "llmops_effective_configs": {LOCAL_HOST: {server_type: dict(config)}},
        "llmops_secrets_dir": str(secrets_dir),
        "llmops_inventory_name": LOCAL_INVENTORY_NAME,
        # the firewall is made from a whole inventory's hosts (apply); one machine alone would
        # close the service's port to every client, so start leaves the firewall as it is
        "common_firewall_enabled": False,
        **bundle,
    }


def start_playbook(server_type: str) -> list[dict[str, Any]]:
    """The base of the host (users, groups, credstore, node_exporter: roles/common), then the
    type's playbook."""
    playbooks = project_root() / "playbooks"
    return [
        {
            "name": "Base of this machine",
            "ansible.builtin.import_playbook": str(playbooks / "common.yml"),
        },
        {
            "name": f"Server type {server_type}",
            "ansible.builtin.import_playbook": str(playbooks / f"{server_type}.yml"),
        },
    ]


def cmd_start(args: argparse.Namespace) -> int:
    """``start SERVER_TYPE [--config-dir DIR] [--app-dir DIR]``: provision it on this machine."""
    from llmops_provision.runner import print_result

    console = Console(stderr=True, soft_wrap=True)
    server_type = args.server_type
    app_dir = args.app_dir or str(project_root() / "apps" / "ocr")
    try:
        config = local_config(server_type, args.config_dir)
        if server_type in _APP_TYPES:
            problems = REGISTRY[server_type].verify_app(app_dir)
            if problems:
                raise InvalidInput(problems)
        elif args.app_dir:
            console.print(f"note: --app-dir is not used by server type {server_type}")
    except InvalidInput as exc:
        _print_errors(exc.errors)
        return 2
    if os.geteuid() != 0:
        console.print("error: start installs system services: run it as root (sudo).")
        return 2
    if not Path("/run/systemd/system").is_dir():
        console.print(
            "error: start needs systemd as PID 1 (a Debian 12 server or a lab host: "
            "`llmops-provision lab ssh HOST`); this machine has none."
        )
        return 2
    bundle: dict[str, Any] = {}
    if server_type in _APP_TYPES:
        try:
            bundle = _bundle(app_dir, console)
        except InvalidInput as exc:
            _print_errors(exc.errors)
            return 2
    address = args.address or local_address()
    result = run_start(server_type, config, bundle, address, show_progress=not args.no_progress)
    print_result(result, console, title=f"start {server_type} on this machine ({address})")
    if result.ok:
        print(json.dumps({"server_type": server_type, "address": address, "port": config["port"]}))
    return 0 if result.ok else 1


def installed_units(units: tuple[str, ...]) -> list[str]:
    """The units of ``units`` that systemd knows on this machine."""
    proc = subprocess.run(
        ["systemctl", "show", "--property=Id,LoadState", "--", *units],
        capture_output=True,
        text=True,
        check=False,
    )
    found: list[str] = []
    for block in proc.stdout.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("LoadState") == "loaded" and fields.get("Id"):
            found.append(fields["Id"])
    return found


def cmd_stop(args: argparse.Namespace) -> int:
    """``stop SERVER_TYPE``: stop and disable the type's units on this machine."""
    console = Console(stderr=True, soft_wrap=True)
    if not Path("/run/systemd/system").is_dir():
        console.print("error: stop needs systemd as PID 1; this machine has none.")
        return 2
    units = installed_units(UNITS[args.server_type])
    if not units:
        console.print(f"{args.server_type}: no units installed here; nothing to stop")
        return 0
    proc = subprocess.run(
        ["systemctl", "disable", "--now", "--", *units], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        console.print(
            f"error: systemctl disable --now {' '.join(units)} failed: {proc.stderr.strip()}",
            markup=False,
        )
        return 1
    console.print(f"{args.server_type}: stopped and disabled {', '.join(units)}", markup=False)
    return 0


def add_start_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server_type", metavar="SERVER_TYPE", choices=tuple(REGISTRY))
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        help="dir holding <type>.json: fields that override configs/<type>.json",
    )
    parser.add_argument(
        "--app-dir",
        metavar="DIR",
        help="application dir with descriptor.json (web, api; default apps/ocr); bundled first",
    )
    parser.add_argument(
        "--address",
        help="internal address to listen on (default: this machine's primary IPv4 address)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        default=not os.isatty(2),
        help="no live progress display (default when stderr is not a terminal)",
    )
