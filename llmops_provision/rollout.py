"""``rollout INVENTORY --server-type api|web``: a rolling update, one host at a time.

Validates like ``apply`` (nothing is touched on an error: exit 2), then runs
``playbooks/rolling_update.yml``: per host drain it from every lb host, install and switch to the
release with the type's role (which checks the host), put it back; a failed host is returned to
its previous release and the rollout stops. The playbook reports each step in a debug message
``llmops_rollout={json}``; this module turns those into the per-host table and the deployment
record.
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from llmops_provision import deploy
from llmops_provision.runner import RunResult, print_result, run_playbook

PLAYBOOK = "playbooks/rolling_update.yml"
SERVER_TYPES = ("api", "web")
MESSAGE_PREFIX = "llmops_rollout="


@dataclass
class HostRollout:
    """What the rollout did on one host, from its ``llmops_rollout`` messages."""

    host: str
    before: str = ""
    target: str = ""
    sha256: str = ""
    steps: list[str] = field(default_factory=list)
    times: dict[str, str] = field(default_factory=dict)
    error: str = ""
    restored_to: str = ""

    @property
    def outcome(self) -> str:
        """updated | current | rolled back | failed | not touched."""
        if "rolled_back" in self.steps:
            return "rolled back"
        if "failed" in self.steps or "rollback_failed" in self.steps:
            return "failed"
        if "undrained" in self.steps:
            return "updated"
        if "current" in self.steps:
            return "current"
        if "start" in self.steps:
            return "failed"  # started but never finished: the run stopped on this host
        return "not touched"

    @property
    def now_running(self) -> str:
        """The release the host runs after the rollout (as far as the rollout knows)."""
        outcome = self.outcome
        if outcome in ("updated", "current"):
            return self.target
        if outcome == "rolled back":
            return self.restored_to
        if outcome == "not touched":
            return ""
        return "?"


def parse_messages(
    messages: Iterable[tuple[str, str, str]], hosts: Sequence[str]
) -> dict[str, HostRollout]:
    """Per host (in ``hosts`` order, then any other), the steps the playbook reported."""
    out: dict[str, HostRollout] = {h: HostRollout(h) for h in hosts}
    for host, _task, msg in messages:
        if not msg.startswith(MESSAGE_PREFIX):
            continue
        try:
            data = json.loads(msg[len(MESSAGE_PREFIX) :])
        except json.JSONDecodeError:
            continue
        name = str(data.get("host", host))
        entry = out.setdefault(name, HostRollout(name))
        step = str(data.get("step", ""))
        entry.steps.append(step)
        entry.times[step] = str(data.get("time", ""))
        if step in ("start", "current"):
            entry.before = str(data.get("from", ""))
            entry.target = str(data.get("to", ""))
            entry.sha256 = str(data.get("sha256", ""))
        elif step == "failed":
            entry.error = str(data.get("error", ""))
        elif step == "rolled_back":
            entry.restored_to = str(data.get("to", ""))
        elif step == "rollback_failed":
            entry.error += f"; rollback to {data.get('to', '?')} failed: {data.get('error', '')}"
    return out


def rollout_table(rollouts: Mapping[str, HostRollout], title: str) -> Table:
    """The per-host table printed at the end: before, after, what happened."""
    table = Table(title=title, title_justify="left")
    for column in ("host", "result", "before", "now", "detail"):
        table.add_column(column)
    styles = {
        "updated": "green",
        "current": "green",
        "rolled back": "yellow",
        "failed": "red",
        "not touched": "dim",
    }
    for r in rollouts.values():
        outcome = r.outcome
        detail = {
            "updated": f"drained, switched, checked, back in rotation ({_span(r)})",
            "current": "already on this release: checked, nothing changed",
            "rolled back": f"{r.error}; back on its previous release and in rotation",
            "failed": r.error or "stopped on this host",
            "not touched": "the rollout stopped before this host",
        }[outcome]
        table.add_row(
            r.host,
            f"[{styles[outcome]}]{outcome}[/]",
            r.before or "-",
            r.now_running or "-",
            detail,
        )
    return table


def _span(r: HostRollout) -> str:
    """When the host was out of rotation: ``HH:MM:SS-HH:MM:SS UTC, N s``."""
    start, end = r.times.get("drained", ""), r.times.get("undrained", "")
    try:
        t0, t1 = datetime.fromisoformat(start), datetime.fromisoformat(end)
    except ValueError:
        return "out of rotation"
    seconds = (t1 - t0).total_seconds()
    return f"out of rotation {t0:%H:%M:%S}-{t1:%H:%M:%S} UTC, {seconds:.0f} s"


def _hosts_in_scope(target: deploy.Target, server_type: str, limit: str | None) -> list[str]:
    """The hosts the rollout play targets, matched by Ansible itself: the play's pattern is
    ``server_type:&limit`` (rolling_update.yml), the same as apply's ``--limit``."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    pattern = deploy._limit(server_type, limit) or server_type
    inventory = InventoryManager(loader=DataLoader(), sources=[str(target.path)])
    return [h.name for h in inventory.get_hosts(pattern)]


def cmd_rollout(args: argparse.Namespace) -> int:
    """``rollout INVENTORY --server-type api|web [--bundle] [--limit]``."""
    console = Console(stderr=True)
    out = Console()
    server_type = str(args.server_type)

    def has_hosts(target: deploy.Target) -> str | None:
        if target.inventory.hosts_of(server_type):
            return None
        return (
            f"{target.path}: groups.{server_type}: no hosts to roll out to (allowed: an "
            f"inventory with {server_type} hosts)"
        )

    prepared = deploy.prepare(args, console, has_hosts)
    if prepared is None:
        return 2
    target, bundle_vars = prepared
    extra: dict[str, Any] = {
        **deploy._base_vars(target),
        **bundle_vars,
        "llmops_rollout_type": server_type,
    }
    if args.limit:
        extra["llmops_rollout_limit"] = args.limit
    if args.ready_timeout:
        extra["llmops_rollout_ready_timeout"] = args.ready_timeout
    started = time.time()
    result = run_playbook(
        PLAYBOOK,
        target.path,
        extra_vars=extra,
        show_progress=not args.no_progress,
        log_name=f"{target.name}-rollout",
    )
    print_result(result, console, title=f"rollout {target.name} ({server_type})")
    scope = _hosts_in_scope(target, server_type, args.limit)
    rollouts = parse_messages(result.messages, scope)
    version = next((r.target for r in rollouts.values() if r.target), "")
    title = f"rollout of {version or 'the bundle'} to {server_type} hosts of {target.name}"
    out.print(rollout_table(rollouts, title))
    ok = result.ok and all(r.outcome in ("updated", "current") for r in rollouts.values())
    record = rollout_record(target, args, bundle_vars, result, rollouts, started, ok)
    healthy = [h for h, r in rollouts.items() if r.outcome in ("updated", "current")]
    recorded = deploy.record_deployment(target, record, prefer=healthy)
    deploy._err(console, recorded.describe())
    return 0 if ok else 1


def rollout_record(
    target: deploy.Target,
    args: argparse.Namespace,
    bundle_vars: Mapping[str, Any],
    result: RunResult,
    rollouts: Mapping[str, HostRollout],
    started: float,
    ok: bool,
) -> dict[str, Any]:
    """The deployment record of a rollout (the same keys as apply's, kind "rollout")."""
    version = bundle_vars.get("llmops_bundle_version") or next(
        (r.target for r in rollouts.values() if r.target), ""
    )
    sha = bundle_vars.get("llmops_bundle_sha256") or next(
        (r.sha256 for r in rollouts.values() if r.sha256), ""
    )
    return {
        "kind": "rollout",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "user": getpass.getuser(),
        "inventory": target.name,
        "limit": deploy._limit(args.server_type, args.limit),
        "bundle": bundle_vars.get("llmops_bundle", ""),
        "version": version,
        "sha256": sha,
        "hosts": {h: r.outcome for h, r in rollouts.items()},
        "result": "ok" if ok else "failed",
        "seconds": round(result.seconds, 1),
    }


def add_rollout_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``rollout`` (cli.py's _add_rollout registers them)."""
    deploy.add_common_options(parser)
    parser.add_argument(
        "--server-type",
        required=True,
        choices=SERVER_TYPES,
        help="which hosts to update, one at a time",
    )
    parser.add_argument(
        "--bundle",
        metavar="PATH|URL",
        help="application bundle to roll out (default: build or reuse one of apps/ocr)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=int,
        metavar="SECONDS",
        help="how long a host may take to get ready on the new release (default: the role's, "
        "api 300, web 120; a host rolled back always gets the role's default)",
    )
