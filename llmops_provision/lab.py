"""The local lab: real Debian 12 hosts (systemd as PID 1) booted with systemd-nspawn on one machine.

Layout under ``/var/lib/llmops-lab`` (see docs/CONTRACTS.md "Lab"):

- ``base/<recipe-hash>/rootfs``: the debootstrapped base image, built once per recipe.
- ``apt-archives/``: .deb files downloaded inside lab hosts, shared by every later host.
- ``labs/<name>/``: one lab: ``lab.json`` (subnet, hosts), ``ssh/id_ed25519`` (the lab key),
  ``inventory.yml`` (for Ansible), ``hosts/<host>/{upper,work,root,console.log}``.

Each host is an overlayfs root (lower = base image) booted by ``systemd-nspawn --boot`` inside its
own network namespace, wired by a veth pair to the lab's bridge; NAT lets apt reach the mirror.
A small shell supervisor restarts nspawn when the host reboots (nspawn exits 133 then).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STATE_ROOT = Path("/var/lib/llmops-lab")
DEFAULT_NAME = "default"
DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "lab.yml"
LAB_NETWORK = ipaddress.IPv4Network("10.213.0.0/16")
SSH_USER = "root"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the recipe in DESIGN.md needs, plus what every role installs anyway (pre-seeded so role
# runs are fast and do not all download the same packages).
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "openssh-server",
    "iproute2",
    "procps",
    "sudo",
    "ca-certificates",
    "python3-venv",
    "python3-apt",
    "nftables",
    "prometheus-node-exporter",
    "systemd-journal-remote",
    "curl",
    "acl",
    "iputils-ping",
    "less",
    "gnupg",
    "apt-utils",
)
# Run inside the debootstrapped tree (chroot) to finish the base image. Part of the cache key.
BASE_SCRIPT = r"""
set -eu
cat > /etc/apt/sources.list <<EOF
deb MIRROR SUITE main
deb MIRROR SUITE-updates main
deb MIRROR-security SUITE-security main
EOF
# Hosts keep what they download: lab down moves the .debs to the shared pool.
echo 'APT::Keep-Downloaded-Packages "true";' > /etc/apt/apt.conf.d/10llmops-lab
echo 'Acquire::Languages "none";' >> /etc/apt/apt.conf.d/10llmops-lab
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >> /etc/apt/apt.conf.d/10llmops-lab
# Nothing periodic in lab hosts: it costs CPU and makes runs less reproducible.
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
  dpkg-db-backup.timer man-db.timer systemd-tmpfiles-clean.timer >/dev/null 2>&1
# nspawn mounts the root itself; remounting it per /etc/fstab only fails now and then under load.
systemctl mask systemd-remount-fs.service >/dev/null 2>&1
# Pre-seeded services stay off until a role turns them on.
systemctl disable prometheus-node-exporter.service systemd-journal-remote.socket \
  systemd-journal-upload.service >/dev/null 2>&1 || true
# Per host: own machine-id and SSH host keys (written by lab up).
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id
: > /etc/machine-id
# The controller's LANG/LC_* would make perl in apt complain about missing locales.
sed -i 's/^AcceptEnv/#AcceptEnv/' /etc/ssh/sshd_config
echo lab > /etc/hostname
apt-get -qq update
apt-get -qq clean
"""
BASE_MIN_FREE_MB = 1500
HOST_MIN_FREE_MB = 300
BOOT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

# systemd-nspawn exits with 133 when the container's systemd asked for a reboot.
# Each host gets cgroups of its own first: with --keep-unit nspawn boots the host in the caller's
# cgroup, and hosts sharing one trample on each other's units (random "219/CGROUP" failures).
_SUPERVISOR = r"""
for cg in $LLMOPS_LAB_CGROUPS; do
  mkdir -p "$cg" && echo $$ > "$cg/cgroup.procs" || echo "llmops-lab: cannot use cgroup $cg"
done
stop=0
child=
trap 'stop=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
  "$@" &
  child=$!
  rc=0
  wait "$child" || rc=$?
  if [ "$stop" = 1 ]; then
    wait "$child" 2>/dev/null
    exit 0
  fi
  [ "$rc" = 133 ] || exit "$rc"
  echo "llmops-lab: host rebooted, starting it again"
done
"""

REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "iptables": "iptables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mount": "mount",
    "umount": "mount",
    "chroot": "coreutils",
    "bash": "bash",
}

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")

Progress = Callable[[str], None]


class LabError(Exception):
    """A lab problem explained for people: what is wrong and what to do."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Host:
    """One lab host: its inventory name, address and groups."""

    name: str
    address: str
    groups: tuple[str, ...] = ()


@dataclass
class Lab:
    """A lab as recorded in its state dir; ``up()`` returns one."""

    name: str
    index: int
    hosts: list[Host]
    base: str = ""
    groups: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""  # the inventory file the hosts came from, if any
    naming: int = 2  # 1: labs started before netns/machine names got a '.' between lab and host

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.213.{self.index}.0/24")

    @property
    def gateway(self) -> str:
        return f"10.213.{self.index}.1"

    @property
    def bridge(self) -> str:
        return f"llmops{self.index}"

    @property
    def state_dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def inventory_path(self) -> Path:
        return self.state_dir / "inventory.yml"

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts)
        raise LabError(f"lab {self.name!r} has no host {name!r}; its hosts: {known}")

    def address(self, name: str) -> str:
        return self.host(name).address

    def netns(self, host: str) -> str:
        # '.' is in no lab or host name, so lab "a" host "b-c" never meets lab "a-b" host "c".
        return f"llmops-{self.name}-{host}" if self.naming == 1 else f"llmops-{self.name}.{host}"

    def machine(self, host: str) -> str:
        return (f"{self.name}-{host}" if self.naming == 1 else f"{self.name}.{host}")[:64]

    def veth(self, host: str) -> str:
        return f"llv{self.index}h{[h.name for h in self.hosts].index(host)}"

    def host_dir(self, host: str) -> Path:
        return self.state_dir / "hosts" / host

    def ssh_options(self) -> list[str]:
        return [
            "-i",
            str(self.ssh_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ]

    def ssh_argv(self, host: str, *command: str, tty: bool = False) -> list[str]:
        """The ssh command line that runs ``command`` (or a shell) on ``host`` as root."""
        argv = ["ssh", *self.ssh_options()]
        if tty:
            argv.append("-t")
        argv.append(f"{SSH_USER}@{self.address(host)}")
        argv.extend(command)
        return argv

    def run(
        self, host: str, command: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on ``host`` over SSH and return its result (text)."""
        proc = subprocess.run(
            self.ssh_argv(host, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(
                f"{host}: `{command}` exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "subnet": str(self.subnet),
            "gateway": self.gateway,
            "bridge": self.bridge,
            "base": self.base,
            "ssh_key": str(self.ssh_key),
            "user": SSH_USER,
            "port": 22,
            "inventory": str(self.inventory_path),
            "hosts": [
                {"name": h.name, "address": h.address, "groups": list(h.groups)} for h in self.hosts
            ],
            "groups": self.groups,
            "source": self.source,
            "naming": self.naming,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lab:
        return cls(
            name=data["name"],
            index=int(data["index"]),
            base=data.get("base", ""),
            hosts=[
                Host(h["name"], h["address"], tuple(h.get("groups", ()))) for h in data["hosts"]
            ],
            groups={k: list(v) for k, v in data.get("groups", {}).items()},
            source=data.get("source", ""),
            naming=int(data.get("naming", 1)),
        )


@dataclass(frozen=True)
class HostStatus:
    """What ``status()`` reports for one host."""

    name: str
    address: str
    state: str
    memory_mb: float | None  # PSS of the host's processes
    cgroup_mb: float | None = None  # its memory cgroup's usage minus inactive page cache


# --------------------------------------------------------------------------- helpers


def lab_dir(name: str) -> Path:
    return STATE_ROOT / "labs" / name


def _check_name(kind: str, name: str) -> None:
    if not _NAME_RE.match(name):
        raise LabError(
            f"invalid {kind} name {name!r}: use 1-32 characters a-z, 0-9 and '-' "
            "(not at either end)"
        )


def preflight(tools: Sequence[str] = tuple(REQUIRED_TOOLS)) -> None:
    """Fail with a clear message unless we are root and every tool the lab needs is installed."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (systemd-nspawn, network namespaces, mounts, iptables): "
            "run it as root, e.g. `sudo llmops-provision lab up`"
        )
    for tool in tools:
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            raise LabError(
                f"`{tool}` is not installed: install the Debian package "
                f"`{REQUIRED_TOOLS[tool]}` (apt-get install {REQUIRED_TOOLS[tool]}), "
                "or run scripts/setup.sh"
            )


def _check_space(need_mb: int, what: str) -> None:
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(STATE_ROOT).free // (1024 * 1024)
    if free_mb < need_mb:
        raise LabError(
            f"no disk space for {what}: {STATE_ROOT} has {free_mb} MB free, needs {need_mb} MB; "
            f"free some space (old labs: `llmops-provision lab status`, then `lab down --name N`)"
        )


def _sh(
    *argv: str, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input_text, check=False)
    if check and proc.returncode != 0:
        if proc.returncode != 0 and "No space left" in proc.stderr:
            raise LabError(f"no disk space: `{' '.join(argv)}` failed: {proc.stderr.strip()}")
        raise LabError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- base image


def base_recipe_hash() -> str:
    """Cache key of the base image: changes whenever its recipe changes."""
    recipe = json.dumps([SUITE, MIRROR, sorted(BASE_PACKAGES), BASE_SCRIPT, 1])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def base_dir() -> Path:
    return STATE_ROOT / "base" / base_recipe_hash()


def ensure_base(progress: Progress = _stderr) -> Path:
    """Return the base image rootfs, building it (about a minute) if its recipe changed."""
    final = base_dir()
    rootfs = final / "rootfs"
    if (final / "done").exists():
        return rootfs
    with _flock(STATE_ROOT / "base.lock"):
        if (final / "done").exists():
            return rootfs
        preflight()
        _check_space(BASE_MIN_FREE_MB, "the base image")
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        started = time.monotonic()
        progress(f"base image {final.name}: debootstrap {SUITE} (about a minute, once)")
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(tmp / "rootfs"),
            MIRROR,
        ]
        log = tmp / "debootstrap.log"
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert proc.stdout is not None
            last = 0.0
            for line in proc.stdout:
                logf.write(line)
                now = time.monotonic()
                # Print phase changes and at most one line every 3 s: readable, not a flood.
                if line.startswith("I: ") and (now - last > 3 or "Base system" in line):
                    progress(f"  [{now - started:5.0f}s] {line[3:].strip()}")
                    last = now
            rc = proc.wait()
        if rc != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            if "No space left" in tail:
                raise LabError(f"no disk space while building the base image in {tmp}")
            raise LabError(f"debootstrap failed ({rc}); log {log}:\n{tail}")
        script = BASE_SCRIPT.replace("MIRROR", MIRROR).replace("SUITE", SUITE)
        progress(f"  [{time.monotonic() - started:5.0f}s] configuring the base image")
        shutil.copyfile(_resolv_conf(), tmp / "rootfs/etc/resolv.conf")
        _sh("chroot", str(tmp / "rootfs"), "/bin/sh", "-c", script)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        (final / "done").write_text(f"{time.monotonic() - started:.1f}\n")
        progress(f"base image ready in {time.monotonic() - started:.0f}s: {rootfs}")
        _prune_bases(keep=final.name)
    return rootfs


def _prune_bases(keep: str) -> None:
    """Delete base images of older recipes that no lab uses any more."""
    used = {keep} | {lab.base for lab in _all_labs()}
    for d in (STATE_ROOT / "base").iterdir():
        if d.is_dir() and d.name not in used and not d.name.endswith(".tmp"):
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- planning


def _read_inventory(path: Path) -> tuple[str | None, list[Host], dict[str, list[str]]]:
    """Hosts (name, ansible_host, groups) and the lab name recorded in a lab inventory file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise LabError(f"cannot read inventory {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise LabError(f"{path}: not valid YAML: {e}") from e
    addresses: dict[str, str | None] = {}
    groups: dict[str, list[str]] = {}
    lab_name: str | None = None

    def walk(group: str, node: dict[str, Any], where: str) -> None:
        nonlocal lab_name
        if not isinstance(node, dict):
            return
        gvars = node.get("vars") or {}
        if isinstance(gvars, dict) and "llmops_lab_name" in gvars:
            lab_name = str(gvars["llmops_lab_name"])
        for hname, hvars in (node.get("hosts") or {}).items():
            hvars = hvars or {}
            addr = hvars.get("ansible_host")
            if addresses.get(hname) is None:
                addresses[hname] = str(addr) if addr else None
            if group != "all":
                groups.setdefault(group, []).append(hname)
        for child, cnode in (node.get("children") or {}).items():
            walk(child, cnode or {}, f"{where}.children.{child}")

    walk("all", data.get("all") or {}, "all")
    if not addresses:
        raise LabError(f"{path}: no hosts found (expected all.hosts or all.children.*.hosts)")
    hosts = [
        Host(h, a or "", tuple(g for g, members in groups.items() if h in members))
        for h, a in addresses.items()
    ]
    return lab_name, hosts, groups


def _used_indices(exclude: str) -> dict[int, str]:
    used: dict[int, str] = {}
    for lab in _all_labs():
        if lab.name != exclude:
            used[lab.index] = lab.name
    return used


def _subnet_users(subnet: ipaddress.IPv4Network, ignore: str = "") -> list[str]:
    """Interfaces or routes on this machine that already use ``subnet`` (except device
    ``ignore``: a lab's own bridge left by a crashed run, which up() replaces)."""
    users = []
    out = _sh("ip", "-j", "-4", "addr", "show").stdout
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            net = ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
            if net.overlaps(subnet) and link["ifname"] != ignore:
                users.append(f"interface {link['ifname']} ({a['local']}/{a['prefixlen']})")
    routes = json.loads(_sh("ip", "-j", "-4", "route", "show").stdout or "[]")
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            net = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
            if net.overlaps(subnet) and r.get("dev") and r["dev"] != ignore:
                users.append(f"route {dst} via {r['dev']}")
    return users


def _plan(
    name: str,
    hosts: Sequence[str] | None,
    inventory: Path | None,
    host_groups: Mapping[str, Sequence[str]] | None = None,
) -> Lab:
    """Decide subnet and addresses (under the global lock)."""
    groups: dict[str, list[str]] = {}
    inv_name: str | None = None
    if hosts:
        groups = {g: list(members) for g, members in (host_groups or {}).items()}
        for g, members in groups.items():
            unknown = set(members) - set(hosts)
            if unknown:
                raise LabError(
                    f"group {g!r} names hosts that are not in the lab: {sorted(unknown)}"
                )
        planned = [Host(h, "", tuple(g for g, m in groups.items() if h in m)) for h in hosts]
    else:
        inv_name, planned, groups = _read_inventory(inventory or DEFAULT_INVENTORY)
    for h in planned:
        _check_name("host", h.name)
    if len({h.name for h in planned}) != len(planned):
        raise LabError(f"duplicate host names in {[h.name for h in planned]}")
    if len(planned) > 200:
        raise LabError("a lab holds at most 200 hosts")

    used = _used_indices(exclude=name)
    previous = load(name) if (lab_dir(name) / "lab.json").exists() else None
    fixed_addresses = inv_name == name and all(h.address for h in planned)
    if fixed_addresses:
        nets = {ipaddress.IPv4Network(f"{h.address}/24", strict=False) for h in planned}
        if len(nets) != 1 or not next(iter(nets)).subnet_of(LAB_NETWORK):
            raise LabError(
                f"{inventory}: the hosts of lab {name!r} must share one 10.213.N.0/24 subnet; "
                f"found {sorted(str(n) for n in nets)}"
            )
        index = int(str(next(iter(nets)).network_address).split(".")[2])
    elif name == DEFAULT_NAME:
        index = 0
    elif previous is not None:
        index = previous.index
    else:
        free = [i for i in range(1, 255) if i not in used]
        index = next((i for i in free if not _subnet_users(_subnet(i), f"llmops{i}")), -1)
        if index < 0:
            raise LabError(
                "no free lab subnet in 10.213.1-254.0/24: take down labs you no longer need"
            )
    if index in used:
        other = used[index]
        raise LabError(
            f"subnet {_subnet(index)} is already in use by lab {other!r}: "
            f"run `llmops-provision lab down --name {other}` or give this lab other addresses"
        )
    if previous is None or previous.index != index:
        users = _subnet_users(_subnet(index), f"llmops{index}")
        if users:
            raise LabError(
                f"subnet {_subnet(index)} for lab {name!r} is already in use on this machine by "
                f"{'; '.join(users)}: free it or use another lab name/addresses"
            )
    final: list[Host] = []
    taken = {h.address for h in planned if h.address}
    next_octet = 10
    for h in planned:
        addr = h.address
        if addr and not fixed_addresses:
            # Same topology in this lab's subnet: keep the host part of the address.
            addr = f"10.213.{index}.{addr.rsplit('.', 1)[1]}"
        if not addr:
            while f"10.213.{index}.{next_octet}" in taken:
                next_octet += 1
            addr = f"10.213.{index}.{next_octet}"
            taken.add(addr)
        octet = int(addr.rsplit(".", 1)[1])
        if octet in (0, 1, 255):
            raise LabError(
                f"host {h.name}: address {addr} is reserved (network, gateway, broadcast)"
            )
        final.append(Host(h.name, addr, h.groups))
    if len({h.address for h in final}) != len(final):
        raise LabError(f"two hosts share an address: {[(h.name, h.address) for h in final]}")
    source = "" if hosts else str((inventory or DEFAULT_INVENTORY).resolve())
    return Lab(name=name, index=index, hosts=final, groups=groups, source=source)


def _subnet(index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.213.{index}.0/24")


# --------------------------------------------------------------------------- state


def load(name: str = DEFAULT_NAME) -> Lab:
    """The lab ``name`` as recorded by ``up()``; LabError if there is none."""
    path = lab_dir(name) / "lab.json"
    try:
        return Lab.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise LabError(
            f"no lab named {name!r} (nothing in {path.parent}); start it with "
            f"`llmops-provision lab up --name {name}`"
        ) from None


def _all_labs() -> list[Lab]:
    labs = []
    root = STATE_ROOT / "labs"
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "lab.json").exists():
                with contextlib.suppress(ValueError, KeyError):
                    labs.append(Lab.from_json(json.loads((d / "lab.json").read_text())))
    return labs


def labs() -> list[Lab]:
    """Every lab that has state on this machine (running or not)."""
    return _all_labs()


def _write_state(lab: Lab) -> None:
    lab.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = lab.state_dir / "lab.json.tmp"
    tmp.write_text(json.dumps(lab.to_json(), indent=2) + "\n")
    tmp.rename(lab.state_dir / "lab.json")


def _write_inventory(lab: Lab) -> None:
    """Write ``inventory.yml`` for Ansible: a copy of the source inventory (its vars and groups
    kept) with this lab's addresses and key, or a plain one for ``--hosts`` labs."""
    ssh_vars = {
        "ansible_user": SSH_USER,
        "ansible_ssh_private_key_file": str(lab.ssh_key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "llmops_lab_name": lab.name,
    }
    inv: dict[str, Any] = {}
    if lab.source:
        with contextlib.suppress(OSError, yaml.YAMLError):
            inv = yaml.safe_load(Path(lab.source).read_text()) or {}
    if inv.get("all"):
        addresses = {h.name: h.address for h in lab.hosts}

        def rewrite(node: dict[str, Any]) -> None:
            for hname, hvars in list((node.get("hosts") or {}).items()):
                hvars = dict(hvars or {})
                hvars["ansible_host"] = addresses[hname]
                node["hosts"][hname] = hvars
            for child in (node.get("children") or {}).values():
                if isinstance(child, dict):
                    rewrite(child)

        rewrite(inv["all"])
        # Addresses named in vars (e.g. an api_url) move to this lab's subnet with their hosts.
        old_addr = {h.name: h.address for h in _read_inventory(Path(lab.source))[1]}
        moves = {old_addr[n]: a for n, a in addresses.items() if old_addr.get(n) not in (None, a)}
        if moves:
            pattern = re.compile(
                r"(?<![\d.])(" + "|".join(re.escape(a) for a in moves) + r")(?![\d])"
            )
            inv = _map_strings(inv, lambda text: pattern.sub(lambda m: moves[m.group(1)], text))
        inv["all"]["vars"] = {**(inv["all"].get("vars") or {}), **ssh_vars}
    else:
        inv = {
            "all": {
                "vars": ssh_vars,
                "hosts": {h.name: {"ansible_host": h.address} for h in lab.hosts},
            }
        }
        if lab.groups:
            inv["all"]["children"] = {
                g: {"hosts": dict.fromkeys(members)} for g, members in lab.groups.items()
            }
    header = f"# Written by `llmops-provision lab up --name {lab.name}`; rewritten on every up.\n"
    lab.inventory_path.write_text(header + yaml.dump(inv, Dumper=_NoAliasDumper, sort_keys=False))


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _map_strings(node: Any, func: Callable[[str], str]) -> Any:
    if isinstance(node, str):
        return func(node)
    if isinstance(node, dict):
        return {k: _map_strings(v, func) for k, v in node.items()}
    if isinstance(node, list):
        return [_map_strings(v, func) for v in node]
    return node


# --------------------------------------------------------------------------- processes


def _proc_ns(pid: str, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def _container_init(lab: Lab, host: str) -> int | None:
    """PID (on this machine) of the host's systemd, found through its network namespace."""
    try:
        ns_ino = os.stat(Path("/run/netns", lab.netns(host))).st_ino
    except OSError:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _proc_ns(entry, "net") != ns_ino:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^NSpid:\s+(.*)$", status, re.M)
        if m and m.group(1).split()[-1] == "1" and len(m.group(1).split()) > 1:
            return int(entry)
    return None


def _container_pids(init: int) -> list[int]:
    pidns = _proc_ns(str(init), "pid")
    if pidns is None:
        return []
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _proc_ns(e, "pid") == pidns]


def _memory_mb(init: int) -> float:
    """Proportional set size (PSS) of every process of a host, in MB."""
    total_kb = 0
    for pid in _container_pids(init):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total_kb += int(line.split()[1])
                    break
    return total_kb / 1024


def _supervisor_pid(lab: Lab, host: str) -> int | None:
    try:
        pid = int((lab.host_dir(host) / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if f"/run/netns/{lab.netns(host)}".encode() in cmdline else None


def _nspawn_pids(lab: Lab, host: str) -> list[int]:
    """Every nspawn or supervisor process of this host (also ones our state lost track of)."""
    marker = f"--network-namespace-path=/run/netns/{lab.netns(host)}".encode()
    pids = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{e}/cmdline").read_bytes().split(b"\0"):
                    pids.append(int(e))
    return pids


# --------------------------------------------------------------------------- network


def _iptables_rules(lab: Lab) -> list[tuple[str, list[str]]]:
    tag = ["-m", "comment", "--comment", f"llmops-lab:{lab.name}"]
    sub = str(lab.subnet)
    return [
        ("nat", ["POSTROUTING", "-s", sub, "!", "-d", sub, *tag, "-j", "MASQUERADE"]),
        ("filter", ["FORWARD", "-i", lab.bridge, *tag, "-j", "ACCEPT"]),
        ("filter", ["FORWARD", "-o", lab.bridge, *tag, "-j", "ACCEPT"]),
    ]


def _remove_iptables(name: str) -> None:
    """Delete every rule tagged with this lab's comment (also ones a crashed run left)."""
    tag = f'"llmops-lab:{name}"'
    for table in ("nat", "filter"):
        out = _sh("iptables", "-w", "-t", table, "-S", check=False).stdout
        for line in out.splitlines():
            if line.startswith("-A ") and (tag in line or f"llmops-lab:{name} " in line + " "):
                args = line.split()
                args[0] = "-D"
                _sh("iptables", "-w", "-t", table, *[a.strip('"') for a in args], check=False)


def _setup_network(lab: Lab) -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    # No live lab has this index (checked under the lock): links with its names are leftovers.
    for link in _listdir("/sys/class/net"):
        if link == lab.bridge or link.startswith(f"llv{lab.index}h"):
            _sh("ip", "link", "delete", link, check=False)
    _sh("ip", "link", "add", lab.bridge, "type", "bridge")
    _sh("ip", "addr", "replace", f"{lab.gateway}/24", "dev", lab.bridge)
    _sh("ip", "link", "set", lab.bridge, "up")
    for table, rule in _iptables_rules(lab):
        if _sh("iptables", "-w", "-t", table, "-C", *rule, check=False).returncode != 0:
            _sh("iptables", "-w", "-t", table, "-I", *rule)
    for h in lab.hosts:
        ns, veth = lab.netns(h.name), lab.veth(h.name)
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "link", "set", veth, "master", lab.bridge, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "route", "add", "default", "via", lab.gateway)


# --------------------------------------------------------------------------- hosts


def _resolv_conf() -> Path:
    """The machine's resolver config for hosts; a loopback stub (systemd-resolved) is not
    reachable from a host's netns, so take the upstream servers then."""
    main = Path("/etc/resolv.conf")
    text = main.read_text() if main.exists() else ""
    servers = re.findall(r"^\s*nameserver\s+(\S+)", text, re.M)
    upstream = Path("/run/systemd/resolve/resolv.conf")
    if servers and all(ip.startswith(("127.", "::1")) for ip in servers) and upstream.exists():
        return upstream
    if not servers:
        raise LabError(
            "/etc/resolv.conf names no nameserver: lab hosts need one to reach the Debian mirror"
        )
    return main


def _mkdirs_like(lower: Path, upper: Path, rel: str) -> Path:
    """Create ``upper/rel`` with the owner and mode of ``lower/rel`` at every level."""
    cur_lower, cur_upper = lower, upper
    for part in Path(rel).parts:
        cur_lower, cur_upper = cur_lower / part, cur_upper / part
        if not cur_upper.exists():
            cur_upper.mkdir()
            st = cur_lower.stat() if cur_lower.exists() else None
            if st is not None:
                os.chown(cur_upper, st.st_uid, st.st_gid)
                os.chmod(cur_upper, st.st_mode & 0o7777)
    return cur_upper


def _prepare_host(lab: Lab, host: Host, rootfs: Path, pubkey: str) -> None:
    hd = lab.host_dir(host.name)
    upper, work, root = hd / "upper", hd / "work", hd / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    etc = _mkdirs_like(rootfs, upper, "etc")
    (etc / "hostname").write_text(host.name + "\n")
    hosts_lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    hosts_lines += [f"{h.address} {h.name}" for h in lab.hosts]
    (etc / "hosts").write_text("\n".join(hosts_lines) + "\n")
    shutil.copyfile(_resolv_conf(), etc / "resolv.conf")
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    ssh_etc = _mkdirs_like(rootfs, upper, "etc/ssh")
    _sh(
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        f"root@{host.name}",
        "-f",
        str(ssh_etc / "ssh_host_ed25519_key"),
    )
    dot_ssh = _mkdirs_like(rootfs, upper, "root")
    dot_ssh = dot_ssh / ".ssh"
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    (dot_ssh / "authorized_keys").write_text(pubkey)
    os.chmod(dot_ssh / "authorized_keys", 0o600)
    # Shared package pool: hard links cost nothing and apt skips downloading what is there.
    archives = _mkdirs_like(rootfs, upper, "var/cache/apt/archives")
    pool = STATE_ROOT / "apt-archives"
    if pool.is_dir():
        for deb in pool.glob("*.deb"):
            with contextlib.suppress(FileExistsError):
                os.link(deb, archives / deb.name)
    if not _mounted(root):
        _sh(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={rootfs},upperdir={upper},workdir={work}",
            str(root),
        )


def _host_cgroups(lab: Lab, host: str) -> list[Path]:
    """Per-host cgroup dirs below ours: systemd's own hierarchies (named v1 ``name=systemd`` and
    cgroup2) plus the v1 memory controller, which also gives the host's memory use."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            fstype, opts = fields[fields.index("-") + 1], fields[-1].split(",")
            if fstype == "cgroup2":
                mounts.setdefault("", Path(fields[4]))
            elif fstype == "cgroup":
                for key in ("name=systemd", "memory"):
                    if key in opts:
                        mounts.setdefault(key, Path(fields[4]))
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for key in controllers.split(",") if controllers else [""]:
            if key in mounts:
                dirs.append(mounts[key] / path.lstrip("/") / "llmops-lab" / lab.machine(host))
    return dirs


def _recorded_cgroups(lab: Lab, host: str) -> list[Path]:
    """The cgroups the host was booted in (recorded: they depend on who ran `lab up`)."""
    try:
        return [Path(p) for p in (lab.host_dir(host) / "cgroups").read_text().split()]
    except OSError:
        return _host_cgroups(lab, host)


def _remove_cgroups(lab: Lab, host: str) -> None:
    for top in _recorded_cgroups(lab, host):
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        with contextlib.suppress(OSError):
            os.rmdir(top.parent)  # llmops-lab/, once no host uses it


def _cgroup_memory_mb(lab: Lab, host: str) -> float | None:
    for d in _recorded_cgroups(lab, host):
        usage = d / "memory.usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            stat = dict(ln.split() for ln in (d / "memory.stat").read_text().splitlines())
            # Like `free`: what the host uses without the page cache it could give back.
            return (int(usage.read_text()) - int(stat.get("total_inactive_file", 0))) / 2**20
    return None


def _boot_host(lab: Lab, host: Host) -> None:
    hd = lab.host_dir(host.name)
    argv = [
        "bash", "-c", _SUPERVISOR, "llmops-lab-supervisor",
        "systemd-nspawn",
        "-D", str(hd / "root"),
        "--register=no",
        "--keep-unit",
        "--boot",
        "-M", lab.machine(host.name),
        f"--hostname={host.name}",
        f"--network-namespace-path=/run/netns/{lab.netns(host.name)}",
        # the host's own netns: roles/common loads its nftables firewall there
        "--capability=CAP_NET_ADMIN",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]  # fmt: skip
    cgroups = " ".join(map(str, _host_cgroups(lab, host.name)))
    (hd / "cgroups").write_text(cgroups + "\n")
    env = {**os.environ, "LLMOPS_LAB_CGROUPS": cgroups}
    with open(hd / "console.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
        )  # fmt: skip
    (hd / "pid").write_text(f"{proc.pid}\n")
    # Until the child has exec'd bash its cmdline is ours, and _supervisor_pid would not know it.
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        if _supervisor_pid(lab, host.name) is not None:
            break
        time.sleep(0.01)


def _console_tail(lab: Lab, host: str, lines: int = 15) -> str:
    try:
        text = (lab.host_dir(host) / "console.log").read_text(errors="replace")
    except OSError:
        return "(no console log)"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(lab: Lab, host: str, timeout: float = BOOT_TIMEOUT_S) -> float:
    """Wait until SSH answers and systemd reports ``running``; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    last = ""
    retried = False
    while time.monotonic() < deadline:
        if _supervisor_pid(lab, host) is None:
            raise LabError(
                f"{host}: systemd-nspawn exited while booting; console "
                f"({lab.host_dir(host) / 'console.log'}):\n{_console_tail(lab, host)}"
            )
        left = max(1.0, deadline - time.monotonic())
        try:
            proc = lab.run(
                host, f"timeout {int(left)} systemctl is-system-running --wait", check=False,
                timeout=left + 5,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            break
        state = proc.stdout.strip()
        if state == "running":
            return time.monotonic() - started
        if state == "degraded" and not retried:
            # On a loaded machine a boot unit (systemd-user-sessions, say) can time out once;
            # start the failed units again before calling the host broken.
            retried = True
            lab.run(
                host,
                "systemctl --failed --no-legend --plain | awk '{print $1}' | "
                'xargs -r sh -c \'systemctl reset-failed "$@"; systemctl start "$@"\' _',
                check=False,
                timeout=max(5.0, deadline - time.monotonic()),
            )
            continue
        if state in ("degraded", "maintenance", "stopping"):
            failed = lab.run(host, "systemctl --failed --no-legend --plain", check=False).stdout
            units = " ".join(f"-u {line.split()[0]}" for line in failed.splitlines() if line)
            journal = lab.run(host, f"journalctl -b --no-pager -n 30 {units}", check=False).stdout
            raise LabError(
                f"{host}: systemd reports {state!r}; failed units:\n{failed.strip()}\n"
                f"{journal.strip()}\n"
                f"see `llmops-provision lab ssh --name {lab.name} {host} journalctl -b`"
            )
        last = (proc.stderr or state).strip()
        time.sleep(0.3)
    raise LabError(
        f"{host}: not ready after {timeout:.0f}s (last: {last or 'no answer'}); console:\n"
        f"{_console_tail(lab, host)}"
    )


# --------------------------------------------------------------------------- teardown


def _stop_host(lab: Lab, host: str, timeout: float = STOP_TIMEOUT_S) -> None:
    """Halt the host (SIGTERM to nspawn = clean poweroff), then make sure nothing is left."""
    init = _container_init(lab, host)
    sup = _supervisor_pid(lab, host)
    if sup is not None:
        _kill(sup, signal.SIGTERM)
    elif init is not None:
        # No nspawn (killed): the orphaned systemd halts on SIGRTMIN+4 like on poweroff.
        _kill(init, signal.SIGRTMIN + 4)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (init is None or not _pid_alive(init)) and not _nspawn_pids(lab, host):
            break
        time.sleep(0.1)
    # Whatever is still there is killed: killing a PID namespace's init kills the namespace.
    for pid in [*(p for p in [init] if p is not None), *_nspawn_pids(lab, host)]:
        _kill(pid, signal.SIGKILL)
    init = _container_init(lab, host)
    if init is not None:
        _kill(init, signal.SIGKILL)
    # The host's cgroups catch what the netns cannot (e.g. a host whose netns is already gone).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = _cgroup_pids(lab, host) + _nspawn_pids(lab, host)
        if not left and _container_init(lab, host) is None:
            break
        for pid in left:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _cgroup_pids(lab: Lab, host: str) -> list[int]:
    pids: set[int] = set()
    for top in _recorded_cgroups(lab, host):
        for dirpath, _dirs, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError, ValueError):
                    text = Path(dirpath, "cgroup.procs").read_text()
                    pids.update(int(p) for p in text.split())
    pids.discard(os.getpid())
    return sorted(pids)


def _harvest_debs(upper: Path) -> None:
    archives = upper / "var/cache/apt/archives"
    if not archives.is_dir():
        return
    pool = STATE_ROOT / "apt-archives"
    pool.mkdir(parents=True, exist_ok=True)
    for deb in archives.glob("*.deb"):
        with contextlib.suppress(FileExistsError, OSError):
            os.link(deb, pool / deb.name)


def _teardown(lab: Lab, hosts: Sequence[str]) -> None:
    """Remove every trace of the lab: processes, mounts, netns, veths, bridge, NAT, state."""
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        list(pool.map(lambda h: _stop_host(lab, h), hosts))
    for h in hosts:
        root = lab.host_dir(h) / "root"
        for _ in range(50):
            if not _mounted(root):
                break
            if _sh("umount", str(root), check=False).returncode != 0:
                time.sleep(0.1)
        if _mounted(root):
            _sh("umount", "--lazy", str(root), check=False)
        if _netns_exists(lab.netns(h)):
            _sh("ip", "netns", "delete", lab.netns(h), check=False)
        with contextlib.suppress(OSError):
            os.rmdir(f"/run/systemd/nspawn/propagate/{lab.machine(h)}")
        _remove_cgroups(lab, h)
        _harvest_debs(lab.host_dir(h) / "upper")
    # Host ends of veths vanish with their namespace; a crashed run may have left some behind.
    for link in os.listdir("/sys/class/net"):
        if link.startswith(f"llv{lab.index}h"):
            _sh("ip", "link", "delete", link, check=False)
    if _link_exists(lab.bridge):
        _sh("ip", "link", "delete", lab.bridge, check=False)
    _remove_iptables(lab.name)
    hosts_root = lab.state_dir / "hosts"
    if hosts_root.exists():
        for hd in hosts_root.iterdir():
            if _mounted(hd / "root"):
                raise LabError(f"{hd / 'root'} is still mounted; unmount it and run lab down again")
    shutil.rmtree(lab.state_dir, ignore_errors=True)


def _stale_hosts(lab: Lab) -> list[str]:
    """Host names with any leftover (state dir, netns, mount) under this lab."""
    names = {h.name for h in lab.hosts}
    hosts_root = lab.state_dir / "hosts"
    if hosts_root.is_dir():
        names |= {d.name for d in hosts_root.iterdir() if d.is_dir()}
    prefix = f"llmops-{lab.name}."
    for ns in _listdir("/run/netns"):
        if ns.startswith(prefix):
            names.add(ns[len(prefix) :])
    return sorted(names)


# --------------------------------------------------------------------------- public API


def up(
    name: str = DEFAULT_NAME,
    hosts: Sequence[str] | None = None,
    inventory: Path | str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    fresh: bool = False,
    progress: Progress = _stderr,
    timeout: float = BOOT_TIMEOUT_S,
) -> Lab:
    """Start lab ``name`` with ``hosts`` (names; ``groups`` maps group -> host names) or the
    hosts of ``inventory`` and return it.

    A lab already running with the same hosts is reused unless ``fresh``; a lab left behind by
    a crash (or with other hosts) is removed first.
    """
    _check_name("lab", name)
    preflight()
    _check_space(HOST_MIN_FREE_MB, f"lab {name!r}")
    inv = Path(inventory) if inventory is not None else None
    started = time.monotonic()
    rootfs = ensure_base(progress)
    with _flock(STATE_ROOT / "labs" / f".{name}.lock"):
        with _flock(STATE_ROOT / "network.lock"):
            lab = _plan(name, hosts, inv, groups)
            lab.base = base_recipe_hash()
            previous = load(name) if (lab_dir(name) / "lab.json").exists() else None
            if previous is not None and not fresh and _reusable(previous, lab):
                progress(f"lab {name}: already running, reusing it")
                return previous
            if previous is not None or lab_dir(name).exists():
                old = previous or lab
                progress(f"lab {name}: removing what an earlier run left behind")
                _teardown(old, _stale_hosts(old))
                lab = _plan(name, hosts, inv, groups)
                lab.base = base_recipe_hash()
            _write_state(lab)
            try:
                _setup_network(lab)
            except BaseException:
                _teardown(lab, [h.name for h in lab.hosts])
                raise
        try:
            key = lab.ssh_key
            key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not key.exists():
                _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"llmops-lab-{name}",
                    "-f", str(key))  # fmt: skip
            pubkey = key.with_suffix(".pub").read_text()
            _write_inventory(lab)
            for h in lab.hosts:
                _prepare_host(lab, h, rootfs, pubkey)
                _boot_host(lab, h)
            progress(f"lab {name}: booting {len(lab.hosts)} host(s) on {lab.subnet}")
            errors: list[str] = []
            lock = threading.Lock()

            def ready(h: Host) -> None:
                try:
                    secs = wait_ready(lab, h.name, timeout)
                    progress(f"  {h.name} ({h.address}) ready after {secs:.1f}s")
                except LabError as e:
                    with lock:
                        errors.append(str(e))

            with ThreadPoolExecutor(max_workers=len(lab.hosts)) as pool:
                list(pool.map(ready, lab.hosts))
            if errors:
                raise LabError("\n".join(errors))
        except BaseException:
            progress(f"lab {name}: start failed, removing it")
            with _flock(STATE_ROOT / "network.lock"):
                _teardown(lab, _stale_hosts(lab))
            raise
    progress(f"lab {name}: {len(lab.hosts)} host(s) up in {time.monotonic() - started:.1f}s")
    return lab


def _reusable(previous: Lab, wanted: Lab) -> bool:
    if [(h.name, h.address) for h in previous.hosts] != [(h.name, h.address) for h in wanted.hosts]:
        return False
    if previous.base != wanted.base or previous.groups != wanted.groups:
        return False
    for h in previous.hosts:
        if _supervisor_pid(previous, h.name) is None or _container_init(previous, h.name) is None:
            return False
        if (
            previous.run(
                h.name, "systemctl is-system-running", check=False, timeout=15
            ).stdout.strip()
            != "running"
        ):
            return False
    return True


def down(name: str = DEFAULT_NAME) -> bool:
    """Stop lab ``name`` and remove everything it made; False if there was nothing to remove."""
    _check_name("lab", name)
    preflight(("ip", "iptables", "umount"))
    lab_path = lab_dir(name)
    with _flock(STATE_ROOT / "labs" / f".{name}.lock"):
        try:
            lab = load(name)
        except LabError:
            if not lab_path.exists() and not any(
                ns.startswith(f"llmops-{name}.") for ns in _listdir("/run/netns")
            ):
                return False
            lab = Lab(name=name, index=0 if name == DEFAULT_NAME else -1, hosts=[])
        with _flock(STATE_ROOT / "network.lock"):
            _teardown(lab, _stale_hosts(lab))
    return True


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def status(name: str = DEFAULT_NAME) -> list[HostStatus]:
    """State of every host of lab ``name``: running, degraded, starting, stopped."""
    lab = load(name)

    def one(h: Host) -> HostStatus:
        init = _container_init(lab, h.name)
        if init is None or _supervisor_pid(lab, h.name) is None:
            return HostStatus(h.name, h.address, "stopped", None)
        try:
            out = lab.run(h.name, "systemctl is-system-running", check=False, timeout=10)
            state = out.stdout.strip() or "no ssh"
        except subprocess.TimeoutExpired:
            state = "no answer"
        return HostStatus(
            h.name, h.address, state, _memory_mb(init), _cgroup_memory_mb(lab, h.name)
        )

    with ThreadPoolExecutor(max_workers=max(1, len(lab.hosts))) as pool:
        return list(pool.map(one, lab.hosts))


def host_memory_mb(name: str, host: str) -> float | None:
    """PSS of all processes of a running host in MB (None when it is not running)."""
    lab = load(name)
    init = _container_init(lab, host)
    return None if init is None else _memory_mb(init)


def reboot(name: str, host: str, timeout: float = BOOT_TIMEOUT_S) -> float:
    """Reboot ``host``'s systemd for real and wait until it is running again; return seconds."""
    lab = load(name)
    lab.host(host)
    old_init = _container_init(lab, host)
    if old_init is None or _supervisor_pid(lab, host) is None:
        raise LabError(
            f"{host} is not running; start the lab with `llmops-provision lab up --name {name}`"
        )
    started = time.monotonic()
    # The ssh session dies with the host, so its exit code means nothing.
    with contextlib.suppress(subprocess.TimeoutExpired):
        lab.run(host, "systemctl reboot", check=False, timeout=20)
    deadline = started + timeout
    while time.monotonic() < deadline:
        init = _container_init(lab, host)
        if init is not None and init != old_init:
            break
        if _supervisor_pid(lab, host) is None:
            raise LabError(
                f"{host}: nspawn did not come back after the reboot:\n{_console_tail(lab, host)}"
            )
        time.sleep(0.1)
    else:
        raise LabError(
            f"{host}: did not restart within {timeout:.0f}s:\n{_console_tail(lab, host)}"
        )
    wait_ready(lab, host, max(1.0, deadline - time.monotonic()))
    return time.monotonic() - started


def ssh_exec(name: str, host: str, command: Sequence[str]) -> int:
    """Replace this process by ssh to ``host`` (interactive shell when ``command`` is empty)."""
    lab = load(name)
    argv = lab.ssh_argv(host, *command, tty=not command and sys.stdin.isatty())
    os.execvp(argv[0], argv)
    return 127  # pragma: no cover  (execvp does not return)


# --------------------------------------------------------------------------- command line


def _table(lab: Lab, rows: Sequence[HostStatus]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lab {lab.name}  ({lab.subnet}, bridge {lab.bridge})")
    for col in ("host", "address", "groups", "state", "memory (PSS / cgroup)"):
        table.add_column(col)
    groups = {h.name: ",".join(h.groups) for h in lab.hosts}
    for r in rows:
        mem = f"{r.memory_mb:.0f} MB" if r.memory_mb is not None else "-"
        if r.cgroup_mb is not None:
            mem += f" / {r.cgroup_mb:.0f} MB"
        style = "green" if r.state == "running" else "red"
        table.add_row(r.name, r.address, groups.get(r.name, ""), f"[{style}]{r.state}[/]", mem)
    Console().print(table)
    print(f"ssh key: {lab.ssh_key}\ninventory: {lab.inventory_path}")


def _cli(func: Callable[[Any], int]) -> Callable[[Any], int]:
    def wrapper(args: Any) -> int:
        try:
            return func(args)
        except LabError as e:
            if getattr(args, "debug", False):
                raise
            print(f"llmops-provision lab: error: {e}", file=sys.stderr)
            return 1

    return wrapper


@_cli
def cli_up(args: Any) -> int:
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()] if args.hosts else None
    name = args.name
    if name is None:
        name = DEFAULT_NAME
        if args.inventory and not hosts:
            name = _read_inventory(Path(args.inventory))[0] or DEFAULT_NAME
    lab = up(name, hosts=hosts, inventory=args.inventory, fresh=args.fresh)
    if args.json:
        print(json.dumps(lab.to_json(), indent=2))
    else:
        _table(lab, status(name))
    return 0


@_cli
def cli_down(args: Any) -> int:
    names = [lab.name for lab in labs()] if args.all else [args.name]
    for name in names:
        if down(name):
            print(f"lab {name}: down, nothing left behind")
        else:
            print(f"lab {name}: nothing to take down")
    return 0


@_cli
def cli_status(args: Any) -> int:
    names = [args.name] if args.name else [lab.name for lab in labs()]
    if not names:
        print("no labs on this machine (start one with `llmops-provision lab up`)")
        return 0
    for name in names:
        lab = load(name)
        rows = status(name)
        if args.json:
            data = lab.to_json()
            data["status"] = {
                r.name: {"state": r.state, "memory_mb": r.memory_mb, "cgroup_mb": r.cgroup_mb}
                for r in rows
            }
            print(json.dumps(data, indent=2))
        else:
            _table(lab, rows)
    return 0


@_cli
def cli_ssh(args: Any) -> int:
    load(args.name).host(args.host)
    return ssh_exec(args.name, args.host, args.cmd)


@_cli
def cli_reboot(args: Any) -> int:
    secs = reboot(args.name, args.host)
    print(f"{args.host}: rebooted, running again after {secs:.1f}s")
    return 0


__all__ = [
    "DEFAULT_NAME",
    "STATE_ROOT",
    "Host",
    "HostStatus",
    "Lab",
    "LabError",
    "base_recipe_hash",
    "down",
    "ensure_base",
    "host_memory_mb",
    "labs",
    "load",
    "reboot",
    "ssh_exec",
    "status",
    "up",
    "wait_ready",
]
