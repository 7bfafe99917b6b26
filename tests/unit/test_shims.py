"""The seed's root scripts are thin shims over the CLI with the seed's options."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def _closed_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def test_start_server_sh_usage_and_refusal(tmp_path: Path) -> None:
    proc = _run("./start_server.sh")
    assert proc.returncode == 2 and "usage:" in proc.stderr and "SERVER_TYPE" in proc.stderr
    proc = _run("./start_server.sh", "--config-dir", str(tmp_path / "missing"), "web")
    assert proc.returncode == 2
    assert f"{tmp_path / 'missing'}: no such directory" in proc.stderr


def test_test_servers_py_runs_the_probes(tmp_path: Path) -> None:
    api_port = _closed_port("127.0.0.2")
    db = {"engine": "postgresql", "host": "127.0.0.1", "port": 5432, "name": "llmops"}
    db["user"] = "llmops"
    inv = {
        "all": {
            "vars": {"llmops_environment": "dev", "ansible_connection": "local"},
            "children": {
                "lb": {"hosts": {"lb1": {"ansible_host": "127.0.0.3"}}},
                "web": {
                    "hosts": {"web1": {"ansible_host": "127.0.0.1"}},
                    "vars": {"llmops_config": {"api_url": "https://127.0.0.3", "database": db}},
                },
                "api": {
                    "hosts": {"api1": {"ansible_host": "127.0.0.2"}},
                    "vars": {"llmops_config": {"port": api_port, "database": db}},
                },
                "db": {
                    "hosts": {"db1": {"ansible_host": "127.0.0.1"}},
                    "vars": {"llmops_config": {"engine": "postgresql"}},
                },
                "monitoring": {"hosts": {"mon1": {"ansible_host": "127.0.0.4"}}},
            },
        }
    }
    path = tmp_path / "shim.yml"
    path.write_text(yaml.safe_dump(inv))
    proc = _run("./test_servers.py", "--server-type", "api", "--inventory", str(path))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["FAIL"] * 4
    assert all(" api1 " in line for line in lines[:-1])
    assert lines[-1].endswith("4 FAILED")
