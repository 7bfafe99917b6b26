"""Configs and descriptors: load, merge template + inventory overrides, validate, cross-host rules.

Data flow: ``load_inventory`` (inventory.py) -> ``effective_configs`` (here) -> plain dicts that
``apply``/``plan`` pass on. Every function returns or raises *all* problems it finds, each naming
the file and JSON path the user has to edit.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmops_provision.errors import InvalidInput, ValidationError, json_path
from llmops_provision.inventory import Inventory, check_inventory
from llmops_provision.schemas import SERVER_TYPES, merge_mode, validate_against
from llmops_provision.server_types import NODE_EXPORTER_PORT, REGISTRY

Parts = tuple[str | int, ...]


def load_json(path: Path, shown: str) -> Any:
    """Parse a JSON file; raise InvalidInput naming line and column on syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput([ValidationError(shown, "", f"cannot read: {exc.strerror}")]) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            [
                ValidationError(
                    shown,
                    f"line {exc.lineno}, column {exc.colno}",
                    f"JSON syntax error: {exc.msg}",
                    "valid JSON",
                )
            ]
        ) from exc


def validate_config(config: Any, file: str) -> list[ValidationError]:
    """Errors of one standalone service config (its ``server_type`` picks the schema)."""
    if not isinstance(config, dict):
        return [ValidationError(file, "", "a config must be a JSON object", "an object")]
    stype = config.get("server_type")
    if stype not in REGISTRY:
        return [
            ValidationError(
                file,
                "server_type",
                f"{json.dumps(stype)} is not a server type"
                if "server_type" in config
                else "required key is missing",
                ", ".join(SERVER_TYPES),
            )
        ]
    return REGISTRY[str(stype)].validate_config(config, file)


def validate_config_file(path: str | Path) -> list[ValidationError]:
    """Errors of a config JSON file such as ``configs/api.json``."""
    try:
        data = load_json(Path(path), str(path))
    except InvalidInput as exc:
        return exc.errors
    return validate_config(data, str(path))


# -- merge ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    file: str
    base: Parts  # path of the layer's root as shown to the user


class _Provenance:
    """Which layer (template, group, host) set each value, so errors point where to edit."""

    def __init__(self) -> None:
        self._table: dict[Parts, _Origin] = {}

    def set(self, path: Parts, origin: _Origin) -> None:
        for key in [k for k in self._table if k[: len(path)] == path and k != path]:
            del self._table[key]
        self._table[path] = origin

    def locate(self, path: Parts) -> tuple[str, str]:
        for n in range(len(path), -1, -1):
            origin = self._table.get(path[:n])
            if origin is not None:
                return origin.file, json_path(origin.base + path)
        raise KeyError(path)  # pragma: no cover - the template layer covers the root


def _merge(
    stype: str,
    target: dict[str, Any],
    override: Mapping[str, Any],
    origin: _Origin,
    prov: _Provenance,
    at: tuple[str, ...] = (),
) -> None:
    """Objects merge key by key unless the schema marks them ``x-llmops-merge: replace``."""
    for key, value in override.items():
        here = (*at, str(key))
        if (
            isinstance(value, Mapping)
            and isinstance(target.get(key), dict)
            and merge_mode(stype, here) != "replace"
        ):
            _merge(stype, target[key], value, origin, prov, here)
        else:
            target[key] = copy.deepcopy(value)
            prov.set(here, origin)


@dataclass
class _Layer:
    file: str
    base: Parts
    values: Any


def _keyed(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg) and all(k in SERVER_TYPES for k in cfg)


def _override_layers(
    inv: Inventory, host: str, stype: str
) -> tuple[list[_Layer], list[ValidationError]]:
    """The inventory's overrides for one host and type, lowest precedence first.

    ``all.vars.llmops_config`` is keyed by server type; a type group's holds that type's fields; a
    host's holds fields when the host runs one type, else it is keyed by server type.
    """
    layers: list[_Layer] = []
    errors: list[ValidationError] = []
    types_here = inv.server_types_of(host)
    sources: list[tuple[Any, Parts, str]] = [
        (inv.groups["all"].vars.get("llmops_config"), ("groups", "all"), "keyed"),
        (
            inv.groups[stype].vars.get("llmops_config") if stype in inv.groups else None,
            ("groups", stype),
            "fields",
        ),
        (
            inv.hosts[host].vars.get("llmops_config"),
            ("hosts", host),
            "fields" if len(types_here) == 1 else "keyed",
        ),
    ]
    for cfg, where, form in sources:
        base: Parts = (*where, "vars", "llmops_config")
        if cfg is None:
            continue
        if not isinstance(cfg, dict):
            errors.append(ValidationError(inv.path, json_path(base), "must be a mapping", ""))
            continue
        if where[0] == "hosts" and _keyed(cfg):
            form = "keyed"
        if form == "fields":
            layers.append(_Layer(inv.path, base, cfg))
            continue
        for key in cfg:
            if key not in SERVER_TYPES:
                errors.append(
                    ValidationError(
                        inv.path,
                        json_path((*base, str(key))),
                        "not a server type: here llmops_config is keyed by server type"
                        + (
                            f" (host {host} runs {', '.join(types_here)})"
                            if where[0] == "hosts"
                            else ""
                        ),
                        ", ".join(SERVER_TYPES),
                    )
                )
        if cfg.get(stype) is not None:
            layers.append(_Layer(inv.path, (*base, stype), cfg[stype]))
    good: list[_Layer] = []
    for layer in layers:
        if isinstance(layer.values, dict):
            good.append(layer)
        else:
            errors.append(
                ValidationError(
                    inv.path,
                    json_path(layer.base),
                    f"must be a mapping of {stype} config fields",
                    f"fields of schemas/{stype}.schema.json",
                )
            )
    return good, errors


@dataclass
class _Effective:
    config: dict[str, Any]
    prov: _Provenance
    stype: str
    inventory_path: str

    def edit_at(self, parts: Parts) -> tuple[str, str]:
        """Where the user changes the value at ``parts``: the override that set it, or, for a
        template default, the place in the inventory where an override would go."""
        file, shown = self.prov.locate(parts)
        if file == self.inventory_path:
            return file, shown
        return self.inventory_path, json_path(
            ("groups", self.stype, "vars", "llmops_config", *parts)
        )


def _effective(inv: Inventory, host: str, stype: str) -> tuple[_Effective, list[ValidationError]]:
    st = REGISTRY[stype]
    template_file = _shown(st.template_path)
    config = st.template()
    prov = _Provenance()
    prov.set((), _Origin(template_file, ()))
    layers, errors = _override_layers(inv, host, stype)
    for layer in layers:
        _merge(stype, config, layer.values, _Origin(layer.file, layer.base), prov)
    errors.extend(validate_against(stype, config, prov.locate))
    return _Effective(config, prov, stype, inv.path), errors


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (what users typed)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def effective_configs(inv: Inventory) -> dict[str, dict[str, dict[str, Any]]]:
    """host -> server type -> validated effective config. Raises InvalidInput with every error."""
    configs, errors = check_inventory_configs(inv)
    if errors:
        raise InvalidInput(errors)
    return configs


def check_inventory_configs(
    inv: Inventory,
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[ValidationError]]:
    """Effective configs (host -> type -> config) and every error; valid only if no errors."""
    configs, errors = _effective_all(inv)
    plain = {h: {t: e.config for t, e in per.items()} for h, per in configs.items()}
    return plain, inv.with_lines(errors)


def _effective_all(
    inv: Inventory,
) -> tuple[dict[str, dict[str, _Effective]], list[ValidationError]]:
    errors = check_inventory(inv)
    configs: dict[str, dict[str, _Effective]] = {}
    schema_ok = True
    for host in inv.hosts:
        for stype in inv.server_types_of(host):
            eff, errs = _effective(inv, host, stype)
            configs.setdefault(host, {})[stype] = eff
            errors.extend(errs)
            schema_ok = schema_ok and not errs
    if schema_ok:
        # Cross-host rules read fields the schema guarantees, so only run them on valid configs.
        errors.extend(_cross_host_errors(inv, configs))
    return configs, _unique(errors)


def _unique(errors: list[ValidationError]) -> list[ValidationError]:
    seen: set[ValidationError] = set()
    out = []
    for e in errors:
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out


def _cross_host_errors(
    inv: Inventory, configs: dict[str, dict[str, _Effective]]
) -> list[ValidationError]:
    errors: list[ValidationError] = []

    def err(where: tuple[str, str], problem: str, allowed: str = "") -> None:
        errors.append(ValidationError(where[0], where[1], problem, allowed))

    # Two services of one host on one port.
    for host, per in configs.items():
        used: dict[int, str] = {NODE_EXPORTER_PORT: "node_exporter (roles/common, fixed)"}
        for stype, eff in per.items():
            for port, key in REGISTRY[stype].ports(eff.config).items():
                label = f"{stype} {key}"
                if port in used:
                    parts: Parts = tuple(key.split(".")) if "fixed" not in key else ()
                    err(
                        eff.edit_at(parts),
                        f"port {port} on host {host} is used by both {used[port]} and {label}",
                        "a port no other service on the host uses",
                    )
                else:
                    used[port] = label
    # debug only in dev.
    for host, per in configs.items():
        web = per.get("web")
        if web is not None and web.config["debug"] and inv.environment != "dev":
            err(
                web.edit_at(("debug",)),
                f"debug is on for host {host} in a {inv.environment} inventory",
                "debug: true only when all.vars.llmops_environment is dev",
            )
    # web must reach an api: a loopback api_url works only where an api runs too.
    for host, per in configs.items():
        web = per.get("web")
        if web is None:
            continue
        api_host = urlsplit(web.config["api_url"]).hostname or ""
        if api_host in _LOOPBACK and "api" not in per:
            err(
                web.edit_at(("api_url",)),
                f"{web.config['api_url']} is loopback, but host {host} runs no api",
                "the lb (https://<lb address>, it sends /v1/ to the api hosts) or an api host",
            )
    # The lb must let through the largest upload the services accept.
    uploads = [
        (eff.config["max_upload_bytes"], stype, host)
        for host, per in configs.items()
        for stype, eff in per.items()
        if stype in ("web", "api")
    ]
    for per in configs.values():
        lb = per.get("lb")
        if lb is None or not uploads:
            continue
        limit = _nginx_size(lb.config["client_max_body_size"])
        biggest, stype, on = max(uploads)
        if limit < biggest:
            err(
                lb.edit_at(("client_max_body_size",)),
                f"{lb.config['client_max_body_size']} ({limit} bytes) is less than "
                f"{stype} max_upload_bytes {biggest} on {on}: big uploads would get nginx's 413",
                f">= {biggest} bytes, e.g. {-(-biggest // (1 << 20)) + 1}m",
            )
    # The database the services use must be the one the db server provides.
    db_hosts = inv.hosts_of("db")
    db = configs[db_hosts[0]]["db"] if len(db_hosts) == 1 and db_hosts[0] in configs else None
    app_hosts = set(inv.hosts_of("web")) | set(inv.hosts_of("api"))
    for host, per in configs.items():
        for stype in ("web", "api"):
            app = per.get(stype)
            if app is None:
                continue
            eff = app
            dbc = eff.config["database"]
            where = eff.edit_at(("database",))
            if dbc["engine"] == "sqlite" and (len(app_hosts | set(db_hosts)) > 1):
                err(
                    where,
                    f"sqlite on host {host}, but web, api and db run on "
                    f"{len(app_hosts | set(db_hosts))} hosts: they cannot share one file",
                    "engine postgresql (sqlite only when db, web and api are one host)",
                )
            if db is None:
                continue
            if dbc["engine"] != db.config["engine"]:
                err(
                    eff.edit_at(("database", "engine")),
                    f"{stype} on {host} uses {dbc['engine']} but the db server "
                    f"({db_hosts[0]}) runs {db.config['engine']}",
                    db.config["engine"],
                )
            elif dbc["engine"] == "postgresql":
                dbhost = inv.hosts[db_hosts[0]]
                if dbc["host"] not in (dbhost.address, dbhost.name):
                    err(
                        eff.edit_at(("database", "host")),
                        f"{dbc['host']!r} is not the db host",
                        f"{dbhost.address} (host {dbhost.name})",
                    )
                for key, want in (
                    ("port", db.config["port"]),
                    ("name", db.config["postgresql"]["name"]),
                    ("user", db.config["postgresql"]["user"]),
                ):
                    if dbc[key] != want:
                        err(
                            eff.edit_at(("database", key)),
                            f"{dbc[key]!r} differs from the db server's",
                            json.dumps(want),
                        )
            elif dbc["path"] != db.config["sqlite"]["path"]:
                err(
                    eff.edit_at(("database", "path")),
                    f"{dbc['path']!r} is not the db server's sqlite file",
                    db.config["sqlite"]["path"],
                )
    return errors


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _nginx_size(text: str) -> int:
    """nginx size syntax (``10m``, ``512k``, ``1g``, ``1024``) in bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    last = text[-1].lower()
    return int(text[:-1]) * units[last] if last in units else int(text)


def validate_inventory(path: str | Path) -> list[ValidationError]:
    """Every problem of an inventory file: structure, merged configs, cross-host rules."""
    from llmops_provision.inventory import load_inventory

    try:
        inv = load_inventory(path)
    except InvalidInput as exc:
        return exc.errors
    return check_inventory_configs(inv)[1]


# -- descriptor.json and application directories -----------------------------------------------


def validate_descriptor(path: str | Path) -> list[ValidationError]:
    """Schema errors of a ``descriptor.json`` (the files it names are checked by verify_app_dir)."""
    try:
        data = load_json(Path(path), str(path))
    except InvalidInput as exc:
        return exc.errors
    return validate_against("descriptor", data, str(path))


def load_descriptor(path: str | Path) -> dict[str, Any]:
    """A validated descriptor as a dict; raises InvalidInput."""
    errors = validate_descriptor(path)
    if errors:
        raise InvalidInput(errors)
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_app_dir(app_dir: str | Path, server_type: str | None = None) -> list[ValidationError]:
    """Problems of an application directory (or unpacked bundle): descriptor valid, every file it
    names present, model sha256 matching; with ``server_type``, a component for that type."""
    root = Path(app_dir)
    desc_path = root / "descriptor.json"
    shown = str(desc_path)
    if not desc_path.is_file():
        return [
            ValidationError(
                str(root),
                "",
                "no descriptor.json in the application directory",
                "see schemas/descriptor.schema.json",
            )
        ]
    errors = validate_descriptor(desc_path)
    if errors:
        return errors
    desc = json.loads(desc_path.read_text(encoding="utf-8"))
    if server_type in ("web", "api") and server_type not in desc["components"]:
        errors.append(
            ValidationError(
                shown,
                "components",
                f"no component for server type {server_type}",
                ", ".join(sorted(desc["components"])),
            )
        )
    for i, model in enumerate(desc.get("models", [])):
        for key in ("path", "metadata"):
            if key not in model:
                continue
            f = root / model[key]
            if not f.is_file():
                errors.append(
                    ValidationError(
                        shown, f"models[{i}].{key}", f"file {model[key]!r} is missing", ""
                    )
                )
            elif key == "path":
                got = _sha256(f)
                if got != model["sha256"]:
                    errors.append(
                        ValidationError(
                            shown,
                            f"models[{i}].sha256",
                            f"sha256 of {model[key]} is {got}, "
                            f"the descriptor says {model['sha256']}",
                            "the file's real sha256 (the file changed or the descriptor is stale)",
                        )
                    )
    seen: dict[tuple[str, str], int] = {}
    for i, model in enumerate(desc.get("models", [])):
        key2 = (model["name"], model["version"])
        if key2 in seen:
            errors.append(
                ValidationError(
                    shown,
                    f"models[{i}]",
                    f"model {key2[0]} {key2[1]} repeats models[{seen[key2]}]",
                    "each name/version once",
                )
            )
        seen[key2] = i
    defaults = [i for i, m in enumerate(desc.get("models", [])) if m.get("default")]
    if len(defaults) > 1:
        errors.append(
            ValidationError(
                shown,
                f"models[{defaults[1]}].default",
                "more than one default model",
                "at most one",
            )
        )
    mig = desc.get("migrations")
    if mig is not None and not (root / mig["script_location"]).is_dir():
        errors.append(
            ValidationError(
                shown,
                "migrations.script_location",
                f"directory {mig['script_location']!r} is missing",
                "",
            )
        )
    pkg = desc.get("package")
    if pkg is not None and not (root / pkg.get("path", ".") / "pyproject.toml").is_file():
        errors.append(
            ValidationError(
                shown,
                "package.path",
                f"no pyproject.toml in {pkg.get('path', '.')!r}",
                "the directory of the app's pyproject.toml",
            )
        )
    return errors


def check_release(
    inv: Inventory,
    configs: Mapping[str, Mapping[str, Mapping[str, Any]]],
    descriptor: Mapping[str, Any],
) -> list[ValidationError]:
    """Does a validated descriptor fit the inventory's effective configs? Every server type that
    runs app code needs a component, and every api's default model must be in the descriptor."""
    errors: list[ValidationError] = []
    models = {(m["name"], m["version"]) for m in descriptor.get("models", [])}
    shipped = ", ".join(f"{n} {v}" for n, v in sorted(models)) or "none"
    for host, per in configs.items():
        for stype in ("web", "api"):
            if stype in per and stype not in descriptor["components"]:
                errors.append(
                    ValidationError(
                        inv.path,
                        f"groups.{stype}",
                        f"{descriptor['name']} {descriptor['version']} has no {stype} component "
                        f"(host {host} runs {stype})",
                        ", ".join(sorted(descriptor["components"])),
                    )
                )
        api = per.get("api")
        if api is not None and (api["model"]["name"], api["model"]["version"]) not in models:
            errors.append(
                ValidationError(
                    inv.path,
                    "groups.api.vars.llmops_config.model",
                    f"host {host} serves {api['model']['name']} {api['model']['version']}, which "
                    f"{descriptor['name']} {descriptor['version']} does not ship",
                    shipped,
                )
            )
    return inv.with_lines(_unique(errors))
