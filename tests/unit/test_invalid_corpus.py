"""Every broken input in tests/data/invalid/ is rejected by `validate` with exit code 2, naming
the file and the JSON path the user has to fix (tests/data/invalid-expected.json says which)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops_provision.cli import main

ROOT = Path(__file__).resolve().parents[2]
INVALID = Path("tests/data/invalid")
EXPECTED: dict[str, dict[str, str]] = json.loads(
    (ROOT / "tests/data/invalid-expected.json").read_text(encoding="utf-8")
)


def test_corpus_is_complete() -> None:
    on_disk = {p.name for p in (ROOT / INVALID).iterdir()}
    assert on_disk == set(EXPECTED), "every case needs an entry in invalid-expected.json"
    assert len(on_disk) >= 30


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_invalid_input_is_rejected_with_file_and_path(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    want = EXPECTED[case]
    rc = main(["validate", str(INVALID / case)])
    out, err = capsys.readouterr()
    assert rc == 2, out
    assert "Traceback" not in out + err
    prefix = f"{INVALID / want['file']}: "
    if want["path"]:
        prefix += f"{want['path']}: "
    lines = [line for line in out.splitlines() if line.startswith(prefix)]
    assert any(want["problem"] in line for line in lines), (
        f"expected a line starting {prefix!r} containing {want['problem']!r}; got:\n{out}"
    )


@pytest.mark.parametrize("case", ["inv-duplicate-port.yml", "descriptor-sha256-mismatch"])
def test_json_output_names_file_and_path(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    rc = main(["validate", "--format", "json", str(INVALID / case)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 2
    assert doc["ok"] is False
    errors = doc["inputs"][0]["errors"]
    want = EXPECTED[case]
    assert {"file": str(INVALID / want["file"]), "path": want["path"]}.items() <= errors[0].items()


def test_all_invalid_at_once_exit_2_and_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    rc = main(["validate", "configs/api.json", *(str(INVALID / c) for c in sorted(EXPECTED))])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out.startswith("ok  configs/api.json")
    assert f"in {len(EXPECTED)} of {len(EXPECTED) + 1} input(s)" in err
