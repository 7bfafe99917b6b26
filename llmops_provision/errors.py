"""Validation errors for people: which file, which path in it, what is wrong, what is allowed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_$-]+$")


@dataclass(frozen=True)
class ValidationError:
    """One problem in one input. ``path`` is a dotted JSON path (``groups.api.vars.port``);
    ``line`` (1-based, 0 when unknown) is where that path is written in a YAML file."""

    file: str
    path: str
    problem: str
    allowed: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        text = f"{where}: {self.problem}"
        if self.allowed:
            text += f" (allowed: {self.allowed})"
        if self.line:
            text += f" [line {self.line}]"
        return text

    def to_dict(self) -> dict[str, str | int | None]:
        return {
            "file": self.file,
            "path": self.path,
            "problem": self.problem,
            "allowed": self.allowed,
            "line": self.line or None,
        }


class InvalidInput(Exception):
    """Raised by loaders when an input is invalid; carries every error found, not just the first."""

    def __init__(self, errors: Sequence[ValidationError]) -> None:
        self.errors: list[ValidationError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


_PART = re.compile(r'\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|\.?([A-Za-z0-9_$-]+)')


def split_path(text: str) -> tuple[str | int, ...]:
    """Inverse of json_path: ``models[0].sha256`` -> ``("models", 0, "sha256")``."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            break
        index, quoted, plain = m.groups()
        if index is not None:
            parts.append(int(index))
        elif quoted is not None:
            parts.append(str(json.loads(quoted)))
        else:
            parts.append(plain)
        pos = m.end()
    return tuple(parts)


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
