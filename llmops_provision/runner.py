"""Runs playbooks through ansible-runner: a fresh private dir per run, live progress, summary.

The private dir (extra vars, artifacts) is created with mode 0700 and removed after the run; only
the plain-text output is kept, in ``.llmops/logs/`` (0600), for reading failures later.
Event handling is pure data (:class:`EventCollector`) so it is unit-tested without Ansible.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmops_provision.schemas import project_root

# Task actions whose `msg` is shown to the user (playbooks report values through debug).
_DEBUG_ACTIONS = {"debug", "ansible.builtin.debug", "ansible.legacy.debug"}


@dataclass
class HostSummary:
    """The outcome of one run on one host (counts as in Ansible's PLAY RECAP)."""

    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """One word for the host: unreachable, failed, changed or ok."""
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        if self.changed:
            return "changed"
        return "ok"


@dataclass(frozen=True)
class TaskFailure:
    """A task that failed (not ignored, not rescued) or a host that could not be reached."""

    host: str
    task: str
    message: str
    unreachable: bool = False


@dataclass(frozen=True)
class Change:
    """A task that changed (or in check mode would change) something, with its diff if any."""

    host: str
    task: str
    diff: str


@dataclass
class RunResult:
    """What a playbook run did: ansible-runner's status and rc, per-host summary, details."""

    playbook: str
    status: str
    rc: int
    hosts: list[HostSummary]
    failures: list[TaskFailure]
    changes: list[Change]
    messages: list[tuple[str, str, str]]
    seconds: float
    log_path: Path | None = None

    @property
    def ok(self) -> bool:
        """True when the run finished and no host failed or was unreachable."""
        return (
            self.status == "successful"
            and self.rc == 0
            and not any(h.failed or h.unreachable for h in self.hosts)
        )


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _message(res: Mapping[str, Any]) -> str:
    """The most useful line of a failed result: msg, else stderr, else stdout."""
    for key in ("msg", "stderr", "stdout", "reason"):
        value = res.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    if res.get("censored"):
        return str(res["censored"])
    results = res.get("results")
    if isinstance(results, list):
        for item in results:
            if isinstance(item, Mapping) and item.get("failed"):
                return _message(item)
    return "failed (no message)"


def _render_diff(diff: Any) -> str:
    """Unified text of an Ansible result's `diff` (a dict or list of dicts)."""
    items = diff if isinstance(diff, list) else [diff]
    out: list[str] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if "prepared" in item and isinstance(item["prepared"], str):
            out.append(item["prepared"].rstrip("\n"))
            continue
        before, after = item.get("before", ""), item.get("after", "")
        if isinstance(before, Mapping) or isinstance(after, Mapping):
            before = "\n".join(f"{k}: {v}" for k, v in dict(before or {}).items())
            after = "\n".join(f"{k}: {v}" for k, v in dict(after or {}).items())
        if not isinstance(before, str) or not isinstance(after, str) or before == after:
            continue
        out.extend(
            line.rstrip("\n")
            for line in difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=str(item.get("before_header", "before")),
                # after_header of a template is a temp file on the controller: name the target
                tofile=str(item.get("before_header", "after")) + " (planned)",
            )
        )
    return "\n".join(out)


@dataclass
class EventCollector:
    """Turns ansible-runner events into per-host counts, failures, changes and messages."""

    hosts: dict[str, HostSummary] = field(default_factory=dict)
    failures: list[TaskFailure] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    messages: list[tuple[str, str, str]] = field(default_factory=list)
    current_task: str = ""
    done: dict[str, int] = field(default_factory=dict)
    _first: dict[str, float] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)
    _stats_seen: bool = False

    def _host(self, name: str) -> HostSummary:
        if name not in self.hosts:
            self.hosts[name] = HostSummary(name)
        return self.hosts[name]

    def handle(self, event: Mapping[str, Any]) -> str | None:
        """Consume one event; returns the host it was about (None for play-level events)."""
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start":
            self.current_task = str(data.get("task", ""))
            return None
        if kind == "playbook_on_stats":
            self._apply_stats(data)
            return None
        host = data.get("host")
        if not isinstance(host, str) or not kind.startswith("runner_"):
            return None
        summary = self._host(host)
        stamp = _parse_time(event.get("created"))
        if stamp is not None:
            self._first.setdefault(host, stamp)
            self._last[host] = stamp
            summary.seconds = self._last[host] - self._first[host]
        if kind in ("runner_on_start", "runner_item_on_ok", "runner_item_on_failed"):
            return host
        if kind in ("runner_item_on_skipped", "runner_retry"):
            return host
        task = str(data.get("task", self.current_task))
        res = data.get("res") or {}
        if not isinstance(res, Mapping):
            res = {}
        self.done[host] = self.done.get(host, 0) + 1
        if kind == "runner_on_ok":
            summary.ok += 1
            if res.get("changed"):
                summary.changed += 1
                diffs = [res.get("diff")]
                results = res.get("results")
                if isinstance(results, list):  # a loop: each changed item has its own diff
                    diffs += [r.get("diff") for r in results if isinstance(r, Mapping)]
                text = "\n".join(t for t in (_render_diff(d) for d in diffs if d) if t)
                self.changes.append(Change(host, task, text))
            if data.get("task_action") in _DEBUG_ACTIONS and "msg" in res:
                self.messages.append((host, task, str(res["msg"])))
        elif kind == "runner_on_failed":
            if data.get("ignore_errors"):
                summary.ignored += 1
            else:
                summary.failed += 1
                self.failures.append(TaskFailure(host, task, _message(res)))
        elif kind == "runner_on_unreachable":
            summary.unreachable += 1
            self.failures.append(TaskFailure(host, task, _message(res), unreachable=True))
        elif kind == "runner_on_skipped":
            summary.skipped += 1
        return host

    def _apply_stats(self, data: Mapping[str, Any]) -> None:
        """PLAY RECAP numbers are authoritative (they know about rescued tasks)."""
        self._stats_seen = True
        keys = {
            "ok": "ok",
            "changed": "changed",
            "failures": "failed",
            "dark": "unreachable",
            "skipped": "skipped",
            "rescued": "rescued",
            "ignored": "ignored",
        }
        names: set[str] = set()
        for key in [*keys, "processed"]:
            value = data.get(key) or {}
            if isinstance(value, Mapping):
                names.update(str(h) for h in value)
        for name in sorted(names):
            summary = self._host(name)
            for key, attr in keys.items():
                value = data.get(key) or {}
                count = value.get(name, 0) if isinstance(value, Mapping) else 0
                setattr(summary, attr, int(count))
        # a failure that a rescue block handled is not a failure of the run
        self.failures = [
            f for f in self.failures if self.hosts[f.host].failed or self.hosts[f.host].unreachable
        ]

    def summary(self) -> list[HostSummary]:
        """Per-host summaries, sorted by host name."""
        return [self.hosts[name] for name in sorted(self.hosts)]


def summary_table(hosts: Sequence[HostSummary], title: str = "") -> Table:
    """The per-host table printed at the end of a run."""
    table = Table(title=title or None, title_justify="left")
    table.add_column("host")
    table.add_column("result")
    for column in ("ok", "changed", "failed", "unreachable", "skipped"):
        table.add_column(column, justify="right")
    table.add_column("time", justify="right")
    styles = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red"}
    for h in hosts:
        table.add_row(
            h.host,
            f"[{styles[h.status]}]{h.status}[/]",
            str(h.ok),
            str(h.changed),
            str(h.failed),
            str(h.unreachable),
            str(h.skipped),
            f"{h.seconds:.1f}s",
        )
    return table


def state_dir() -> Path:
    """The controller's state: ``$LLMOPS_STATE_DIR``, else ``.llmops/`` in the project (gitignored).

    Holds ``secrets/<inventory>/``, ``deployments/<inventory>.jsonl`` and ``logs/``.
    """
    env = os.environ.get("LLMOPS_STATE_DIR")
    return Path(env) if env else project_root() / ".llmops"


def logs_dir() -> Path:
    """Where the plain-text output of runs is kept (0700)."""
    path = state_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@contextmanager
def _private_dir() -> Iterator[Path]:
    """A fresh 0700 directory for ansible-runner, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="llmops-run-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class _Interrupt:
    """Turns Ctrl-C into a cancel request that ansible-runner acts on (it stops the playbook)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_playbook(
    playbook: str | Sequence[str],
    inventory: str | Path,
    *,
    extra_vars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    check: bool = False,
    diff: bool = False,
    tags: str | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    log_name: str = "",
) -> RunResult:
    """Run ``playbook`` (relative to the project root; a list runs in order) on ``inventory``."""
    import ansible_runner  # slow to import; only commands that run playbooks need it

    root = project_root()
    console = console or Console(stderr=True)
    collector = EventCollector()
    cmdline: list[str] = []
    if check:
        cmdline.append("--check")
    if diff:
        cmdline.append("--diff")
    if tags:
        cmdline += ["--tags", tags]
    bindir = str(Path(sys.executable).parent)
    envvars = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_ROLES_PATH": str(root / "roles"),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
    }
    start = time.monotonic()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[host]:<14}"),
        TextColumn("{task.completed:>3} tasks"),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not show_progress,
    )
    bars: dict[str, TaskID] = {}

    def on_event(event: dict[str, Any]) -> bool:
        host = collector.handle(event)
        if host is not None:
            summary = collector.hosts[host]
            state = f"[red]{summary.status}[/]" if summary.failed else collector.current_task
            if host not in bars:
                bars[host] = progress.add_task("", total=None, host=host, state=state)
            progress.update(bars[host], completed=collector.done.get(host, 0), state=state)
        kind = event.get("event")
        if kind in ("runner_on_failed", "runner_on_unreachable") and collector.failures:
            last = collector.failures[-1]
            data = event.get("event_data") or {}
            if data.get("host") == last.host and not data.get("ignore_errors"):
                first_line = last.message.splitlines()[0] if last.message else ""
                progress.console.print(f"[red]{last.host}[/]: {last.task}: {first_line}")
        return False  # keep no event on disk beyond what ansible-runner needs

    with _private_dir() as private, _Interrupt() as interrupt, progress:
        # Extra vars go to a 0600 file in the private dir (ansible-runner passes env/extravars
        # with -e @file), never onto the command line where `ps` would show them.
        env_dir = private / "env"
        env_dir.mkdir(mode=0o700)
        fd = os.open(env_dir / "extravars", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(dict(extra_vars or {}), fh)
        if isinstance(playbook, str):
            playbook_path = root / playbook
        else:
            # several playbooks: one that imports them (absolute paths), in the private dir
            playbook_path = private / "playbook.yml"
            playbook_path.write_text(
                "---\n"
                + "".join(
                    f"- name: {name}\n"
                    f"  ansible.builtin.import_playbook: {json.dumps(str(root / name))}\n"
                    for name in playbook
                )
            )
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(root),
            playbook=str(playbook_path),
            inventory=str(Path(inventory).resolve()),
            limit=limit,
            cmdline=" ".join(cmdline) or None,
            envvars=envvars,
            event_handler=on_event,
            cancel_callback=lambda: interrupt.requested,
            quiet=True,
        )
        log_path = _keep_log(runner, log_name or playbook_path.stem)
        status = str(runner.status)
        rc = int(runner.rc if runner.rc is not None else 1)
    if interrupt.requested:
        raise KeyboardInterrupt
    return RunResult(
        playbook=playbook if isinstance(playbook, str) else " + ".join(playbook),
        status=status,
        rc=rc,
        hosts=collector.summary(),
        failures=collector.failures,
        changes=collector.changes,
        messages=collector.messages,
        seconds=time.monotonic() - start,
        log_path=log_path,
    )


def _keep_log(runner: Any, name: str) -> Path | None:
    """Copy the run's text output out of the private dir before it is deleted."""
    try:
        text = runner.stdout.read()
    except (AttributeError, OSError, ValueError):
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = logs_dir() / f"{stamp}-{name}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def print_result(result: RunResult, console: Console, title: str = "") -> None:
    """The end of a run for people: failures with their messages, then the per-host table."""
    for failure in result.failures:
        kind = "unreachable" if failure.unreachable else "failed"
        console.print(f"[red]{failure.host}: {kind}[/]: {failure.task}")
        for line in failure.message.splitlines()[:20]:
            console.print(f"    {line}", markup=False, highlight=False)
    console.print(summary_table(result.hosts, title=title))
    verdict = "[green]ok[/]" if result.ok else f"[red]{result.status}[/] (rc {result.rc})"
    console.print(f"{result.playbook}: {verdict} in {result.seconds:.1f}s", highlight=False)
    if result.log_path is not None and not result.ok:
        console.print(f"full output: {result.log_path}", highlight=False)
