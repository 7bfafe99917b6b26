"""runner.py: ansible-runner events -> per-host summary, failures, diffs, messages."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from llmops_provision.runner import EventCollector, RunResult, summary_table


def ev(kind: str, host: str | None = None, at: float = 0.0, **data: Any) -> dict[str, Any]:
    """An event shaped like ansible-runner's (event, created, event_data)."""
    event_data = dict(data)
    if host is not None:
        event_data["host"] = host
    seconds = int(at)
    return {
        "event": kind,
        "created": f"2026-12-04T19:00:{seconds:02d}.{int((at - seconds) * 1e6):06d}+00:00",
        "event_data": event_data,
    }


def stats(**per_key: dict[str, int]) -> dict[str, Any]:
    keys = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed")
    return ev("playbook_on_stats", **{k: per_key.get(k, {}) for k in keys})


def run(events: list[dict[str, Any]]) -> EventCollector:
    collector = EventCollector()
    for event in events:
        collector.handle(event)
    return collector


def test_counts_changes_and_time_per_host() -> None:
    c = run(
        [
            ev("playbook_on_task_start", task="Install base packages"),
            ev("runner_on_start", "db1", at=1.0, task="Install base packages"),
            ev("runner_on_ok", "db1", at=3.5, task="Install base packages", res={"changed": True}),
            ev("runner_on_ok", "web1", at=2.0, task="Install base packages", res={}),
            ev("runner_on_skipped", "web1", at=4.0, task="Configure time"),
            ev("runner_on_ok", "db1", at=9.0, task="Configure time", res={"changed": False}),
        ]
    )
    db1, web1 = c.summary()[0], c.summary()[1]
    assert (db1.host, db1.ok, db1.changed, db1.status) == ("db1", 2, 1, "changed")
    assert db1.seconds == 8.0
    assert (web1.ok, web1.skipped, web1.status) == (1, 1, "ok")
    assert [ch.task for ch in c.changes] == ["Install base packages"]
    assert c.done == {"db1": 2, "web1": 2}


def test_failure_is_reported_with_its_message() -> None:
    c = run(
        [
            ev(
                "runner_on_failed",
                "db1",
                task="Start PostgreSQL",
                res={"msg": "Unable to start service postgresql@15-main", "stderr": "x"},
            ),
            stats(ok={"db1": 3}, failures={"db1": 1}),
        ]
    )
    [failure] = c.failures
    assert (failure.host, failure.task) == ("db1", "Start PostgreSQL")
    assert failure.message == "Unable to start service postgresql@15-main"
    assert c.summary()[0].status == "failed"


def test_rescued_failure_is_not_a_failure_of_the_run() -> None:
    c = run(
        [
            ev("runner_on_failed", "db1", task="Restore", res={"msg": "bad name"}),
            ev("runner_on_ok", "db1", task="Remember", res={}),
            stats(ok={"db1": 2}, rescued={"db1": 1}),
        ]
    )
    assert c.failures == []
    assert c.summary()[0].failed == 0
    assert c.summary()[0].rescued == 1


def test_ignored_errors_are_counted_but_not_failures() -> None:
    c = run([ev("runner_on_failed", "h", task="Probe", ignore_errors=True, res={"msg": "no"})])
    assert c.failures == []
    assert c.summary()[0].ignored == 1
    assert c.summary()[0].status == "ok"


def test_unreachable_host() -> None:
    c = run(
        [
            ev(
                "runner_on_unreachable",
                "api2",
                task="Gathering Facts",
                res={"msg": "Failed to connect to the host via ssh: No route to host"},
            ),
            stats(dark={"api2": 1}),
        ]
    )
    [failure] = c.failures
    assert failure.unreachable and "No route to host" in failure.message
    assert c.summary()[0].status == "unreachable"


def test_stats_are_authoritative_and_add_hosts_without_events() -> None:
    c = run(
        [
            ev("runner_on_ok", "a", res={"changed": True}),
            stats(ok={"a": 10, "b": 4}, changed={"a": 3}, skipped={"b": 2}),
        ]
    )
    a, b = c.summary()
    assert (a.ok, a.changed) == (10, 3)
    assert (b.host, b.ok, b.skipped, b.changed) == ("b", 4, 2, 0)


def test_check_mode_diff_of_a_template_and_of_loop_items() -> None:
    template = {
        "before": "port = 5432\nmax_connections = 50\n",
        "after": "port = 5432\nmax_connections = 100\n",
        "before_header": "/etc/postgresql/15/main/conf.d/50-llmops.conf",
        "after_header": "/root/.ansible/tmp/xyz/postgresql-llmops.conf.j2",
    }
    loop = {
        "changed": True,
        "results": [
            {"changed": True, "diff": [{"before": "a\n", "after": "b\n", "before_header": "/f1"}]},
            {"changed": False, "diff": [{"before": "same\n", "after": "same\n"}]},
        ],
    }
    c = run(
        [
            ev("runner_on_ok", "db", task="Configure", res={"changed": True, "diff": [template]}),
            ev("runner_on_ok", "db", task="Install commands", res=loop),
        ]
    )
    first, second = c.changes
    assert "-max_connections = 50" in first.diff and "+max_connections = 100" in first.diff
    assert "/etc/postgresql/15/main/conf.d/50-llmops.conf (planned)" in first.diff
    assert "tmp/xyz" not in first.diff
    assert "-a" in second.diff.splitlines() and "+b" in second.diff.splitlines()


def test_debug_messages_are_collected() -> None:
    c = run(
        [
            ev(
                "runner_on_ok",
                "db1",
                task="Report the new backup",
                task_action="ansible.builtin.debug",
                res={"msg": "llmops_backup=llmops-20261204T193000Z.dump"},
            ),
            ev("runner_on_ok", "db1", task="Other", task_action="command", res={"msg": "x"}),
        ]
    )
    assert c.messages == [
        ("db1", "Report the new backup", "llmops_backup=llmops-20261204T193000Z.dump")
    ]


def test_run_result_ok_only_when_no_host_failed() -> None:
    c = run([stats(ok={"a": 1, "b": 1}, failures={"b": 1})])
    result = RunResult("site.yml", "successful", 0, c.summary(), [], [], [], 1.0)
    assert not result.ok
    c = run([stats(ok={"a": 1})])
    assert RunResult("site.yml", "successful", 0, c.summary(), [], [], [], 1.0).ok
    assert not RunResult("site.yml", "failed", 2, c.summary(), [], [], [], 1.0).ok


def test_summary_table_shows_every_host_and_its_counts() -> None:
    c = run(
        [
            ev("runner_on_ok", "lab-db", at=1.0, res={}),
            ev("runner_on_ok", "lab-db", at=13.4, res={}),
            stats(ok={"lab-db": 12, "lab-web": 3}, changed={"lab-db": 2}, dark={"lab-web": 1}),
        ]
    )
    console = Console(record=True, width=120)
    console.print(summary_table(c.summary()))
    text = console.export_text()
    db_line = next(line for line in text.splitlines() if "lab-db" in line)
    web_line = next(line for line in text.splitlines() if "lab-web" in line)
    cells = [cell.strip() for cell in db_line.split("│")[1:-1]]
    assert cells == ["lab-db", "changed", "12", "2", "0", "0", "0", "12.4s"]
    assert "unreachable" in web_line
