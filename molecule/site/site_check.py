"""The platform as its users see it, from the controller only, through the load balancer over
HTTPS (TLS verified against the inventory's CA): log in to the web app, OCR the known line
through the web app and through the API, and every Prometheus target up (Prometheus is not
behind the lb: an operator reaches it on the monitoring host, port 9090, which the firewall
admits from the admin sources), and every host's journal readable on the monitoring host with
`llmops-provision logs` (the operator's way to them). One line per check; exit 1 if any failed.

    python molecule/site/site_check.py inventory/lab.yml
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from llmops_provision import checks, deploy

TEXT = re.compile(r'<pre id="ocr-text">(.*?)</pre>', re.S)


def secret(target: deploy.Target, name: str) -> str:
    return (deploy.secrets_dir(target.name) / name).read_text(encoding="utf-8").strip()


def csrf_of(page: httpx.Response) -> str:
    match = checks.CSRF_RE.search(page.text)
    if not match:
        raise AssertionError(f"GET {page.url}: HTTP {page.status_code}, no csrf_token field")
    return match.group(1)


def web_login_and_ocr(base: str, ca: str, target: deploy.Target) -> str:
    image, expected = checks.ocr_image()
    with httpx.Client(base_url=base, verify=ca, timeout=60) as web:
        form = {"username": "admin", "password": secret(target, "admin-password")}
        form["csrf_token"] = csrf_of(web.get("/login"))
        reply = web.post("/login", data=form)
        where = reply.headers.get("location", "")
        if reply.status_code not in (302, 303) or "/login" in where:
            raise AssertionError(f"POST /login: HTTP {reply.status_code}, location {where!r}")
        page = web.get("/upload")
        if page.status_code != 200:
            raise AssertionError(f"GET /upload after login: HTTP {page.status_code}")
        reply = web.post(
            "/upload",
            data={"csrf_token": csrf_of(page), "mode": "line"},
            files={"file": ("site-check.png", image, "image/png")},
        )
        result = reply.headers.get("location", "")
        if reply.status_code != 303 or "/results/" not in result:
            raise AssertionError(f"POST /upload: HTTP {reply.status_code}: {reply.text[:200]}")
        page = web.get(result)
        match = TEXT.search(page.text)
        shown = html.unescape(match.group(1)).strip() if match else None
        if shown != expected:
            raise AssertionError(f"the result page {result} shows {shown!r}, not {expected!r}")
        return f"logged in as admin, uploaded the known line, {result} shows {shown!r}"


def api_ocr(base: str, ca: str, target: deploy.Target) -> str:
    image, expected = checks.ocr_image()
    token = secret(target, "api-token")
    with httpx.Client(base_url=base, verify=ca, timeout=60) as api:
        unauth = api.post("/v1/ocr?mode=line", files={"file": ("x.png", image, "image/png")})
        if unauth.status_code != 401:
            raise AssertionError(f"POST /v1/ocr without a token: HTTP {unauth.status_code}")
        reply = api.post(
            "/v1/ocr?mode=line",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": ("site-check.png", image, "image/png")},
        )
        if reply.status_code != 200:
            raise AssertionError(f"POST /v1/ocr: HTTP {reply.status_code}: {reply.text[:200]}")
        data: dict[str, Any] = reply.json()
        if data.get("text", "").strip() != expected:
            raise AssertionError(f"POST /v1/ocr read {data.get('text')!r}, not {expected!r}")
        model = data["model"]
        return f"{model['name']}/{model['version']} read {expected!r}"


def prometheus_targets(target: deploy.Target, deadline_s: float = 90) -> str:
    inv = target.inventory
    mon = sorted(inv.hosts_of("monitoring"))[0]
    port = int(target.configs[mon]["monitoring"]["port"])
    url = f"http://{checks.host_access(inv, mon).address}:{port}/api/v1/targets?state=active"
    # Every job the inventory implies, with its number of targets.
    expected = {
        "node": len(inv.hosts),
        "api": len(inv.hosts_of("api")),
        "web": len(inv.hosts_of("web")),
        "nginx": len(inv.hosts_of("lb")),
        "postgres": len(inv.hosts_of("db")),
    }
    end = time.monotonic() + deadline_s
    problem = ""
    while time.monotonic() < end:
        try:
            active = httpx.get(url, timeout=10).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError) as e:
            problem = f"GET {url}: {e}"
        else:
            jobs: dict[str, int] = {}
            for t in active:
                jobs[t["labels"]["job"]] = jobs.get(t["labels"]["job"], 0) + 1
            down = [
                f"{t['labels']['job']}/{t['labels'].get('host', t['labels']['instance'])}: "
                f"{t['health']} {t.get('lastError', '')}".strip()
                for t in active
                if t["health"] != "up"
            ]
            missing = {j: n for j, n in expected.items() if jobs.get(j, 0) != n}
            if not down and not missing:
                return f"{len(active)} targets up, jobs {dict(sorted(jobs.items()))} ({url})"
            problem = f"not up: {down}; jobs with the wrong number of targets: {missing}"
        time.sleep(2)
    raise AssertionError(f"after {deadline_s:.0f} s: {problem}")


def journals(path: str, target: deploy.Target, deadline_s: float = 60) -> str:
    inv = target.inventory
    senders = sorted(h for h in inv.hosts if h not in inv.hosts_of("monitoring"))
    end = time.monotonic() + deadline_s
    missing = senders
    while True:
        missing = []
        for host in senders:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "llmops_provision",
                    "logs",
                    path,
                    "--host",
                    host,
                    "--lines",
                    "5",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0 or f" {host} " not in proc.stdout:
                missing.append(f"{host} ({(proc.stdout + proc.stderr).strip()[-120:]!r})")
        if not missing or time.monotonic() > end:
            break
        time.sleep(2)
    if missing:
        raise AssertionError(f"no journal entries on the monitoring host from {missing}")
    return f"journals of {', '.join(senders)} read with llmops-provision logs"


def main(path: str) -> int:
    target = deploy.load_target(path)
    base = deploy.platform_url(target)
    ca = str(deploy.secrets_dir(target.name) / "tls-ca.crt")
    runs: list[tuple[str, Callable[[], str]]] = [
        ("web login and OCR through the lb", lambda: web_login_and_ocr(base, ca, target)),
        ("API OCR through the lb", lambda: api_ocr(base, ca, target)),
        ("Prometheus targets", lambda: prometheus_targets(target)),
        ("central journals", lambda: journals(path, target)),
    ]
    failed = 0
    for name, run in runs:
        try:
            print(f"ok    {name}: {run()}")
        except (AssertionError, httpx.HTTPError, OSError, subprocess.TimeoutExpired) as e:
            failed += 1
            print(f"FAIL  {name}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
