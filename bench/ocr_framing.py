"""How the OCR recogniser's crop framing was chosen: CER on generated dev lines and pages.

    .venv/bin/python bench/ocr_framing.py [--model apps/ocr/models/crnn-ocr/1.1.0]

Sweeps `model.LINE_FRAME` (rows kept around a line image's baseline, in x-heights) on generated
lines and `page.PAGE_FRAME` (the line boxes of a page) on generated pages, and prints the CER of
each setting. The dev sets use the held-out renderer with seeds from 3 * 10**8 on: apart from
training (< 10**8), validation (5 * 10**8) and the held-out set (>= 10**9), so choosing on them
does not tune to the held-out figures. A few minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "apps" / "ocr"))

from llmops_ocr import heldout, model, page  # noqa: E402
from llmops_ocr.recognizer import Recognizer  # noqa: E402
from llmops_ocr.train import edit_distance  # noqa: E402

DEV_SEED = 3 * 10**8
LINE_FRAMES = [None, (2.0, 0.75), (2.1, 0.8), (2.2, 0.85), (2.3, 0.9), (2.4, 0.95), (2.7, 1.1)]
PAGE_FRAMES = [(1.8, 0.6), (1.9, 0.7), (1.9, 0.75), (2.0, 0.8), (2.1, 0.8), (2.3, 0.9)]


def cer(preds: list[str], refs: list[str]) -> float:
    errors = sum(
        edit_distance(" ".join(p.split()), " ".join(r.split()))
        for p, r in zip(preds, refs, strict=True)
    )
    return errors / max(1, sum(len(" ".join(r.split())) for r in refs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "apps/ocr/models/crnn-ocr/1.1.0")
    p.add_argument("--lines", type=int, default=600)
    p.add_argument("--pages", type=int, default=60)
    a = p.parse_args()
    torch.set_num_threads(1)
    rec = Recognizer.load(a.model)
    lines = heldout.synth_lines(a.lines, DEV_SEED + 10**6, frozenset())
    pages = heldout.pages(a.pages, DEV_SEED, frozenset())
    print(f"{rec.name} {rec.version}: {len(lines)} dev lines, {len(pages)} dev pages")
    for frame in LINE_FRAMES:
        rec.preprocess = lambda im, f=frame: torch.from_numpy(model.preprocess_line(im, f))[None]  # type: ignore[method-assign]
        preds = []
        for s in range(0, len(lines), 32):
            preds += [t for t, _ in rec.recognize_lines([im for im, _ in lines[s : s + 32]])]
        print(f"LINE_FRAME {frame}: dev line CER {100 * cer(preds, [t for _, t in lines]):.3f}%")
    rec = Recognizer.load(a.model)
    for frame in PAGE_FRAMES:
        page.PAGE_FRAME = frame
        got, want = [], []
        for img, refs in pages:
            texts = [d["text"] for d in page.ocr_page(rec, img)]
            got += [texts[i] if i < len(texts) else "" for i in range(len(refs))]
            want += refs
        print(f"PAGE_FRAME {frame}: dev page CER {100 * cer(got, want):.3f}%")


if __name__ == "__main__":
    main()
