"""Run the real ``llmops-provision`` CLI (this checkout, this Python) from integration tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli(
    env: Mapping[str, str] | None, *args: str, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``python -m llmops_provision ARGS`` in the repo; output captured, exit code not checked."""
    return subprocess.run(
        [sys.executable, "-m", "llmops_provision", *args],
        cwd=REPO,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
