"""Evaluate the CRNN against Tesseract on the same images, side by side, in one run.

    python -m llmops_ocr.evaluate                      # held-out lines + pages (built if missing)
    python -m llmops_ocr.evaluate --lines DIR --pages DIR --json

Figures: CER (character edit distance / reference characters), word accuracy (1 - word edit
distance / reference words), line exact match, and throughput: lines/s one line at a time
("batch 1") and in batches (CRNN only; Tesseract reads one image at a time). Tesseract runs
through its C API (tesserocr) with the engine loaded once, so process start-up is not counted;
`--psm 7` (a single line) for lines, `--psm 6` (a uniform block) for pages. Each engine's
throughput is its fastest of `--repeat` runs (3): on a shared machine the slower runs measure
the other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Both engines get one CPU thread each: a like-for-like throughput comparison. Must be set
# before tesseract or torch start their thread pools.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")

import torch
from PIL import Image

from . import heldout
from .page import ocr_page
from .recognizer import Recognizer
from .train import edit_distance

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = APP_DIR / "models" / "crnn-ocr" / "1.1.0"
TESSDATA_DIRS = ["/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata"]


def _clean(text: str) -> str:
    return " ".join(text.split())


def scores(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """CER, word accuracy and exact-match rate of predictions against references."""
    ce = sum(edit_distance(_clean(p), _clean(r)) for p, r in zip(preds, refs, strict=True))
    chars = sum(len(_clean(r)) for r in refs)
    we = sum(edit_distance(p.split(), r.split()) for p, r in zip(preds, refs, strict=True))  # type: ignore[arg-type]
    words = sum(len(r.split()) for r in refs)
    exact = sum(_clean(p) == _clean(r) for p, r in zip(preds, refs, strict=True))
    return {
        "cer": ce / max(chars, 1),
        "word_accuracy": max(0.0, 1 - we / max(words, 1)),
        "exact_match": exact / max(len(refs), 1),
    }


class Tesseract:
    """Tesseract kept loaded through its C API (tesserocr)."""

    def __init__(self, psm: int) -> None:
        import tesserocr

        path = next((d for d in TESSDATA_DIRS if Path(d, "eng.traineddata").is_file()), None)
        if path is None:
            raise FileNotFoundError(
                "eng.traineddata not found in " + ", ".join(TESSDATA_DIRS)
                + "; apt-get install tesseract-ocr-eng"
            )  # fmt: skip
        self.version = tesserocr.tesseract_version().split()[1]
        self.psm = psm
        self.api = tesserocr.PyTessBaseAPI(path=path + "/", lang="eng", psm=psm)

    def read(self, img: Image.Image) -> str:
        self.api.SetImage(img)
        return self.api.GetUTF8Text().strip()

    def close(self) -> None:
        self.api.End()


def _timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float, float]:
    """fn's result, its fastest run of `repeat` (the least disturbed by other processes), and
    the least CPU time (of this process) a run took."""
    best = cpu = float("inf")
    out = None
    for _ in range(max(1, repeat)):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return out, best, cpu


def eval_lines(
    rec: Recognizer,
    items: list[tuple[Path, str]],
    batch_size: int,
    tesseract: bool,
    repeat: int = 1,
) -> dict[str, Any]:
    imgs = [Image.open(p).convert("L") for p, _ in items]
    for im in imgs:
        im.load()
    refs = [t for _, t in items]
    n = len(imgs)
    ours1, t1, c1 = _timed(lambda: [rec.recognize_lines([im])[0][0] for im in imgs], repeat)

    def batched() -> list[str]:
        order = sorted(range(n), key=lambda i: imgs[i].width / max(imgs[i].height, 1))
        out = [""] * n
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            for i, (text, _) in zip(idx, rec.recognize_lines([imgs[i] for i in idx]), strict=True):
                out[i] = text
        return out

    oursb, tb, cb = _timed(batched, repeat)
    res: dict[str, Any] = {
        "n": n,
        "crnn": {
            **scores(ours1, refs),
            "lines_per_s_batch1": n / t1,
            "lines_per_s_batched": n / tb,
            # Per second of CPU time of this process: hardly changed by other processes.
            "lines_per_cpu_s_batch1": n / c1,
            "lines_per_cpu_s_batched": n / cb,
            "cer_batched": scores(oursb, refs)["cer"],
            # Batches hold lines of similar width (little padding), as a batching server would.
            "batched_order": "by aspect ratio",
        },
    }
    groups = sorted({p.name.split("-")[0] for p, _ in items})
    if len(groups) > 1:
        res["crnn"]["cer_by_source"] = {
            g: scores(
                [o for o, (p, _) in zip(ours1, items, strict=True) if p.name.startswith(g + "-")],
                [r for r, (p, _) in zip(refs, items, strict=True) if p.name.startswith(g + "-")],
            )["cer"]
            for g in groups
        }
    if tesseract:
        tess = Tesseract(psm=7)
        theirs, tt, ct = _timed(lambda: [tess.read(im) for im in imgs], repeat)
        tess.close()
        res["tesseract"] = {
            **scores(theirs, refs),
            "lines_per_s_batch1": n / tt,
            "lines_per_cpu_s_batch1": n / ct,
            "lines_per_s_batched": None,
            "version": tess.version,
            "psm": 7,
        }
        if len(groups) > 1:
            res["tesseract"]["cer_by_source"] = {
                g: scores(
                    [
                        o
                        for o, (p, _) in zip(theirs, items, strict=True)
                        if p.name.startswith(g + "-")
                    ],
                    [
                        r
                        for r, (p, _) in zip(refs, items, strict=True)
                        if p.name.startswith(g + "-")
                    ],
                )["cer"]
                for g in groups
            }
        res["speedup_batched"] = (
            res["crnn"]["lines_per_s_batched"] / res["tesseract"]["lines_per_s_batch1"]
        )
        res["speedup_batch1"] = (
            res["crnn"]["lines_per_s_batch1"] / res["tesseract"]["lines_per_s_batch1"]
        )
        res["speedup_batched_cpu"] = (
            res["crnn"]["lines_per_cpu_s_batched"] / res["tesseract"]["lines_per_cpu_s_batch1"]
        )
    return res


def eval_pages(
    rec: Recognizer,
    items: list[tuple[Path, str]],
    batch_size: int,
    tesseract: bool,
    repeat: int = 1,
) -> dict[str, Any]:
    imgs = [Image.open(p) for p, _ in items]
    for im in imgs:
        im.load()
    refs = [t.split("\\n") for _, t in items]
    nlines = sum(len(r) for r in refs)
    ours, t, _ = _timed(
        lambda: [[d["text"] for d in ocr_page(rec, im, batch_size)] for im in imgs], repeat
    )
    res: dict[str, Any] = {"n": len(imgs), "lines": nlines, "crnn": _page_scores(ours, refs, t)}
    res["crnn"]["line_count_correct"] = sum(
        len(o) == len(r) for o, r in zip(ours, refs, strict=True)
    ) / max(len(refs), 1)
    if tesseract:
        tess = Tesseract(psm=6)
        theirs, tt, _ = _timed(
            lambda: [[ln for ln in tess.read(im).splitlines() if ln.strip()] for im in imgs],
            repeat,
        )
        tess.close()
        res["tesseract"] = {**_page_scores(theirs, refs, tt), "version": tess.version, "psm": 6}
        res["tesseract"]["line_count_correct"] = sum(
            len(o) == len(r) for o, r in zip(theirs, refs, strict=True)
        ) / max(len(refs), 1)
    return res


def _page_scores(preds: list[list[str]], refs: list[list[str]], seconds: float) -> dict[str, Any]:
    joined = scores(["\n".join(p) for p in preds], ["\n".join(r) for r in refs])
    # Lines compared by position (a missed or split line shifts the rest: it counts as wrong).
    flat_p = [
        p[i] if i < len(p) else "" for p, r in zip(preds, refs, strict=True) for i in range(len(r))
    ]
    flat_r = [line for r in refs for line in r]
    nlines = len(flat_r)
    return {
        "cer": joined["cer"],
        "word_accuracy": joined["word_accuracy"],
        "exact_match": scores(flat_p, flat_r)["exact_match"],
        "pages_per_s": len(refs) / seconds,
        "lines_per_s": nlines / seconds,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def format_table(result: dict[str, Any]) -> str:
    m = result["model"]
    rows: list[tuple[str, str, str]] = []
    tess_name = "tesseract"
    for section in ("lines", "pages"):
        r = result.get(section)
        if not r:
            continue
        c, t = r["crnn"], r.get("tesseract") or {}
        if t:
            tess_name = f"tesseract {t['version']}"
        what = "images" if section == "lines" else f"pages, {r['lines']} lines"
        title = f"{section} ({r['n']} {what}) [{r['dir']}]"
        rows.append((title, "", ""))
        rows.append(("  CER", _pct(c["cer"]), _pct(t.get("cer"))))
        for g, v in c.get("cer_by_source", {}).items():
            rows.append((f"    CER, {g} lines", _pct(v), _pct(t.get("cer_by_source", {}).get(g))))
        rows.append(("  word accuracy", _pct(c["word_accuracy"]), _pct(t.get("word_accuracy"))))
        rows.append(("  line exact match", _pct(c["exact_match"]), _pct(t.get("exact_match"))))
        if section == "lines":
            rows.append(
                (
                    "  lines/s, batch 1",
                    _num(c["lines_per_s_batch1"]),
                    _num(t.get("lines_per_s_batch1")),
                )
            )
            rows.append(
                (
                    f"  lines/s, batched ({result['batch_size']})",
                    _num(c["lines_per_s_batched"]),
                    "-",
                )
            )
        else:
            rows.append(
                (
                    "  right number of lines",
                    _pct(c["line_count_correct"]),
                    _pct(t.get("line_count_correct")),
                )
            )
            rows.append(("  pages/s", _num(c["pages_per_s"]), _num(t.get("pages_per_s"))))
            rows.append(("  lines/s", _num(c["lines_per_s"]), _num(t.get("lines_per_s"))))
    head = (f"{m['name']} {m['version']}", tess_name)
    w0 = max(len(r[0]) for r in rows) + 2
    w1 = max(len(head[0]), *(len(r[1]) for r in rows)) + 2
    lines = [f"{'':<{w0}}{head[0]:>{w1}}  {head[1]}"]
    lines += [f"{a:<{w0}}{b:>{w1}}  {c}" for a, b, c in rows]
    lr = result.get("lines") or {}
    if "speedup_batched" in lr:
        lines.append(
            f"throughput vs tesseract: {lr['speedup_batched']:.1f}x batched, "
            f"{lr['speedup_batch1']:.1f}x at batch 1 (fastest of {result.get('repeat', 1)} runs, "
            f"torch threads {result['threads']}, "
            f"{m.get('precision', 'fp32')}, "
            f"OMP_THREAD_LIMIT={os.environ.get('OMP_THREAD_LIMIT')})"
        )
        lines.append(
            f"per second of CPU time: {lr['crnn']['lines_per_cpu_s_batched']:.1f} lines batched vs "
            f"{lr['tesseract']['lines_per_cpu_s_batch1']:.1f}, {lr['speedup_batched_cpu']:.1f}x"
        )
    lines.append(
        f"model: {m['params']} parameters, {m['size_mb']} MB, sha256 {m['sha256'][:16]}..."
    )
    return "\n".join(lines)


def evaluate(
    model_dir: Path,
    lines_dir: Path | None,
    pages_dir: Path | None,
    batch_size: int = 32,
    tesseract: bool = True,
    threads: int = 1,
    precision: str = "auto",
    repeat: int = 3,
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    rec = Recognizer.load(model_dir, precision)
    result: dict[str, Any] = {
        "model": {
            "name": rec.name,
            "version": rec.version,
            "sha256": rec.sha256,
            "params": rec.metadata.get("params"),
            "size_mb": rec.metadata.get("size_mb"),
            "precision": rec.precision,
        },
        "batch_size": batch_size,
        "threads": threads,
        "repeat": repeat,
    }
    if lines_dir is not None:
        result["lines"] = eval_lines(
            rec, heldout.read_labels(lines_dir), batch_size, tesseract, repeat
        )
        result["lines"]["dir"] = str(lines_dir)
    if pages_dir is not None:
        result["pages"] = eval_pages(
            rec, heldout.read_labels(pages_dir), batch_size, tesseract, repeat
        )
        result["pages"]["dir"] = str(pages_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmops_ocr.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model version dir")
    p.add_argument("--lines", type=Path, help="dir of line PNGs + labels.tsv")
    p.add_argument(
        "--pages", type=Path, help="dir of page images + labels.tsv (lines joined by \\n)"
    )
    p.add_argument(
        "--heldout",
        type=Path,
        default=heldout.DEFAULT_DIR,
        help="held-out set used when neither --lines nor --pages is given (built if missing)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="time each engine this many times and report its fastest run (robust to load)",
    )
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--no-tesseract", action="store_true", help="CRNN figures only")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument(
        "--write-metadata",
        action="store_true",
        help="store the figures under 'evaluation' in the model's metadata.json",
    )
    a = p.parse_args(argv)
    lines_dir, pages_dir = a.lines, a.pages
    if lines_dir is None and pages_dir is None:
        if not (a.heldout / "lines" / "labels.tsv").is_file():
            print(f"building the held-out set in {a.heldout} ...", file=sys.stderr)
            heldout.build(a.heldout)
        lines_dir, pages_dir = a.heldout / "lines", a.heldout / "pages"
    try:
        result = evaluate(
            a.model,
            lines_dir,
            pages_dir,
            a.batch_size,
            not a.no_tesseract,
            a.threads,
            a.precision,
            a.repeat,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    if a.write_metadata:
        meta_path = a.model / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["evaluation"] = result
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2) if a.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
