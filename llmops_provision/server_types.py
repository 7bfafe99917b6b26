"""The five server types of the platform (the seed's ServerType hierarchy) and their registry.

Each type knows its name, Ansible role, inventory group, schema, default port and config template;
it validates its config, verifies an application directory and lists the health probes that prove
a deployed instance is up (``checks.py`` runs them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from llmops_provision.errors import InvalidInput, ValidationError
from llmops_provision.schemas import project_root, schema_defaults, validate_against

NODE_EXPORTER_PORT = 9100


@dataclass(frozen=True)
class Probe:
    """One health probe. ``kind``: http (GET ``scheme://address:port path``), tcp (connect) or file.

    ``expect`` lists acceptable HTTP status codes; ``path`` is a URL path (http) or a file (file).
    """

    name: str
    kind: str
    port: int = 0
    path: str = ""
    scheme: str = "http"
    expect: tuple[int, ...] = (200,)


class ServerType:
    """Base class: what every server type shares. Subclasses set the class attributes."""

    name: ClassVar[str]
    role: ClassVar[str]
    default_port: ClassVar[int]
    description: ClassVar[str]

    @property
    def group(self) -> str:
        """The inventory group of this type: the group names are the server types."""
        return self.name

    @property
    def schema_name(self) -> str:
        return self.name

    @property
    def schema_path(self) -> Path:
        return project_root() / "schemas" / f"{self.name}.schema.json"

    @property
    def template_path(self) -> Path:
        return project_root() / "configs" / f"{self.name}.json"

    def template(self) -> dict[str, Any]:
        """The config template ``configs/<type>.json`` (equal to the schema's defaults)."""
        data: dict[str, Any] = json.loads(self.template_path.read_text(encoding="utf-8"))
        return data

    def defaults(self) -> dict[str, Any]:
        """The defaults the schema declares (the one source of truth)."""
        return schema_defaults(self.name)

    def validate_config(
        self, config: Any, file: str, prefix: tuple[str | int, ...] = ()
    ) -> list[ValidationError]:
        """Schema errors of ``config`` for this type, named by ``file`` and path."""
        return validate_against(self.name, config, file, prefix)

    def load_config(self, path: str | Path) -> dict[str, Any]:
        """Read and validate a config file of this type; raise InvalidInput when it is wrong."""
        from llmops_provision.config import load_json

        data = load_json(Path(path), str(path))
        errors = self.validate_config(data, str(path))
        if errors:
            raise InvalidInput(errors)
        assert isinstance(data, dict)
        return data

    def ports(self, config: dict[str, Any]) -> dict[int, str]:
        """TCP ports the type listens on for ``config`` -> the config key that sets each."""
        return {int(config["port"]): "port"}

    def verify_app(self, app_dir: str | Path) -> list[ValidationError]:
        """Problems of an application directory for this type (descriptor, files, checksums)."""
        from llmops_provision.config import verify_app_dir

        return verify_app_dir(app_dir, server_type=self.name)

    def health_probes(self, config: dict[str, Any]) -> list[Probe]:
        """Probes that prove a running instance with ``config`` is up."""
        return [Probe(f"{self.name} port open", "tcp", port=int(config["port"]))]


class WebAppServer(ServerType):
    name = "web"
    role = "webapp"
    default_port = 8080
    description = "Flask OCR web UI under gunicorn"

    def health_probes(self, config: dict[str, Any]) -> list[Probe]:
        port = int(config["port"])
        return [
            Probe("web healthz", "http", port=port, path="/healthz"),
            Probe("web metrics", "http", port=port, path="/metrics"),
            Probe("web login page", "http", port=port, path="/login"),
        ]


class InferenceAPIServer(ServerType):
    name = "api"
    role = "inference_api"
    default_port = 8000
    description = "FastAPI OCR inference service under gunicorn + uvicorn workers"

    def health_probes(self, config: dict[str, Any]) -> list[Probe]:
        port = int(config["port"])
        return [
            Probe("api healthz", "http", port=port, path="/healthz"),
            Probe("api readyz (model loaded)", "http", port=port, path="/readyz"),
            Probe("api metrics", "http", port=port, path="/metrics"),
        ]


class LoadBalancerServer(ServerType):
    name = "lb"
    role = "load_balancer"
    default_port = 80
    description = "nginx: TLS termination and upstreams to web and api"
    NGINX_EXPORTER_PORT: ClassVar[int] = 9113
    STUB_STATUS_PORT: ClassVar[int] = 8089

    def ports(self, config: dict[str, Any]) -> dict[int, str]:
        return {
            int(config["port"]): "port",
            int(config["tls"]["port"]): "tls.port",
            self.NGINX_EXPORTER_PORT: "prometheus-nginx-exporter (fixed)",
            self.STUB_STATUS_PORT: "nginx stub_status (fixed)",
        }

    def health_probes(self, config: dict[str, Any]) -> list[Probe]:
        redirect = bool(config["tls"]["redirect_http"])
        return [
            Probe(
                "lb http",
                "http",
                port=int(config["port"]),
                path="/",
                expect=(301, 308) if redirect else (200, 302),
            ),
            Probe(
                "lb https",
                "http",
                scheme="https",
                port=int(config["tls"]["port"]),
                path="/healthz",
            ),
            Probe("nginx exporter", "http", port=self.NGINX_EXPORTER_PORT, path="/metrics"),
        ]


class DatabaseServer(ServerType):
    name = "db"
    role = "database"
    default_port = 5432
    description = "SQLite file (dev) or PostgreSQL (prod) with migrations and backups"
    POSTGRES_EXPORTER_PORT: ClassVar[int] = 9187

    def ports(self, config: dict[str, Any]) -> dict[int, str]:
        if config["engine"] != "postgresql":
            return {}
        return {
            int(config["port"]): "port",
            self.POSTGRES_EXPORTER_PORT: "prometheus-postgres-exporter (fixed)",
        }

    def health_probes(self, config: dict[str, Any]) -> list[Probe]:
        if config["engine"] == "sqlite":
            return [Probe("sqlite file", "file", path=str(config["sqlite"]["path"]))]
        return [
            Probe("postgresql port open", "tcp", port=int(config["port"])),
            Probe("postgres exporter", "http", port=self.POSTGRES_EXPORTER_PORT, path="/metrics"),
        ]


class MonitoringServer(ServerType):
    name = "monitoring"
    role = "monitoring"
    default_port = 9090
    description = "Prometheus, Alertmanager, alert rules, dashboards, journal collection"

    def ports(self, config: dict[str, Any]) -> dict[int, str]:
        return {
            int(config["port"]): "port",
            int(config["alertmanager_port"]): "alertmanager_port",
            int(config["journal_remote_port"]): "journal_remote_port",
        }

    def health_probes(self, config: dict[str, Any]) -> list[Probe]:
        return [
            Probe("prometheus ready", "http", port=int(config["port"]), path="/-/ready"),
            Probe(
                "alertmanager ready", "http", port=int(config["alertmanager_port"]), path="/-/ready"
            ),
            Probe("journal-remote port open", "tcp", port=int(config["journal_remote_port"])),
        ]


REGISTRY: dict[str, ServerType] = {
    cls.name: cls()
    for cls in (
        WebAppServer,
        InferenceAPIServer,
        LoadBalancerServer,
        DatabaseServer,
        MonitoringServer,
    )
}


def get_server_type(name: str) -> ServerType:
    """The server type called ``name``; KeyError names the allowed ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown server type {name!r}; allowed: {', '.join(REGISTRY)}") from None
