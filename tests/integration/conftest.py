"""Fixtures for tests on lab hosts (systemd-nspawn; see docs/CONTRACTS.md "Lab").

Use ``lab_factory(name, hosts)`` in a test or in your own module/session fixture: it starts the lab
(fresh: whatever an earlier run left is removed) and takes it down when the session ends. Give
each lab a name of its own (e.g. ``it-<area>``) so labs of different test modules do not collide.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from llmops_provision import lab as labmod

LabFactory = Callable[..., labmod.Lab]


@pytest.fixture(scope="session")
def require_root() -> None:
    """Skip (with the reason) when not root: the lab needs namespaces, mounts and iptables."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (systemd-nspawn, netns, mounts, iptables)")


@pytest.fixture(scope="session")
def lab_factory(require_root: None) -> Iterator[LabFactory]:
    """``lab_factory(name, hosts=[...] | inventory=path, groups=None, fresh=True) -> Lab``.

    With ``inventory`` (e.g. ``inventory/lab.yml``) the lab copies its topology, groups and vars
    into its own subnet; ``lab.inventory_path`` is that copy. Every lab it started is taken down
    at the end of the test session (also when tests failed)."""
    started: list[str] = []

    def make(
        name: str,
        hosts: Sequence[str] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        fresh: bool = True,
        inventory: str | os.PathLike[str] | None = None,
    ) -> labmod.Lab:
        if name not in started:
            started.append(name)
        return labmod.up(
            name,
            hosts=hosts,
            inventory=Path(inventory) if inventory is not None else None,
            groups=groups,
            fresh=fresh,
            progress=lambda msg: print(msg, file=sys.stderr),
        )

    yield make
    for name in started:
        labmod.down(name)
