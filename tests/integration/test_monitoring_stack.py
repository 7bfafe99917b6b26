"""The monitoring role's Prometheus and Alertmanager configuration, checked and run for real.

Ansible runs the role's own configure step (tests/integration/monitoring/render.yml, connection
local; its promtool/amtool validation included) into a temp dir. Then:
- `promtool test rules` runs the unit tests of every alert rule against the rendered rules;
- the real Prometheus and Alertmanager run the rendered files on 127.0.3.40 in front of fake
  api exporters; stopping one makes InstanceDown arrive at a webhook sink, the console template
  shows the platform, and every Grafana dashboard query is accepted by Prometheus.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "integration" / "monitoring"
ROLE = ROOT / "roles" / "monitoring"
MON = "127.0.3.40"
PROM_PORT, AM_PORT, SINK_PORT, FAKE_API_PORT = 29090, 29093, 29099, 28100
API_HOSTS = {"test-api1": "127.0.3.21", "test-api2": "127.0.3.22"}

pytestmark = pytest.mark.skipif(
    not all(
        shutil.which(t) for t in ("promtool", "prometheus", "amtool", "prometheus-alertmanager")
    ),
    reason="Debian packages prometheus and prometheus-alertmanager are missing",
)


def _render(out: Path, **extra: Any) -> Path:
    """Run the role's configure step with its files under `out`; returns the config dir."""
    conf = out / "etc"
    extra_vars = {
        "monitoring_manage_services": False,
        "monitoring_prometheus_dir": str(conf),
        "monitoring_prometheus_defaults_path": str(out / "prometheus.env"),
        "monitoring_alertmanager_defaults_path": str(out / "alertmanager.env"),
        **extra,
    }
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(HARNESS / "inventory.yml")]
    cmd += [str(HARNESS / "render.yml"), "-e", json.dumps(extra_vars)]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return conf


@pytest.fixture(scope="module")
def default_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The role's files with configs/monitoring.json as it is."""
    return _render(tmp_path_factory.mktemp("mon-default"))


def test_every_alert_rule_passes_its_promtool_unit_tests(
    default_render: Path, tmp_path: Path
) -> None:
    rules = default_render / "rules"
    shutil.copy(rules / "llmops.yml", tmp_path / "llmops.yml")
    shutil.copy(HARNESS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    proc = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every alert the rules define has at least one test case.
    defined = {
        r["alert"]
        for g in yaml.safe_load((rules / "llmops.yml").read_text())["groups"]
        for r in g["rules"]
    }
    tests = yaml.safe_load((HARNESS / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t["alert_rule_test"]}
    assert defined == tested


def test_scrape_targets_come_from_the_inventory(default_render: Path) -> None:
    config = default_render / "prometheus.yml"
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert set(jobs) == {"prometheus", "alertmanager", "node", "api", "web", "nginx", "postgres"}

    def targets(job: str) -> dict[str, str]:
        return {sc["labels"]["host"]: sc["targets"][0] for sc in jobs[job]["static_configs"]}

    assert targets("node") == {
        "test-lb": "127.0.3.10:9100",
        "test-web": "127.0.3.11:9100",
        "test-api1": "127.0.3.21:9100",
        "test-api2": "127.0.3.22:9100",
        "test-db": "127.0.3.30:9100",
        "test-mon": "127.0.3.40:9100",
    }
    assert targets("api") == {"test-api1": "127.0.3.21:8000", "test-api2": "127.0.3.22:8000"}
    assert targets("web") == {"test-web": "127.0.3.11:8080"}
    assert targets("nginx") == {"test-lb": "127.0.3.10:9113"}
    assert targets("postgres") == {"test-db": "127.0.3.30:9187"}
    retention = (default_render.parent / "prometheus.env").read_text()
    assert "--storage.tsdb.retention.time=15d" in retention


class _Server:
    """A tiny HTTP server on a thread: GET answers `body()`, POST bodies are kept in `posts`."""

    def __init__(self, address: str, port: int, body: Callable[[], str] = lambda: "") -> None:
        self.posts: list[Any] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = body().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server.posts.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd: ThreadingHTTPServer | None = ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def _args(env_file: Path) -> list[str]:
    """The ARGS the role wrote for a Debian unit, as argv."""
    line = next(x for x in env_file.read_text().splitlines() if x.startswith("ARGS="))
    return shlex.split(shlex.split(line.removeprefix("ARGS="))[0])


def _wait(what: str, check: Callable[[], Any], deadline_s: float) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {deadline_s}s")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("mon-live")
    conf = _render(
        out,
        llmops_config={
            "port": PROM_PORT,
            "alertmanager_port": AM_PORT,
            "scrape_interval": "1s",
            "evaluation_interval": "1s",
            "alerts": {
                "instance_down_for": "2s",
                "api_error_ratio": 0.2,
                "backup_max_age_hours": 48,
            },
        },
        monitoring_api_port=FAKE_API_PORT,
        monitoring_alert_webhook_urls=[f"http://127.0.0.1:{SINK_PORT}/alerts"],
        monitoring_alert_group_wait="1s",
        monitoring_alert_group_interval="1s",
    )
    sink = _Server("127.0.0.1", SINK_PORT)
    metrics = (
        "# TYPE llmops_api_requests_total counter\n"
        'llmops_api_requests_total{method="POST",route="/v1/ocr",status="200"} 7\n'
    )
    fakes = {h: _Server(a, FAKE_API_PORT, lambda: metrics) for h, a in API_HOSTS.items()}
    procs = [
        subprocess.Popen(
            ["prometheus", *_args(out / "prometheus.env"), f"--storage.tsdb.path={out}/tsdb"],
            stdout=subprocess.DEVNULL,
            stderr=(out / "prometheus.log").open("w"),
        ),
        subprocess.Popen(
            [
                "prometheus-alertmanager",
                *_args(out / "alertmanager.env"),
                f"--storage.path={out}/am",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(out / "alertmanager.log").open("w"),
        ),
    ]
    prom = httpx.Client(base_url=f"http://{MON}:{PROM_PORT}", timeout=5)
    try:
        _wait("Prometheus ready", lambda: prom.get("/-/ready").status_code == 200, 60)
        am = f"http://{MON}:{AM_PORT}/-/ready"
        _wait("Alertmanager ready", lambda: httpx.get(am).status_code == 200, 60)
        yield {"out": out, "conf": conf, "prom": prom, "sink": sink, "fakes": fakes}
    finally:
        prom.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for s in [sink, *fakes.values()]:
            s.stop()


def _up(prom: httpx.Client, job: str, host: str) -> float | None:
    result = prom.get("/api/v1/query", params={"query": f'up{{job="{job}",host="{host}"}}'})
    samples = result.json()["data"]["result"]
    return float(samples[0]["value"][1]) if samples else None


def test_stopped_api_service_alert_reaches_the_webhook(live: dict[str, Any]) -> None:
    prom, sink = live["prom"], live["sink"]
    _wait("test-api1 scraped as up", lambda: _up(prom, "api", "test-api1") == 1.0, 60)
    live["fakes"]["test-api1"].stop()

    def arrived() -> dict[str, Any] | None:
        for post in sink.posts:
            for alert in post["alerts"]:
                labels = alert["labels"]
                if (labels["alertname"], labels.get("job"), labels.get("host")) == (
                    "InstanceDown",
                    "api",
                    "test-api1",
                ) and alert["status"] == "firing":
                    return alert
        return None

    alert = _wait("InstanceDown for api on test-api1 at the webhook", arrived, 90)
    assert alert["annotations"]["summary"] == "api on test-api1 is down"
    # The api host that still runs raised nothing.
    assert not any(
        a["labels"].get("host") == "test-api2" and a["labels"].get("job") == "api"
        for post in sink.posts
        for a in post["alerts"]
    )


def test_console_template_shows_the_platform(live: dict[str, Any]) -> None:
    prom = live["prom"]
    _wait("test-api2 scraped as up", lambda: _up(prom, "api", "test-api2") == 1.0, 60)
    page = prom.get("/consoles/llmops-overview.html")
    assert page.status_code == 200, page.text[:2000]
    html = page.text
    assert "llmops platform overview" in html
    assert "error executing template" not in html
    for host in ("test-api1", "test-api2", "test-lb", "test-db"):
        assert f"<td>{host}</td>" in html
    assert 'id="api-rps"' in html


def test_grafana_dashboard_queries_are_valid_promql(live: dict[str, Any]) -> None:
    dashboard = json.loads((ROLE / "files" / "grafana" / "llmops-overview.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        r = live["prom"].get("/api/v1/query", params={"query": expr})
        assert r.status_code == 200 and r.json()["status"] == "success", (expr, r.text)


def test_thresholds_follow_the_config(live: dict[str, Any]) -> None:
    """The live render overrides some thresholds; the others keep configs/monitoring.json's."""
    groups = yaml.safe_load((live["conf"] / "rules" / "llmops.yml").read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert rules["InstanceDown"]["for"] == "2s"
    assert rules["ApiErrorRatioHigh"]["expr"].rstrip().endswith("> 0.2")
    assert rules["BackupTooOld"]["expr"].rstrip().endswith(f"> {48 * 3600}")
    defaults = json.loads((ROOT / "configs" / "monitoring.json").read_text())["alerts"]
    memory = rules["MemoryPressure"]["expr"].rstrip()
    assert memory.endswith(f"< {defaults['memory_available_ratio']}")
