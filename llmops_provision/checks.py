"""Health and functional probes per server type: what ``llmops-provision test`` runs.

Every probe is a real network check from the controller to a host's internal address: the health
probes ``server_types`` declares (HTTP status, TCP port, file) plus one functional probe per type
(an OCR request with a known image, a web login round trip, ``SELECT 1`` on PostgreSQL, every
Prometheus target up, the API through the load balancer). The lab firewall admits only some
sources per port; in ``auto`` mode a port the controller may not reach directly is reached
through an SSH tunnel to the host (its own loopback path), so the result still says whether the
service answers on the host. Each probe returns a :class:`CheckResult`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import re
import secrets as pysecrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmops_provision.errors import InvalidInput
from llmops_provision.schemas import project_root
from llmops_provision.server_types import REGISTRY, Probe

# The known image of the OCR probe: the same text the inference_api role verifies after deploy.
# No l/I/1 in the text: in many sans fonts those glyphs are identical, even to a person.
OCR_TEXT = "Provisioned on Debian twelve"
OCR_IMAGE_FALLBACK = Path("tests") / "data" / "ocr-check.png"
ADMIN_USER = "admin"
VIA_MODES = ("auto", "direct", "ssh")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one probe of one service on one host."""

    server_type: str
    host: str
    check: str
    ok: bool
    detail: str
    elapsed_ms: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def format_line(result: CheckResult) -> str:
    """One line for people: verdict, type, host, check, time, detail."""
    verdict = "ok" if result.ok else "FAIL"
    return (
        f"{verdict:<4} {result.server_type:<10} {result.host:<16} {result.check:<30} "
        f"{result.elapsed_ms:>7.0f} ms  {result.detail}"
    )


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when every check passed (and there was at least one), else 1."""
    return 0 if results and all(r.ok for r in results) else 1


# --- reaching hosts -------------------------------------------------------------------------


@dataclass(frozen=True)
class HostAccess:
    """How the controller reaches one inventory host: its address and, if any, SSH settings."""

    name: str
    address: str
    local: bool = False
    ssh_user: str = ""
    ssh_port: int = 22
    ssh_key: str = ""
    ssh_args: tuple[str, ...] = ()

    @property
    def has_ssh(self) -> bool:
        return not self.local and shutil.which("ssh") is not None

    def ssh_argv(self, *extra: str) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(self.ssh_port)]
        if self.ssh_key:
            argv += ["-i", self.ssh_key]
        argv += list(self.ssh_args)
        argv += list(extra)
        argv.append(f"{self.ssh_user}@{self.address}" if self.ssh_user else self.address)
        return argv


def _plain(value: Any) -> str:
    """A var's value unless it is a Jinja template (which only Ansible can evaluate)."""
    text = "" if value is None else str(value)
    return "" if "{{" in text or "{%" in text else text


def host_access(inventory: Any, host: str) -> HostAccess:
    """Connection settings of ``host`` from its vars, its groups' vars and ``all.vars``."""
    merged: dict[str, Any] = dict(inventory.all_vars)
    for group in sorted(inventory.hosts[host].groups):
        if group in inventory.groups and group != "all":
            merged.update(inventory.groups[group].vars)
    merged.update(inventory.hosts[host].vars)
    address = _plain(merged.get("llmops_address")) or _plain(merged.get("ansible_host")) or host
    port = _plain(merged.get("ansible_port") or merged.get("ansible_ssh_port"))
    return HostAccess(
        name=host,
        address=address,
        local=_plain(merged.get("ansible_connection")) == "local",
        ssh_user=_plain(merged.get("ansible_user") or merged.get("ansible_ssh_user")),
        ssh_port=int(port) if port.isdigit() else 22,
        ssh_key=_plain(merged.get("ansible_ssh_private_key_file")),
        ssh_args=tuple(shlex.split(_plain(merged.get("ansible_ssh_common_args")))),
    )


@dataclass
class _Tunnel:
    process: subprocess.Popen[bytes]
    port: int


class Network:
    """Opens connections to host ports: directly, through SSH tunnels, or direct-then-SSH."""

    def __init__(self, via: str = "auto", timeout: float = 10.0) -> None:
        if via not in VIA_MODES:
            raise ValueError(f"via must be one of {', '.join(VIA_MODES)}")
        self.via = via
        self.timeout = timeout
        self._tunnels: dict[tuple[str, str, int], _Tunnel] = {}
        self._direct_error: dict[tuple[str, int], str | None] = {}
        self._ssh_broken: dict[str, str] = {}  # host -> why ssh failed (fail fast afterwards)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop every SSH tunnel this object started."""
        for tunnel in self._tunnels.values():
            tunnel.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                tunnel.process.wait(timeout=5)
            if tunnel.process.poll() is None:
                tunnel.process.kill()
                tunnel.process.wait()
        self._tunnels.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _direct_reachable(self, address: str, port: int) -> bool:
        key = (address, port)
        if key not in self._direct_error:
            try:
                with socket.create_connection((address, port), timeout=min(3.0, self.timeout)):
                    self._direct_error[key] = None
            except OSError as exc:
                self._direct_error[key] = _describe_error(exc)
        return self._direct_error[key] is None

    def use_ssh(self, access: HostAccess, port: int) -> bool:
        """Whether connections to ``port`` of the host go through SSH."""
        if self.via == "direct" or not access.has_ssh:
            return False
        if self.via == "ssh":
            return True
        return not self._direct_reachable(access.address, port)

    def endpoint(self, access: HostAccess, port: int, target: str = "") -> tuple[str, int, str]:
        """(host, port, note) to connect to for ``port`` of the host; ``target`` is where the
        tunnel leads on the host (default: the host's own address)."""
        if not self.use_ssh(access, port):
            return access.address, port, ""
        return self.endpoint_via_ssh(access, port, target)

    def endpoint_via_ssh(
        self, access: HostAccess, port: int, target: str = ""
    ) -> tuple[str, int, str]:
        """Like :meth:`endpoint`, always through an SSH tunnel."""
        target = target or access.address
        with self._lock:
            if access.name in self._ssh_broken:
                raise OSError(self._unreachable(access, port, self._ssh_broken[access.name]))
            try:
                local = self._tunnel(access, target, port)
            except OSError as exc:
                self._ssh_broken[access.name] = str(exc)
                raise OSError(self._unreachable(access, port, str(exc))) from None
        return "127.0.0.1", local, f" (through ssh to {access.name})"

    def _unreachable(self, access: HostAccess, port: int, ssh_error: str) -> str:
        direct = self._direct_error.get((access.address, port))
        if direct is None:
            return ssh_error
        return f"port {port} not reachable directly ({direct}), and {ssh_error}"

    def _tunnel(self, access: HostAccess, target: str, port: int) -> int:
        key = (access.name, target, port)
        tunnel = self._tunnels.get(key)
        if tunnel is not None and tunnel.process.poll() is None:
            return tunnel.port
        local = _free_port()
        shown = f"[{target}]" if ":" in target else target
        argv = access.ssh_argv(
            "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:{shown}:{port}"
        )
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._tunnels[key] = _Tunnel(proc, local)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise OSError(f"ssh tunnel to {access.name} failed: {err or proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=1):
                    return local
            except OSError:
                time.sleep(0.05)
        raise OSError(f"ssh tunnel to {access.name} did not open within {self.timeout:.0f} s")

    def run(self, access: HostAccess, command: str) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host (locally for a local host) with the timeout."""
        argv = ["sh", "-c", command] if access.local else [*access.ssh_argv(), command]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=self.timeout + 10, check=False
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS to a connect address (maybe a tunnel) checking the certificate against ``sni``."""

    def __init__(
        self, host: str, port: int, *, sni: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._sni = sni
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._sni)


@dataclass
class Http:
    """A tiny HTTP client on top of :class:`Network` (no redirects followed, manual cookies)."""

    net: Network
    access: HostAccess
    port: int
    scheme: str = "http"
    ca_file: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def host_header(self) -> str:
        address = self.access.address
        shown = f"[{address}]" if ":" in address else address
        default = 443 if self.scheme == "https" else 80
        return shown if self.port == default else f"{shown}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Reply, str]:
        """Send one request; returns the reply and a note (how the host was reached)."""
        host, port, note = self.net.endpoint(self.access, self.port)
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.ca_file)
            conn = _TLSConnection(
                host, port, sni=self.access.address, context=ctx, timeout=self.net.timeout
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.net.timeout)
        all_headers = {"Host": self.host_header, "User-Agent": "llmops-provision-test"}
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        all_headers.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
            reply = Reply(
                status=resp.status,
                headers={k.lower(): v for k, v in resp.getheaders()},
                set_cookies=resp.headers.get_all("Set-Cookie") or [],
                body=data,
            )
        except (OSError, http.client.HTTPException) as exc:
            if not note:
                raise
            raise OSError(_describe_error(exc) + note) from exc
        finally:
            conn.close()
        # The web app's cookies are Secure; the probe keeps them itself so that a plain-HTTP
        # round trip to a backend (as the load balancer makes it) works too.
        for raw in reply.set_cookies:
            name, _, rest = raw.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return reply, note


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (service down or port closed by the firewall)"
    if isinstance(exc, OSError) and exc.errno == errno.EHOSTUNREACH:
        return "no route to host (host down, or its firewall refuses this machine)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
        return "connection closed without a reply (service down?)"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _snippet(reply: Reply, limit: int = 160) -> str:
    text = " ".join(reply.text().split())
    return text[:limit] + ("..." if len(text) > limit else "")


# --- the probes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One server type on one host, with what its probes need."""

    server_type: str
    access: HostAccess
    config: dict[str, Any]
    secrets_dir: Path

    def secret(self, name: str) -> str:
        """A controller-side credential, or OSError saying where it should be."""
        path = self.secrets_dir / name
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise OSError(f"credential {path} is missing; run `llmops-provision apply`") from None


ProbeFn = Callable[[Service, Network], tuple[bool, str]]


def _timed(service: Service, name: str, net: Network, fn: ProbeFn) -> CheckResult:
    started = time.perf_counter()
    try:
        ok, detail = fn(service, net)
    except (OSError, http.client.HTTPException, ValueError, subprocess.SubprocessError) as exc:
        ok, detail = False, _describe_error(exc)
    except Exception as exc:  # a probe must never take the whole run down
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return CheckResult(
        server_type=service.server_type,
        host=service.access.name,
        check=name,
        ok=ok,
        detail=" ".join(detail.split()),  # one line per check, whatever a library said
        elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def _ca_file(service: Service, probe: Probe) -> str | None:
    """The CA the lb's certificate is checked against (the lab CA kept with the secrets)."""
    tls = service.config.get("tls") if service.server_type == "lb" else None
    if isinstance(tls, Mapping) and tls.get("mode") == "files":
        return None  # a certificate from elsewhere: the system's trust store
    path = service.secrets_dir / "tls-ca.crt"
    if not path.is_file():
        raise OSError(f"CA file {path} is missing; run `llmops-provision apply` to create it")
    return str(path)


def _http_probe(probe: Probe) -> ProbeFn:
    def run(service: Service, net: Network) -> tuple[bool, str]:
        ca = _ca_file(service, probe) if probe.scheme == "https" else None
        client = Http(net, service.access, probe.port, scheme=probe.scheme, ca_file=ca)
        reply, note = client.request("GET", probe.path)
        detail = f"HTTP {reply.status}"
        if reply.status not in probe.expect:
            want = " or ".join(str(c) for c in probe.expect)
            return False, f"{detail} (expected {want}): {_snippet(reply)}{note}"
        if reply.status in (301, 302, 307, 308) and probe.scheme == "http":
            location = reply.headers.get("location", "")
            detail += f" -> {location}"
            if service.server_type == "lb" and not location.startswith("https://"):
                return False, f"{detail}: the redirect does not lead to https{note}"
        return True, detail + note

    return run


def _tcp_probe(probe: Probe) -> ProbeFn:
    def run(service: Service, net: Network) -> tuple[bool, str]:
        access = service.access
        if net.use_ssh(access, probe.port):
            # Through a tunnel the local end always accepts; ask the host itself instead.
            target = access.address
            proc = net.run(
                access,
                f"timeout {int(net.timeout)} bash -c 'exec 3<>/dev/tcp/{target}/{probe.port}'",
            )
            if proc.returncode == 255:
                return False, f"ssh to {access.name} failed: {proc.stderr.strip()}"
            if proc.returncode != 0:
                return False, f"port {probe.port} closed on {target} (checked on the host)"
            return True, f"port {probe.port} open (checked on {access.name} through ssh)"
        with socket.create_connection((access.address, probe.port), timeout=net.timeout):
            return True, f"port {probe.port} open"

    return run


def _file_probe(probe: Probe) -> ProbeFn:
    def run(service: Service, net: Network) -> tuple[bool, str]:
        access = service.access
        if not access.local and not access.has_ssh:
            return False, "cannot check a file on the host: no ssh client on the controller"
        proc = net.run(access, f"test -f {shlex.quote(probe.path)}")
        if proc.returncode == 255 and not access.local:
            return False, f"ssh to {access.name} failed: {proc.stderr.strip()}"
        if proc.returncode != 0:
            return False, f"{probe.path} missing"
        return True, f"{probe.path} present"

    return run


def probe_function(probe: Probe) -> ProbeFn:
    """The function that runs a health probe of ``server_types``."""
    kinds: dict[str, Callable[[Probe], ProbeFn]] = {
        "http": _http_probe,
        "tcp": _tcp_probe,
        "file": _file_probe,
    }
    if probe.kind not in kinds:
        raise ValueError(f"unknown probe kind {probe.kind!r} of {probe.name!r}")
    return kinds[probe.kind](probe)


def ocr_image() -> tuple[bytes, str]:
    """PNG bytes of the known line and its text: rendered by llmops_ocr if it is installed,
    else the PNG shipped in tests/data."""
    try:
        import io

        from llmops_ocr.synth import render_line

        buf = io.BytesIO()
        render_line(OCR_TEXT, seed=0, augment=False).save(buf, format="PNG")
        return buf.getvalue(), OCR_TEXT
    except (ImportError, OSError, ValueError, IndexError):  # no llmops_ocr, or no usable font
        return (project_root() / OCR_IMAGE_FALLBACK).read_bytes(), OCR_TEXT


def multipart(field_name: str, filename: str, data: bytes, ctype: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field; returns (body, content type)."""
    boundary = "llmops" + pysecrets.token_hex(12)
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name={json.dumps(field_name)}; "
        f"filename={json.dumps(filename)}\r\nContent-Type: {ctype}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def probe_api_ocr(service: Service, net: Network) -> tuple[bool, str]:
    """POST /v1/ocr?mode=line with the known image and the service token; compare the text."""
    token = service.secret("api-token")
    image, expected = ocr_image()
    body, ctype = multipart("file", "ocr-check.png", image, "image/png")
    client = Http(net, service.access, int(service.config["port"]))
    reply, note = client.request(
        "POST",
        "/v1/ocr?mode=line",
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
    )
    if reply.status != 200:
        return False, f"HTTP {reply.status}: {_snippet(reply)}{note}"
    data = reply.json()
    text = str(data.get("text", "")).strip()
    model = data.get("model") or {}
    which = f"{model.get('name', '?')}/{model.get('version', '?')}"
    if text != expected:
        return False, f"{which} read {text!r}, expected {expected!r}{note}"
    return True, f"{which} read {text!r}{note}"


def probe_web_login(service: Service, net: Network) -> tuple[bool, str]:
    """GET /login, POST the admin's credentials with the CSRF token, then GET / as that user."""
    password = service.secret("admin-password")
    client = Http(net, service.access, int(service.config["port"]))
    # As the load balancer forwards it, so the app's Secure cookies and redirects are right.
    fwd = {"X-Forwarded-Proto": "https"}
    page, note = client.request("GET", "/login", headers=fwd)
    if page.status != 200:
        return False, f"GET /login: HTTP {page.status}: {_snippet(page)}{note}"
    match = CSRF_RE.search(page.text())
    if not match:
        return False, f"GET /login: the page has no csrf_token field{note}"
    form = urllib.parse.urlencode(
        {"username": ADMIN_USER, "password": password, "csrf_token": match.group(1)}
    ).encode()
    reply, _ = client.request(
        "POST",
        "/login",
        body=form,
        headers={**fwd, "Content-Type": "application/x-www-form-urlencoded"},
    )
    if reply.status not in (302, 303):
        why = "wrong admin password?" if reply.status == 401 else _snippet(reply)
        return False, f"POST /login: HTTP {reply.status}: {why}{note}"
    location = reply.headers.get("location", "")
    if "/login" in urllib.parse.urlsplit(location).path:
        return False, f"POST /login redirected back to {location}{note}"
    home, _ = client.request("GET", "/", headers=fwd)
    if home.status in (302, 303) and "/login" in home.headers.get("location", ""):
        return False, f"after login GET / sends to the login page again{note}"
    _logout(client, fwd)
    return True, f"logged in as {ADMIN_USER} (-> {urllib.parse.urlsplit(location).path}){note}"


def _logout(client: Http, fwd: Mapping[str, str]) -> None:
    """End the probe's session so probes do not pile up sessions (best effort)."""
    with contextlib.suppress(OSError, http.client.HTTPException):
        page, _ = client.request("GET", "/upload", headers=fwd)
        match = CSRF_RE.search(page.text())
        if match:
            form = urllib.parse.urlencode({"csrf_token": match.group(1)}).encode()
            client.request(
                "POST",
                "/logout",
                body=form,
                headers={**fwd, "Content-Type": "application/x-www-form-urlencoded"},
            )


def probe_db_select(service: Service, net: Network) -> tuple[bool, str]:
    """Connect as the application role with the db-password and run ``SELECT 1``."""
    import psycopg

    cfg = service.config
    password = service.secret("db-password")
    name = str(cfg.get("name", "llmops"))
    user = str(cfg.get("user", "llmops"))
    port = int(cfg["port"])
    host, cport, note = _db_endpoint(service, net, port)
    with (
        psycopg.connect(
            host=host,
            port=cport,
            dbname=name,
            user=user,
            password=password,
            connect_timeout=max(1, int(net.timeout)),
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT 1")
        row = cur.fetchone()
    if row is None or row[0] != 1:
        return False, f"SELECT 1 returned {row!r}{note}"
    return True, f"SELECT 1 as {user}@{name}{note}"


def _db_endpoint(service: Service, net: Network, port: int) -> tuple[str, int, str]:
    """PostgreSQL admits only the web/api hosts (pg_hba) and localhost, never the controller:
    unless told ``direct``, connect through SSH from the db host's loopback."""
    access = service.access
    if net.via == "direct" or not access.has_ssh:
        return access.address, port, ""
    return net.endpoint_via_ssh(access, port, target="127.0.0.1")


def probe_prometheus_targets(service: Service, net: Network) -> tuple[bool, str]:
    """Every active Prometheus target is up."""
    client = Http(net, service.access, int(service.config["port"]))
    reply, note = client.request("GET", "/api/v1/targets?state=active")
    if reply.status != 200:
        return False, f"HTTP {reply.status}: {_snippet(reply)}{note}"
    targets = reply.json().get("data", {}).get("activeTargets", [])
    if not targets:
        return False, f"no active targets{note}"
    bad = [t for t in targets if t.get("health") != "up"]
    if bad:
        shown = ", ".join(
            f"{t.get('labels', {}).get('job', '?')}/{t.get('labels', {}).get('instance', '?')} "
            f"{t.get('health', '?')}" + (f" ({t['lastError']})" if t.get("lastError") else "")
            for t in bad[:5]
        )
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return False, f"{len(bad)} of {len(targets)} targets not up: {shown}{more}{note}"
    return True, f"{len(targets)} targets up{note}"


def probe_lb_api(service: Service, net: Network) -> tuple[bool, str]:
    """GET https://<lb>/v1/models with the service token: the lb reaches an api host."""
    token = service.secret("api-token")
    tls = service.config["tls"]
    probe = Probe("lb api", "http", port=int(tls["port"]), path="/v1/models", scheme="https")
    client = Http(net, service.access, probe.port, scheme="https", ca_file=_ca_file(service, probe))
    reply, note = client.request("GET", probe.path, headers={"Authorization": f"Bearer {token}"})
    if reply.status != 200:
        return False, f"HTTP {reply.status}: {_snippet(reply)}{note}"
    default = reply.json().get("default", {})
    return True, f"api answers through the lb (default {default.get('version', '?')}){note}"


def functional_probes(server_type: str, config: Mapping[str, Any]) -> list[tuple[str, ProbeFn]]:
    """The functional probes of a type (beyond its health probes), by name."""
    if server_type == "api":
        return [("api ocr request", probe_api_ocr)]
    if server_type == "web":
        return [("web login round trip", probe_web_login)]
    if server_type == "db" and config.get("engine") == "postgresql":
        return [("postgresql select 1", probe_db_select)]
    if server_type == "monitoring":
        return [("prometheus targets up", probe_prometheus_targets)]
    if server_type == "lb":
        return [("lb https api route", probe_lb_api)]
    return []


def run_service(service: Service, net: Network) -> list[CheckResult]:
    """Health probes first; the functional probes only make sense when the service answers,
    but they run anyway so each failure is named."""
    stype = REGISTRY[service.server_type]
    checks: list[tuple[str, ProbeFn]] = [
        (p.name, probe_function(p)) for p in stype.health_probes(service.config)
    ]
    checks += functional_probes(service.server_type, service.config)
    return [_timed(service, name, net, fn) for name, fn in checks]


# --- inventories ----------------------------------------------------------------------------


def services_of(
    inventory: Any,
    configs: Mapping[str, Mapping[str, Mapping[str, Any]]],
    secrets_dir: Path,
    server_types: Collection[str] = (),
) -> list[Service]:
    """Every (host, server type) of a validated inventory, in inventory order."""
    accesses = {h: host_access(inventory, h) for h in inventory.hosts}
    services: list[Service] = []
    for type_name in REGISTRY:
        if server_types and type_name not in server_types:
            continue
        for host in inventory.hosts_of(type_name):
            services.append(
                Service(
                    server_type=type_name,
                    access=accesses[host],
                    config=dict(configs[host][type_name]),
                    secrets_dir=secrets_dir,
                )
            )
    return services


def run_checks(
    services: Sequence[Service], via: str = "auto", timeout: float = 10.0, parallel: int = 6
) -> list[CheckResult]:
    """Run every service's probes (services in parallel); results in the services' order."""
    with Network(via=via, timeout=timeout) as net:
        if parallel <= 1 or len(services) <= 1:
            per_service = [run_service(s, net) for s in services]
        else:
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                per_service = list(pool.map(lambda s: run_service(s, net), services))
    return [r for results in per_service for r in results]


def cmd_test(args: argparse.Namespace) -> int:
    """``test INVENTORY [--server-type T] [--format json]``: one line per check; exit 1 on any
    failure, 2 when the inventory is invalid."""
    from llmops_provision.deploy import load_target, secrets_dir

    try:
        target = load_target(args.inventory)
    except InvalidInput as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"{len(exc.errors)} error(s) in the inventory; nothing was probed.", file=sys.stderr)
        return 2
    directory = Path(args.secrets_dir) if args.secrets_dir else secrets_dir(target.name)
    wanted = args.server_type or []
    services = services_of(target.inventory, target.configs, directory, wanted)
    if not services:
        print(
            f"error: {args.inventory}: no host runs server type {', '.join(wanted)}; "
            "add one to its group or pick another --server-type",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    results = run_checks(services, via=args.via, timeout=args.timeout)
    seconds = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    try:
        if args.format == "json":
            print(
                json.dumps(
                    {
                        "inventory": target.name,
                        "ok": not failed,
                        "seconds": round(seconds, 2),
                        "results": [r.to_json() for r in results],
                    },
                    indent=2,
                )
            )
        else:
            for result in results:
                print(format_line(result), flush=True)
            verdict = "all passed" if not failed else f"{len(failed)} FAILED"
            print(f"{len(results)} checks on {len(services)} services in {seconds:.1f}s: {verdict}")
    except BrokenPipeError:
        # the reader went away (`| head`): keep the exit status, write nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return exit_code(results)


def add_test_options(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``test`` (shared with the ``test_servers.py`` shim through the CLI)."""
    parser.add_argument("inventory", metavar="INVENTORY", help="Ansible YAML inventory")
    parser.add_argument(
        "--server-type",
        action="append",
        choices=tuple(REGISTRY),
        help="only the services of this type (repeatable)",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output for people or machines"
    )
    parser.add_argument(
        "--via",
        choices=VIA_MODES,
        default="auto",
        help="how to reach a host's ports: direct, through ssh, or auto (direct, else ssh when "
        "the firewall refuses the controller; default)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per connection (default 10)"
    )
    parser.add_argument(
        "--secrets-dir",
        metavar="DIR",
        help="controller-side credentials (default .llmops/secrets/<inventory-name>)",
    )
