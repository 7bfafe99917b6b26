"""`llmops-provision validate` on the shipped inventories and configs, and its edge cases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_provision.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [
    "inventory/prod.yml",
    "inventory/lab.yml",
    "inventory/dev.yml",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.json")),
    # The shipped app: its descriptor must name the committed weights' real sha256.
    "apps/ocr",
]


def test_shipped_inventories_and_configs_are_valid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    rc = main(["validate", *SHIPPED])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert [line.split()[1] for line in out.splitlines()] == SHIPPED


def test_console_script_exit_codes_without_traceback(tmp_path: Path) -> None:
    """The real entry point, as a user runs it: 0 for good input, 2 for bad, no traceback."""
    bad = tmp_path / "api.json"
    bad.write_text('{"server_type": "api", "port": "x"}')
    cmd = [sys.executable, "-m", "llmops_provision", "validate"]
    good = subprocess.run([*cmd, "configs/api.json"], cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    res = subprocess.run([*cmd, str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2
    assert f"{bad}: port: " in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_effective_json_shows_merged_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    rc = main(["validate", "--format", "json", "--effective", "inventory/prod.yml"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    eff = doc["inputs"][0]["effective"]
    assert set(eff) == {
        "prod-lb1",
        "prod-web1",
        "prod-web2",
        "prod-api1",
        "prod-api2",
        "prod-api3",
        "prod-db1",
        "prod-mon1",
    }
    api = eff["prod-api2"]["api"]
    assert api["workers"] == 4  # group override
    assert api["model"] == {"name": "crnn-ocr", "version": "1.1.0"}  # template
    assert api["batching"]["max_queue"] == 1024
    assert api["database"]["engine"] == "postgresql"
    assert "path" not in api["database"]  # replaced whole, not merged with the sqlite default
    assert eff["prod-db1"]["db"]["engine"] == "postgresql"


def test_missing_and_unknown_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("hello")
    rc = main(["validate", "nope.yml", "notes.txt"])
    out = capsys.readouterr().out
    assert rc == 2
    assert "nope.yml: no such file or directory" in out
    assert "notes.txt: not a kind of input validate knows" in out


def test_app_directory_and_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "app"
    shutil.copytree(ROOT / "tests/data/invalid/descriptor-sha256-mismatch", app)
    desc = json.loads((app / "descriptor.json").read_text())
    import hashlib

    desc["models"][0]["sha256"] = hashlib.sha256((app / "models/m.pt").read_bytes()).hexdigest()
    (app / "descriptor.json").write_text(json.dumps(desc))
    rc = main(["validate", str(app), str(app / "descriptor.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"ok  {app} (app: ocr 1.0.0: components api, 1 model(s))" in out
    # Changing one byte of the model is noticed.
    (app / "models/m.pt").write_bytes(b"tampered")
    assert main(["validate", str(app)]) == 2
    assert f"{app / 'descriptor.json'}: models[0].sha256: sha256 of models/m.pt is" in (
        capsys.readouterr().out
    )


def test_internal_error_has_no_traceback_unless_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmops_provision import validate

    def boom(path: str) -> validate.Result:
        raise RuntimeError("simulated bug")

    monkeypatch.setitem(validate.CHECKERS, "config", boom)
    monkeypatch.chdir(ROOT)
    assert main(["validate", "configs/api.json"]) == 1
    err = capsys.readouterr().err
    assert "internal error while validating: RuntimeError: simulated bug" in err
    assert "Traceback" not in err
    assert main(["--debug", "validate", "configs/api.json"]) == 1
    assert "Traceback" in capsys.readouterr().err
