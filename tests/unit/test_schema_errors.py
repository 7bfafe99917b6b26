"""Readable schema errors: each names the path, the problem and what is allowed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llmops_provision.errors import ValidationError, json_path
from llmops_provision.schemas import validate_against
from llmops_provision.server_types import REGISTRY


def errors_for(stype: str, change: dict[str, Any]) -> list[ValidationError]:
    config = copy.deepcopy(REGISTRY[stype].template())
    config.update(change)
    return validate_against(stype, config, "c.json")


@pytest.mark.parametrize(
    "name",
    ["DB_PASSWORD", "API_TOKEN", "SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "KEY", "DB_PASS", "PASSWD"],
)
def test_secret_like_environment_names_are_rejected(name: str) -> None:
    errors = errors_for("api", {"environment": {name: "x"}})
    assert [(e.path, e.problem.split(";")[0]) for e in errors] == [
        (f"environment.{name}", "looks like a secret")
    ]


@pytest.mark.parametrize(
    "name", ["LOG_LEVEL", "TOKENIZERS_PARALLELISM", "API_TOKEN_FILE", "KEYBOARD", "PASSENGERS"]
)
def test_ordinary_environment_names_pass(name: str) -> None:
    assert errors_for("api", {"environment": {name: "x"}}) == []


def test_environment_values_are_strings() -> None:
    errors = errors_for("web", {"environment": {"WORKERS": 4}})
    assert [(e.path, e.problem, e.allowed) for e in errors] == [
        ("environment.WORKERS", "4 is an integer", "string")
    ]


def test_unknown_key_lists_the_known_ones() -> None:
    (err,) = errors_for(
        "lb", {"tls": {"port": 443, "mode": "self_signed", "redirect_http": True, "ciphers": "ALL"}}
    )
    assert err.path == "tls.ciphers"
    assert err.problem == "unknown key"
    assert err.allowed == "cert_path, key_path, mode, port, redirect_http"


def test_several_errors_are_all_reported_sorted() -> None:
    errors = errors_for("monitoring", {"port": -1, "retention": "forever", "extra": 1})
    assert [e.path for e in errors] == ["extra", "port", "retention"]


def test_postgresql_database_needs_no_path_and_sqlite_no_host() -> None:
    db = {"engine": "postgresql", "host": "db1", "port": 5432, "name": "x", "user": "y"}
    assert errors_for("api", {"database": db}) == []
    errors = errors_for("api", {"database": {**db, "path": "/x.db"}})
    assert [(e.path, e.problem) for e in errors] == [
        ("database.path", "only used with engine sqlite")
    ]


def test_tls_files_mode_needs_both_paths_and_self_signed_none() -> None:
    tls = {"port": 443, "mode": "files", "cert_path": "/c", "key_path": "/k", "redirect_http": True}
    assert errors_for("lb", {"tls": tls}) == []
    errors = errors_for("lb", {"tls": {**tls, "mode": "self_signed"}})
    assert {e.path for e in errors} == {"tls.cert_path", "tls.key_path"}


def test_json_path_formatting() -> None:
    assert json_path(("models", 0, "sha256")) == "models[0].sha256"
    assert json_path(("hosts", "web1.example.com", "vars")) == 'hosts["web1.example.com"].vars'
    assert str(ValidationError("f.json", "", "broken")) == "f.json: broken"
