#!/usr/bin/env python3
"""The seed's test script: health and functional probes of the deployed servers.

    ./test_servers.py [--server-type T] [--inventory PATH] [--format text|json]

A thin shim over ``llmops-provision test`` (default inventory: inventory/lab.yml); it runs the
CLI with the repo's .venv when there is one. Exit 0 when every check passed, 1 otherwise.
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-type", choices=("web", "api", "lb", "db", "monitoring"))
    parser.add_argument("--inventory", default=str(HERE / "inventory" / "lab.yml"))
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args, rest = parser.parse_known_args()
    argv = ["-m", "llmops_provision", "test", args.inventory, "--format", args.format]
    if args.server_type:
        argv += ["--server-type", args.server_type]
    venv_python = HERE / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
    )
    os.execv(python, [python, *argv, *rest])


if __name__ == "__main__":
    main()
