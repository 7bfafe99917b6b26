"""`python -m llmops_ocr.evaluate` end to end on a small set, with Tesseract side by side."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from llmops_ocr import evaluate, heldout

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "crnn-ocr" / "1.1.0"


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return heldout.build(
        tmp_path_factory.mktemp("heldout"), n_synth=8, n_web=6, n_pages=2, exclude=frozenset()
    )


def test_evaluate_lines_and_pages_json(small_set, capsys):
    rc = evaluate.main(
        [
            "--model", str(SHIPPED), "--lines", str(small_set / "lines"),
            "--pages", str(small_set / "pages"), "--json",
        ]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    lines, pages = out["lines"], out["pages"]
    assert lines["n"] == 14 and pages["n"] == 2
    for engine in ("crnn", "tesseract"):
        assert 0 <= lines[engine]["cer"] <= 1 and lines[engine]["lines_per_s_batch1"] > 0
        # one thread per engine: CPU time is at most wall time, so per CPU second >= per second
        cpu, wall = lines[engine]["lines_per_cpu_s_batch1"], lines[engine]["lines_per_s_batch1"]
        assert cpu >= 0.9 * wall, (engine, cpu, wall)
        assert 0 <= pages[engine]["cer"] <= 1
    assert set(lines["crnn"]["cer_by_source"]) == {"synth", "web"}
    assert lines["crnn"]["cer"] < 0.2  # a trained model, not noise
    assert out["model"]["version"] == "1.1.0"


def test_evaluate_table_from_the_command_line(small_set):
    proc = subprocess.run(
        [sys.executable, "-m", "llmops_ocr.evaluate", "--model", str(SHIPPED),
         "--lines", str(small_set / "lines")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "CER" in proc.stdout and "tesseract" in proc.stdout and "lines/s" in proc.stdout
    assert "per second of CPU time" in proc.stdout


def test_evaluate_says_what_is_wrong_with_a_bad_dir(tmp_path, capsys):
    (tmp_path / "labels.tsv").write_text("missing.png\tsome text\n")
    assert evaluate.main(["--model", str(SHIPPED), "--lines", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.png" in err and "labels.tsv" in err
