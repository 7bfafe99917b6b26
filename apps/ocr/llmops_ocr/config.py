"""Service configuration and credentials shared by the API and the web app.

The effective config is JSON rendered by the provisioner to ``/etc/llmops/<type>.json``;
``$LLMOPS_CONFIG`` overrides the path (tests, local runs). Secrets never live in the config:
they are files in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG_ENV = "LLMOPS_CONFIG"
CONFIG_DIR = Path("/etc/llmops")
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class ConfigError(Exception):
    """A config file or credential is missing or malformed; the message says what to do."""


def config_path(server_type: str) -> Path:
    """Where the config of ``server_type`` is read from: ``$LLMOPS_CONFIG`` or /etc/llmops."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else CONFIG_DIR / f"{server_type}.json"


def load_config(server_type: str, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read the service config (a JSON object) of ``server_type`` ("api", "web", ...)."""
    p = Path(path) if path is not None else config_path(server_type)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found; deploy it with the {server_type} role "
            f"or point ${CONFIG_ENV} at a JSON config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{p}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the config must be a JSON object, not {type(data).__name__}")
    declared = data.get("server_type")
    if declared is not None and declared != server_type:
        raise ConfigError(
            f"{p}: server_type is {declared!r} but this service is {server_type!r}; "
            "point the service at its own config"
        )
    return data


def credentials_dir() -> Path | None:
    """The systemd credentials directory, or None when the service runs without one."""
    env = os.environ.get(CREDENTIALS_ENV)
    return Path(env) if env else None


def read_credential(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    *,
    required: bool = True,
) -> str | None:
    """Return the credential ``name`` (trailing newline stripped) from ``directory``.

    ``directory`` defaults to ``$CREDENTIALS_DIRECTORY``. A missing credential raises
    ConfigError when ``required`` and returns None otherwise.
    """
    d = Path(directory) if directory is not None else credentials_dir()
    if d is None:
        if required:
            raise ConfigError(
                f"credential {name!r} needed but ${CREDENTIALS_ENV} is not set; "
                f"give the unit LoadCredential={name}:/etc/credstore/llmops-{name}"
            )
        return None
    p = d / name
    try:
        value = p.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"{p}: credential {name!r} not found; give the unit "
                f"LoadCredential={name}:/etc/credstore/llmops-{name}"
            ) from None
        return None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read credential {name!r}: {exc.strerror}") from None
    if not value and required:
        raise ConfigError(f"{p}: credential {name!r} is empty")
    return value or None
