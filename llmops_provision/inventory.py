"""Ansible YAML inventories -> hosts, groups and the server types each host runs.

The group names are the server types (web, api, lb, db, monitoring); a host may be in several.
Per-type config overrides live in the inventory under ``llmops_config``:

- ``groups.<type>.vars.llmops_config``: fields of that type's config, for every host of the group;
- ``all.vars.llmops_config`` and ``hosts.<host>.vars.llmops_config``: keyed by server type
  (``{api: {workers: 4}}``), because one host or ``all`` spans several types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from llmops_provision.errors import InvalidInput, ValidationError, split_path
from llmops_provision.schemas import SERVER_TYPES

ENVIRONMENTS: tuple[str, ...] = ("dev", "lab", "prod")
_SECRET_VAR = re.compile(r"password|passwd|token|secret|(^|_)key$", re.IGNORECASE)
_GROUP_KEYS = ("hosts", "vars", "children")


class _VaultValue(str):
    """An ``!vault`` value: encrypted, so never a literal secret."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also accepts Ansible's ``!vault`` and ``!unsafe`` tags."""


def _vault(loader: yaml.SafeLoader, node: yaml.Node) -> _VaultValue:
    return _VaultValue(loader.construct_scalar(node))  # type: ignore[arg-type]


def _unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_Loader.add_constructor("!vault", _vault)
_Loader.add_constructor("!unsafe", _unsafe)


@dataclass
class Group:
    """One inventory group: its own vars, direct hosts and child groups."""

    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


@dataclass
class Host:
    """One inventory host: its own vars and every group it is in (directly or through children)."""

    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        """Its internal address: ``llmops_address``, else ``ansible_host``, else its name."""
        return str(self.vars.get("llmops_address", self.vars.get("ansible_host", self.name)))


@dataclass
class Inventory:
    """A parsed inventory: plain data, nothing downstream re-reads the file."""

    path: str
    name: str
    groups: dict[str, Group]
    hosts: dict[str, Host]
    all_vars: dict[str, Any]
    # Where things are written in the file: YAML key path -> line, and the YAML path of each
    # group's body and each host's vars (their first definition).
    yaml_lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    group_at: dict[str, tuple[str, ...]] = field(default_factory=dict)
    host_at: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def line_of(self, path: str) -> int:
        """The line that holds ``path`` (``groups.api.vars.llmops_config.port``), or the line of
        its nearest written parent; 0 when unknown."""
        parts = [str(p) for p in split_path(path)]
        yaml_path: tuple[str, ...] | None = None
        if len(parts) >= 2 and parts[0] == "groups" and parts[1] in self.group_at:
            yaml_path = self.group_at[parts[1]] + tuple(parts[2:])
        elif len(parts) >= 2 and parts[0] == "hosts" and parts[1] in self.host_at:
            rest = parts[3:] if parts[2:3] == ["vars"] else parts[2:]
            yaml_path = self.host_at[parts[1]] + tuple(rest)
        if yaml_path is None:
            return 0
        for n in range(len(yaml_path), 0, -1):
            line = self.yaml_lines.get(yaml_path[:n])
            if line:
                return line
        return 0

    def with_lines(self, errors: list[ValidationError]) -> list[ValidationError]:
        """``errors`` with the line numbers of those that point into this inventory."""
        return [
            replace(e, line=self.line_of(e.path)) if e.file == self.path and not e.line else e
            for e in errors
        ]

    @property
    def environment(self) -> str:
        """``llmops_environment`` from ``all.vars`` (dev, lab or prod; prod when unset)."""
        return str(self.all_vars.get("llmops_environment", "prod"))

    def hosts_of(self, group: str) -> list[str]:
        """Every host in ``group`` or its descendants, in inventory order."""
        seen: list[str] = []
        stack = [group]
        visited: set[str] = set()
        while stack:
            g = stack.pop(0)
            if g in visited or g not in self.groups:
                continue
            visited.add(g)
            for h in self.groups[g].hosts:
                if h not in seen:
                    seen.append(h)
            stack.extend(self.groups[g].children)
        return seen

    def server_types_of(self, host: str) -> list[str]:
        """The server types a host runs, in the canonical order web, api, lb, db, monitoring."""
        return [t for t in SERVER_TYPES if host in self.hosts_of(t)]

    def hosts_by_type(self) -> dict[str, list[str]]:
        return {t: self.hosts_of(t) for t in SERVER_TYPES}


def _yaml_error(path: str, exc: yaml.YAMLError) -> ValidationError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ValidationError(path, where, f"YAML syntax error: {problem}", "valid YAML")


def read_yaml(path: Path, shown: str) -> Any:
    """Parse YAML (with Ansible's tags); raise InvalidInput naming the line of a syntax error."""
    return read_yaml_with_lines(path, shown)[0]


def read_yaml_with_lines(path: Path, shown: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse YAML and note the line of every mapping key (by its key path)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput([ValidationError(shown, "", f"cannot read: {exc.strerror}")]) from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise InvalidInput([_yaml_error(shown, exc)]) from exc
    finally:
        loader.dispose()
    lines: dict[tuple[str, ...], int] = {}
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(node, ())] if node is not None else []
    seen: set[int] = set()
    while stack:
        current, at = stack.pop()
        if not isinstance(current, yaml.MappingNode) or id(current) in seen:
            continue
        seen.add(id(current))  # an alias repeats a node; its lines are those of the anchor
        for key_node, value_node in current.value:
            if isinstance(key_node, yaml.ScalarNode):
                here = (*at, str(key_node.value))
                lines.setdefault(here, key_node.start_mark.line + 1)
                stack.append((value_node, here))
    return data, lines


def load_inventory(path: str | Path) -> Inventory:
    """Parse an Ansible YAML inventory. Raises InvalidInput with every structural problem."""
    p = Path(path)
    shown = str(path)
    data, lines = read_yaml_with_lines(p, shown)
    group_at: dict[str, tuple[str, ...]] = {}
    host_at: dict[str, tuple[str, ...]] = {}
    errors: list[ValidationError] = []
    groups: dict[str, Group] = {}
    hosts: dict[str, Host] = {}
    if not isinstance(data, dict) or not data:
        raise InvalidInput(
            [ValidationError(shown, "", "not an inventory", "a YAML mapping with an 'all' group")]
        )

    def err(where: str, problem: str, allowed: str = "") -> None:
        errors.append(ValidationError(shown, where, problem, allowed))

    def walk(name: str, body: Any, parent: str | None, at: tuple[str, ...]) -> None:
        where = f"groups.{name}"
        group = groups.setdefault(name, Group(name))
        if name not in group_at or (isinstance(body, dict) and "vars" in body):
            group_at[name] = at
        if parent is not None and name not in groups[parent].children:
            groups[parent].children.append(name)
        if body is None:
            return
        if not isinstance(body, dict):
            err(
                where,
                f"a group must be a mapping, not {type(body).__name__}",
                "hosts, vars, children",
            )
            return
        for key in body:
            if key not in _GROUP_KEYS:
                err(f"{where}.{key}", "unknown key in a group", ", ".join(_GROUP_KEYS))
        gvars = body.get("vars") or {}
        if not isinstance(gvars, dict):
            err(f"{where}.vars", "vars must be a mapping")
        else:
            group.vars.update(gvars)
        ghosts = body.get("hosts") or {}
        if not isinstance(ghosts, dict):
            err(f"{where}.hosts", "hosts must be a mapping of host name -> vars")
        else:
            for hname, hvars in ghosts.items():
                hname = str(hname)
                host = hosts.setdefault(hname, Host(hname))
                if hvars is None:
                    hvars = {}
                if not isinstance(hvars, dict):
                    err(f"hosts.{hname}.vars", "host vars must be a mapping")
                    continue
                host.vars.update(hvars)
                if hname not in host_at or hvars:
                    host_at[hname] = (*at, "hosts", hname)
                if hname not in group.hosts:
                    group.hosts.append(hname)
        children = body.get("children") or {}
        if not isinstance(children, dict):
            err(f"{where}.children", "children must be a mapping of group name -> group")
        else:
            for cname, cbody in children.items():
                walk(str(cname), cbody, name, (*at, "children", str(cname)))

    for top, body in data.items():
        walk(str(top), body, None, (str(top),))
    if "all" not in groups:
        groups["all"] = Group("all")
    for gname in groups:
        if (
            gname != "all"
            and gname not in groups["all"].children
            and not any(gname in g.children for g in groups.values())
        ):
            groups["all"].children.append(gname)
    _load_vars_dirs(p, groups, hosts, errors)
    inv = Inventory(
        path=shown,
        name=p.stem,
        groups=groups,
        hosts=hosts,
        all_vars=dict(groups["all"].vars),
        yaml_lines=lines,
        group_at=group_at,
        host_at=host_at,
    )
    for hname, host in hosts.items():
        host.groups = [g for g in groups if hname in inv.hosts_of(g)]
    if errors:
        raise InvalidInput(inv.with_lines(errors))
    return inv


def _load_vars_dirs(
    inv_path: Path,
    groups: dict[str, Group],
    hosts: dict[str, Host],
    errors: list[ValidationError],
) -> None:
    """Ansible also reads group_vars/<group>.yml and host_vars/<host>.yml beside the inventory."""
    for kind, table in (("group_vars", groups), ("host_vars", hosts)):
        base = inv_path.parent / kind
        if not base.is_dir():
            continue
        for name, obj in table.items():
            for suffix in (".yml", ".yaml"):
                f = base / f"{name}{suffix}"
                if not f.is_file():
                    continue
                try:
                    data = read_yaml(f, str(f))
                except InvalidInput as exc:
                    errors.extend(exc.errors)
                    continue
                if data is None:
                    continue
                if not isinstance(data, dict):
                    errors.append(ValidationError(str(f), "", "vars file must be a mapping"))
                    continue
                obj.vars.update(data)


def check_inventory(inv: Inventory) -> list[ValidationError]:
    """Structural rules that need no config: groups, environment, secrets in plain text."""
    errors: list[ValidationError] = []

    def err(where: str, problem: str, allowed: str = "") -> None:
        errors.append(ValidationError(inv.path, where, problem, allowed))

    env = inv.all_vars.get("llmops_environment", "prod")
    if env not in ENVIRONMENTS:
        err(
            "groups.all.vars.llmops_environment",
            f"{env!r} is not an environment",
            ", ".join(ENVIRONMENTS),
        )
    for t in SERVER_TYPES:
        if t not in inv.groups:
            err("groups", f"no group for server type {t}", f"add a group named {t} with its hosts")
    for gname, group in inv.groups.items():
        if gname in ("all", "ungrouped"):
            continue
        if not inv.hosts_of(gname):
            err(f"groups.{gname}", "group has no hosts", "at least one host, or remove the group")
        if "llmops_config" in group.vars and gname not in SERVER_TYPES:
            err(
                f"groups.{gname}.vars.llmops_config",
                "llmops_config is read only from all, the server-type groups and hosts",
                "groups " + ", ".join(SERVER_TYPES),
            )
    for hname in inv.hosts:
        if not inv.server_types_of(hname):
            err(f"hosts.{hname}", "host is in no server-type group", ", ".join(SERVER_TYPES))
    db_hosts = inv.hosts_of("db")
    if len(db_hosts) > 1:
        err("groups.db", f"{len(db_hosts)} database hosts ({', '.join(db_hosts)})", "exactly one")
    # Secrets belong in the secret store or ansible-vault, never in plain inventory text.
    scopes: list[tuple[str, dict[str, Any]]] = [
        (f"groups.{g.name}.vars", g.vars) for g in inv.groups.values()
    ] + [(f"hosts.{h.name}.vars", h.vars) for h in inv.hosts.values()]
    for where, scope in scopes:
        for key, value in scope.items():
            if (
                _SECRET_VAR.search(str(key))
                and isinstance(value, str)
                and value
                and not isinstance(value, _VaultValue)
                and "{{" not in value
            ):
                err(
                    f"{where}.{key}",
                    "literal secret in the inventory",
                    "an !vault value, a lookup, or leave it out: llmops-provision generates "
                    "secrets into .llmops/secrets/<inventory>/",
                )
    return errors
