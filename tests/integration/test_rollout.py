"""`llmops-provision rollout` on a real lab: lb + 2 api hosts + db (PostgreSQL).

Release A (apps/ocr as it is) is applied; B (a copy with another version) is rolled out while a
client sends OCR requests through the lb over HTTPS: both hosts end on B, one host at a time, and
no client request fails. Rolling out B again changes nothing. Then C, a copy whose api never
becomes ready: the rollout fails, its first host is back on B and serving, the second host was
never touched, and the lb sends requests to both again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from provision_cli import cli

from llmops_provision import checks, deploy, runner
from llmops_provision import lab as labmod
from llmops_provision.bundle import build_bundle

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "apps" / "ocr"
LB, API1, API2, DB = "itr-lb", "itr-api1", "itr-api2", "itr-db"
INVENTORY_NAME = "itroll"
VERSION_B, VERSION_C = "99.0.1", "99.0.2"
# Release A: common + db + api + lb (web and monitoring are not needed to roll out the api).
PLAYBOOKS = ["playbooks/common.yml", "playbooks/db.yml", "playbooks/api.yml", "playbooks/lb.yml"]


def make_release(out: Path, version: str | None, broken: bool = False) -> Path:
    """Bundle of apps/ocr (version None) or of a copy with ``version`` (and, if ``broken``, an
    api whose workers fail to boot). Only the files a bundle needs are copied."""
    app = APP
    if version is not None:
        app = out / f"app-{version}"
        app.mkdir(parents=True)
        for name in ("descriptor.json", "pyproject.toml", "README.md"):
            shutil.copy2(APP / name, app / name)
        for name in ("llmops_ocr", "models"):
            shutil.copytree(APP / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
        descriptor = json.loads((app / "descriptor.json").read_text())
        descriptor["version"] = version
        (app / "descriptor.json").write_text(json.dumps(descriptor, indent=2))
        pyproject = app / "pyproject.toml"
        pyproject.write_text(
            re.sub(r'(?m)^version = "[^"]+"', f'version = "{version}"', pyproject.read_text())
        )
        if broken:
            with (app / "llmops_ocr" / "api" / "app.py").open("a") as fh:
                fh.write(
                    "\n\ndef create_app(*args, **kwargs):  # a release that never gets ready\n"
                    "    raise RuntimeError('broken release for the rollout test')\n"
                )
    return build_bundle(app, out / "dist", log=lambda m: print(m, file=sys.stderr)).info.path


@dataclass
class Client:
    """A light client: one OCR request through the lb every 0.3 s; counts what failed."""

    url: str
    token: str
    ca: str
    image: bytes
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def request(self, client: httpx.Client) -> None:
        try:
            reply = client.post(
                self.url,
                files={"file": ("line.png", self.image, "image/png")},
                headers={"Authorization": f"Bearer {self.token}"},
            )
        except httpx.HTTPError as exc:
            self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            return
        if reply.status_code == 200 and reply.json().get("text"):
            self.ok += 1
        else:
            self.failures.append(
                f"{time.strftime('%H:%M:%S')} {reply.status_code} {reply.text[:200]}"
            )

    def _loop(self) -> None:
        with httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=60) as client:
            while not self._stop.is_set():
                self.request(client)
                self._stop.wait(0.3)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=90)


@dataclass
class Rolled:
    lab: labmod.Lab
    inventory: Path
    env: dict[str, str]
    bundles: dict[str, Path]
    client: Client
    rollout_b: subprocess.CompletedProcess[str]


def inventory_text(lab: labmod.Lab) -> str:
    db = f"{{engine: postgresql, host: {lab.address(DB)}, port: 5432, name: llmops, user: llmops}}"
    return f"""all:
  vars:
    ansible_user: root
    ansible_ssh_private_key_file: {lab.ssh_key}
    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    llmops_environment: lab
    common_journal_upload_enabled: false
  children:
    lb:
      hosts:
        {LB}: {{ansible_host: {lab.address(LB)}}}
    api:
      hosts:
        {API1}: {{ansible_host: {lab.address(API1)}}}
        {API2}: {{ansible_host: {lab.address(API2)}}}
      vars:
        llmops_config: {{workers: 1, database: {db}}}
    db:
      hosts:
        {DB}: {{ansible_host: {lab.address(DB)}}}
      vars:
        llmops_config: {{engine: postgresql}}
    # web and monitoring are not applied here; the inventory needs the groups to be valid
    web:
      hosts:
        {DB}:
      vars:
        llmops_config: {{api_url: "https://{lab.address(LB)}", database: {db}}}
    monitoring:
      hosts:
        {DB}:
"""


def host_sh(lab: labmod.Lab, host: str, cmd: str) -> str:
    return lab.run(host, cmd, check=True).stdout.strip()


def current_release(lab: labmod.Lab, host: str) -> str:
    return Path(host_sh(lab, host, "readlink /opt/llmops/current")).name


def rollout_api(
    env: dict[str, str], inventory: Path, bundle: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """``llmops-provision rollout INVENTORY --server-type api --bundle BUNDLE [extra]``."""
    return cli(
        env, "rollout", str(inventory), "--server-type", "api", "--bundle", str(bundle), *extra
    )


def row(text: str, host: str) -> str:
    return next(line for line in text.splitlines() if f" {host} " in line and "│" in line)


@pytest.fixture(scope="module")
def rolled(
    lab_factory: Callable[..., labmod.Lab], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rolled]:
    work = tmp_path_factory.mktemp("rollout")
    lab = lab_factory("it-roll", [LB, API1, API2, DB])
    inventory = work / f"{INVENTORY_NAME}.yml"
    inventory.write_text(inventory_text(lab))
    env = {**os.environ, "LLMOPS_STATE_DIR": str(work / "state"), "COLUMNS": "250"}
    saved = os.environ.get("LLMOPS_STATE_DIR")
    os.environ["LLMOPS_STATE_DIR"] = env["LLMOPS_STATE_DIR"]  # for deploy/runner in-process
    client: Client | None = None
    try:
        bundles = {"A": make_release(work, None)}
        target = deploy.load_target(inventory)
        deploy.ensure_secrets(target.name)
        # Release A goes on while B and C are built.
        with ThreadPoolExecutor(max_workers=1) as pool:
            applying: Future[runner.RunResult] = pool.submit(
                runner.run_playbook,
                PLAYBOOKS,
                inventory,
                extra_vars={**deploy._base_vars(target), "llmops_bundle": str(bundles["A"])},
                show_progress=False,
                log_name=f"{INVENTORY_NAME}-apply",
            )
            bundles["B"] = make_release(work, VERSION_B)
            bundles["C"] = make_release(work, VERSION_C, broken=True)
            applied = applying.result()
        assert applied.ok, [f"{f.host}: {f.task}: {f.message}" for f in applied.failures]
        secrets = deploy.secrets_dir(target.name)
        image, _text = checks.ocr_image()
        client = Client(
            url=f"https://{lab.address(LB)}/v1/ocr?mode=line",
            token=(secrets / "api-token").read_text().strip(),
            ca=str(secrets / "tls-ca.crt"),
            image=image,
        )
        client.start()
        rollout_b = rollout_api(env, inventory, bundles["B"])
        yield Rolled(lab, inventory, env, bundles, client, rollout_b)
    finally:
        if client is not None:
            client.stop()
        if saved is None:
            os.environ.pop("LLMOPS_STATE_DIR", None)
        else:
            os.environ["LLMOPS_STATE_DIR"] = saved


def test_rollout_updates_every_host_one_at_a_time_without_failed_requests(rolled: Rolled) -> None:
    out = rolled.rollout_b.stdout + rolled.rollout_b.stderr
    assert rolled.rollout_b.returncode == 0, out[-6000:]
    assert {current_release(rolled.lab, h) for h in (API1, API2)} == {VERSION_B}
    spans = []
    for host in (API1, API2):
        line = row(rolled.rollout_b.stdout, host)
        assert "updated" in line, line
        match = re.search(r"out of rotation (\d\d:\d\d:\d\d)-(\d\d:\d\d:\d\d) UTC", line)
        assert match, line
        spans.append(match.groups())
    # the second host left the lb only after the first one was back in it
    assert spans[0][1] <= spans[1][0], spans
    assert "recorded in the platform database" in out, out[-2000:]
    assert rolled.client.ok > 10, rolled.client.failures
    assert rolled.client.failures == []


def test_rolling_out_the_current_release_changes_nothing(rolled: Rolled) -> None:
    assert rolled.rollout_b.returncode == 0
    again = rollout_api(rolled.env, rolled.inventory, rolled.bundles["B"])
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    for host in (API1, API2, LB):
        cells = [c.strip() for c in row(again.stderr, host).split("│")[1:-1]]
        assert (cells[1], cells[3]) == ("ok", "0"), cells  # result ok, changed 0
    assert "already on this release" in row(again.stdout, API1)


def test_a_release_that_fails_its_checks_is_rolled_back_and_stops_the_rollout(
    rolled: Rolled,
) -> None:
    assert rolled.rollout_b.returncode == 0
    lab = rolled.lab
    failed = rollout_api(rolled.env, rolled.inventory, rolled.bundles["C"], "--ready-timeout", "20")
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1, out[-6000:]
    assert "rolled back" in row(failed.stdout, API1)
    assert "not touched" in row(failed.stdout, API2)
    # the first host is back on B and serving; the second never saw C
    assert current_release(lab, API1) == VERSION_B
    ready = f"curl -sf http://{lab.address(API1)}:8000/readyz"
    assert json.loads(host_sh(lab, API1, ready))["status"] == "ready"
    assert current_release(lab, API2) == VERSION_B
    assert lab.run(API2, f"test -e /opt/llmops/releases/{VERSION_C}", check=False).returncode == 1
    # the lb has both hosts in rotation again and sends requests to both
    conf = host_sh(lab, LB, "cat /etc/nginx/nginx.conf")
    assert " down;" not in "\n".join(line for line in conf.splitlines() if "# itr-api" in line)
    log = "/var/log/nginx/llmops-access.log"
    before = int(host_sh(lab, LB, f"wc -l < {log}"))
    tls = ssl.create_default_context(cafile=rolled.client.ca)
    with httpx.Client(verify=tls, timeout=60) as client:
        for _ in range(8):
            rolled.client.request(client)
    lines = host_sh(lab, LB, f"tail -n +{before + 1} {log}").splitlines()
    upstreams = {json.loads(line)["upstream_addr"] for line in lines if '"/v1/ocr' in line}
    assert {f"{lab.address(h)}:8000" for h in (API1, API2)} <= upstreams, upstreams
    # no client request failed while C was tried and taken back
    assert rolled.client.failures == []
