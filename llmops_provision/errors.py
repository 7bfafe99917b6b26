"""Validation errors for people: which file, which path in it, what is wrong, what is allowed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_$-]+$")


@dataclass(frozen=True)
class ValidationError:
    """One problem in one input. ``path`` is a dotted JSON path (``groups.api.vars.port``)."""

    file: str
    path: str
    problem: str
    allowed: str = ""

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        text = f"{where}: {self.problem}"
        if self.allowed:
            text += f" (allowed: {self.allowed})"
        return text

    def to_dict(self) -> dict[str, str]:
        return {
            "file": self.file,
            "path": self.path,
            "problem": self.problem,
            "allowed": self.allowed,
        }


class InvalidInput(Exception):
    """Raised by loaders when an input is invalid; carries every error found, not just the first."""

    def __init__(self, errors: Sequence[ValidationError]) -> None:
        self.errors: list[ValidationError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def json_path(parts: Iterable[str | int]) -> str:
    """Dotted path from path parts: ``("models", 0, "sha256")`` -> ``models[0].sha256``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.match(part):
            out += f"[{json.dumps(part)}]"
        elif out:
            out += f".{part}"
        else:
            out = part
    return out
