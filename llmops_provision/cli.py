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
    from llmops_provision import lab

    p = sub.add_parser(
        "lab",
        help="local lab of Debian 12 hosts in systemd-nspawn (root)",
        description="Real Debian 12 hosts with systemd on this machine, for tests and trials.",
    )
    lsub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    lsub.required = True
    name_help = "lab name (default: default = inventory/lab.yml, 10.213.0.0/24)"

    up = lsub.add_parser("up", help="start a lab (builds the base image once)")
    up.add_argument("--name", default=None, help=name_help)
    src = up.add_mutually_exclusive_group()
    src.add_argument("--inventory", help="take hosts and addresses from this inventory")
    src.add_argument("--hosts", help="comma-separated host names, e.g. web1,api1")
    up.add_argument("--fresh", action="store_true", help="recreate the lab even if it is running")
    up.add_argument("--json", action="store_true", help="print the lab as JSON")
    up.set_defaults(func=lab.cli_up)

    down = lsub.add_parser("down", help="stop a lab and remove everything it made")
    down.add_argument("--name", default=lab.DEFAULT_NAME, help=name_help)
    down.add_argument("--all", action="store_true", help="every lab on this machine")
    down.set_defaults(func=lab.cli_down)

    st = lsub.add_parser("status", help="hosts, addresses and states (all labs by default)")
    st.add_argument("--name", default=None, help="only this lab")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=lab.cli_status)

    ssh = lsub.add_parser("ssh", help="ssh to a lab host as root (a shell, or run CMD)")
    ssh.add_argument("--name", default=lab.DEFAULT_NAME, help=name_help)
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    ssh.set_defaults(func=lab.cli_ssh)

    rb = lsub.add_parser("reboot", help="reboot a host's systemd and wait until it runs again")
    rb.add_argument("--name", default=lab.DEFAULT_NAME, help=name_help)
    rb.add_argument("host")
    rb.set_defaults(func=lab.cli_reboot)


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


def _add_apply(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`apply INVENTORY` -- owned by deploy.py (issue 6)."""
    from llmops_provision import deploy

    p = sub.add_parser(
        "apply",
        help="validate, then converge the hosts of an inventory (site.yml)",
        description="Validate the inventory (nothing is touched on an error: exit 2), generate "
        "missing credentials in .llmops/secrets/<inventory>/, build or reuse the bundle, run "
        "site.yml with live progress and print a per-host summary. Exit 1 if any host failed.",
    )
    deploy.add_common_options(p)
    p.add_argument("--server-type", choices=("web", "api", "lb", "db", "monitoring"))
    p.add_argument("--bundle", metavar="PATH|URL", help="application bundle to deploy")
    p.set_defaults(func=deploy.cmd_apply)


def _add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`plan INVENTORY` -- owned by deploy.py (issue 6)."""
    from llmops_provision import deploy

    p = sub.add_parser(
        "plan",
        help="what apply would change (check mode with diff; changes nothing)",
        description="Run site.yml in check mode with diffs and list each change per host.",
    )
    deploy.add_common_options(p)
    p.add_argument("--server-type", choices=("web", "api", "lb", "db", "monitoring"))
    p.set_defaults(func=deploy.cmd_plan)


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`status INVENTORY` -- owned by deploy.py (issue 6)."""
    from llmops_provision import deploy

    p = sub.add_parser(
        "status",
        help="per host and service: systemd state, health probes, release, last deployment",
    )
    deploy.add_common_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=deploy.cmd_status)


def _add_backup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`backup INVENTORY` -- owned by deploy.py (issue 6)."""
    from llmops_provision import deploy

    p = sub.add_parser("backup", help="back up the database now; prints the backup's name")
    deploy.add_common_options(p, limit=False)
    p.set_defaults(func=deploy.cmd_backup)


def _add_restore(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`restore INVENTORY --from NAME` -- owned by deploy.py (issue 6)."""
    from llmops_provision import deploy

    p = sub.add_parser(
        "restore",
        help="restore the database from a named backup (web and api stopped around it)",
    )
    deploy.add_common_options(p, limit=False)
    p.add_argument(
        "--from",
        dest="from_",
        required=True,
        metavar="NAME",
        help="backup name, e.g. llmops-20261204T023000Z.dump (as printed by backup)",
    )
    p.set_defaults(func=deploy.cmd_restore)


def _add_test(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`test INVENTORY` -- owned by checks.py (issue 6)."""
    from llmops_provision import checks

    p = sub.add_parser(
        "test",
        help="health and functional probes of every service (the seed's test_servers)",
        description="Probe each host's services from this machine: health endpoints and ports "
        "(server_types), an OCR request with a known image, a web login round trip, SELECT 1 "
        "on PostgreSQL, HTTPS through the lb with the inventory's CA, every Prometheus target "
        "up. One line per check; exit 1 if any failed, 2 if the inventory is invalid.",
    )
    checks.add_test_options(p)
    p.set_defaults(func=checks.cmd_test)


def _add_start(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`start SERVER_TYPE` -- owned by local.py (issue 6)."""
    from llmops_provision import local

    p = sub.add_parser(
        "start",
        help="provision one server type on this machine (the seed's start_server.sh; root)",
        description="Apply playbooks/<type>.yml to this machine (connection local): the type's "
        "config template with <config-dir>/<type>.json over it; web and api from a bundle of "
        "--app-dir. Needs root and systemd as PID 1 (e.g. inside a lab host).",
    )
    local.add_start_options(p)
    p.set_defaults(func=local.cmd_start)


def _add_stop(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`stop SERVER_TYPE` -- owned by local.py (issue 6)."""
    from llmops_provision import local

    p = sub.add_parser("stop", help="stop and disable one server type's units on this machine")
    p.add_argument("server_type", metavar="SERVER_TYPE", choices=tuple(local.UNITS))
    p.set_defaults(func=local.cmd_stop)


def _add_logs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`logs INVENTORY [--host H] [--unit U] [--since T]` -- owned by logs.py (lb/monitoring)."""
    from llmops_provision.logs import cli_logs

    p = sub.add_parser(
        "logs",
        help="read every host's journal, as collected on the monitoring host",
        description=(
            "Runs journalctl on the inventory's monitoring host (over ssh) on the journals "
            "systemd-journal-remote received from every host."
        ),
    )
    p.add_argument("inventory", metavar="INVENTORY", help="inventory file, e.g. inventory/lab.yml")
    p.add_argument("--host", help="only this inventory host's entries")
    p.add_argument("--unit", help="only this systemd unit, e.g. llmops-api.service")
    p.add_argument("--since", help="journalctl time, e.g. '10 min ago' or '2026-01-01 12:00'")
    p.add_argument("--lines", type=int, default=200, help="newest N entries (default 200)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    p.set_defaults(func=cli_logs)


def _add_rollout(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`rollout INVENTORY --server-type api|web` -- owned by rollout.py (issue 6)."""
    from llmops_provision import rollout

    p = sub.add_parser(
        "rollout",
        help="rolling update of the api or web hosts to a release, one host at a time",
        description="Validate (nothing is touched on an error: exit 2), then per host: drain it "
        "from every lb host, install and switch to the release, check it (api: /readyz and an "
        "OCR request; web: /healthz and a login), put it back. A host that fails its checks goes "
        "back to its previous release and the rollout stops there (exit 1). Hosts already on "
        "the release are only checked. Records the deployment.",
    )
    rollout.add_rollout_options(p)
    p.set_defaults(func=rollout.cmd_rollout)


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
    _add_apply(sub)
    _add_plan(sub)
    _add_status(sub)
    _add_backup(sub)
    _add_restore(sub)
    _add_test(sub)
    _add_start(sub)
    _add_stop(sub)
    _add_logs(sub)
    _add_rollout(sub)
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
