"""`llmops-provision logs`: read the journals the monitoring host collects.

Every host's systemd-journal-upload sends its journal to systemd-journal-remote on the monitoring
host (docs/CONTRACTS.md "Journal collection"), which keeps them under REMOTE_DIR. This module
runs journalctl there over SSH, with the inventory's connection settings.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

from llmops_provision.checks import HostAccess, host_access
from llmops_provision.errors import InvalidInput
from llmops_provision.inventory import Inventory, load_inventory

REMOTE_DIR = "/var/log/journal/remote"


class LogsError(Exception):
    """A request `logs` cannot serve; the message says what to change."""


@dataclass(frozen=True)
class LogsQuery:
    host: str | None = None
    unit: str | None = None
    since: str | None = None
    lines: int = 200
    follow: bool = False


def monitoring_host(inv: Inventory) -> str:
    """The host that collects journals: the first host of the `monitoring` group."""
    hosts = inv.hosts_of("monitoring") if "monitoring" in inv.groups else []
    if not hosts:
        raise LogsError(
            f"{inv.path}: the inventory has no host in group 'monitoring', so no host collects "
            "journals; add one and apply it"
        )
    return hosts[0]


def journalctl_argv(inv: Inventory, collector: str, query: LogsQuery) -> list[str]:
    """The journalctl command to run on the collector for this query."""
    if query.host is not None and query.host not in inv.hosts:
        known = ", ".join(sorted(inv.hosts))
        raise LogsError(f"{inv.path}: no host {query.host!r} in the inventory (hosts: {known})")
    if query.lines < 1:
        raise LogsError(f"--lines must be at least 1, not {query.lines}")
    argv = ["journalctl", "--no-pager", "--output=short-iso", f"--lines={query.lines}"]
    if query.host != collector:
        # Journals sent by the other hosts; each entry keeps its sender's _HOSTNAME.
        argv.append(f"--directory={REMOTE_DIR}")
        if query.host is not None:
            argv.append(f"_HOSTNAME={query.host}")
    if query.unit:
        argv.append(f"--unit={query.unit}")
    if query.since:
        argv.append(f"--since={query.since}")
    if query.follow:
        argv.append("--follow")
    return argv


def collector_access(inv: Inventory, host: str) -> HostAccess:
    """SSH settings of the collector; also honours Ansible's `ansible_private_key_file` alias."""
    access = host_access(inv, host)
    if not access.ssh_key:
        merged: dict[str, Any] = dict(inv.all_vars)
        for group in sorted(inv.hosts[host].groups):
            merged.update(inv.groups[group].vars if group in inv.groups else {})
        merged.update(inv.hosts[host].vars)
        key = merged.get("ansible_private_key_file")
        if isinstance(key, str) and "{{" not in key:
            access = replace(access, ssh_key=key)
    return access


def remote_argv(access: HostAccess, argv: list[str]) -> list[str]:
    """Run ``argv`` on the host: locally for a local connection, else through ssh."""
    if access.local:
        return argv
    return [*access.ssh_argv(), shlex.join(argv)]


def cli_logs(args: argparse.Namespace) -> int:
    """Entry point of `llmops-provision logs`."""
    try:
        inv = load_inventory(args.inventory)
        collector = monitoring_host(inv)
        query = LogsQuery(args.host, args.unit, args.since, args.lines, args.follow)
        argv = remote_argv(collector_access(inv, collector), journalctl_argv(inv, collector, query))
    except InvalidInput as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 2
    except LogsError as exc:
        print(f"llmops-provision logs: {exc}", file=sys.stderr)
        return 2
    proc = subprocess.run(argv, check=False)
    if proc.returncode not in (0, 130):
        print(
            f"llmops-provision logs: journalctl on {collector} exited {proc.returncode}; "
            f"check that the monitoring role was applied there (`llmops-provision apply "
            f"{args.inventory} --server-type monitoring`) and that ssh reaches it",
            file=sys.stderr,
        )
    return proc.returncode
