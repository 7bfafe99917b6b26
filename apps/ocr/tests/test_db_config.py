"""The service config loader and credentials (llmops_ocr.config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llmops_ocr.config import ConfigError, config_path, load_config, read_credential


def test_config_path_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLMOPS_CONFIG", raising=False)
    assert config_path("web") == Path("/etc/llmops/web.json")
    monkeypatch.setenv("LLMOPS_CONFIG", str(tmp_path / "x.json"))
    assert config_path("web") == tmp_path / "x.json"


def test_load_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    p = tmp_path / "web.json"
    p.write_text(json.dumps({"server_type": "web", "port": 8080}))
    monkeypatch.setenv("LLMOPS_CONFIG", str(p))
    assert load_config("web")["port"] == 8080


def test_load_config_errors_say_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.json: config file not found.*LLMOPS_CONFIG"):
        load_config("api", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"port": 80,\n}')
    with pytest.raises(ConfigError, match=r"bad\.json: line 2 column 1: invalid JSON"):
        load_config("api", bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[1]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config("api", arr)
    other = tmp_path / "other.json"
    other.write_text('{"server_type": "web"}')
    with pytest.raises(ConfigError, match="server_type is 'web' but this service is 'api'"):
        load_config("api", other)


def test_read_credential(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "api-token").write_text("tok123\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_credential("api-token") == "tok123"
    assert read_credential("session-key", required=False) is None
    with pytest.raises(ConfigError, match="LoadCredential=session-key:/etc/credstore/llmops-"):
        read_credential("session-key")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        read_credential("api-token")
    assert read_credential("api-token", tmp_path) == "tok123"
