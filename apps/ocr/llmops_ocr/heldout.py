"""The held-out evaluation set: lines and pages the model never trained on.

It shares neither text nor seeds with training: its text comes from the held-out 10% of the corpus
(split by sentence hash, see synth.sentences), its seeds start at 10**9 (training uses < 10**8),
and a line whose text equals that of any training line (a short word can) is drawn again.
Part of its lines are rendered by different software than the training generator: headless
Chromium screenshots of HTML text (its own text shaping, hinting and anti-aliasing).

Layout (also what `evaluate --lines DIR` / `--pages DIR` read):
  DIR/lines/*.png + labels.tsv   (file name, a tab, the exact text)
  DIR/pages/*.png + labels.tsv   (the page's lines joined by the two characters backslash-n)
"""

from __future__ import annotations

import argparse
import html
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import synth, train

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DIR = APP_DIR / "data" / "heldout"
SEED_BASE = 10**9
CHROMIUM = "/usr/bin/chromium"
WEB_FONTS = [
    "DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono", "Liberation Sans", "Liberation Serif",
    "Liberation Mono", "FreeSans", "FreeSerif", "FreeMono", "Noto Sans", "Noto Serif",
    "Noto Sans Mono", "Nimbus Sans", "Nimbus Roman", "Nimbus Mono PS", "P052", "C059",
    "URW Bookman", "URW Gothic", "Roboto", "Open Sans", "Carlito", "Caladea",
]  # fmt: skip


def write_labels(d: Path, rows: list[tuple[str, str]]) -> None:
    with open(d / "labels.tsv", "w", encoding="utf-8") as f:
        for name, text in rows:
            f.write(f"{name}\t{text}\n")


def read_labels(d: Path) -> list[tuple[Path, str]]:
    """(image path, text) pairs of a `labels.tsv` directory, in file order."""
    path = d / "labels.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected lines of 'file name<TAB>text'")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, text = line.partition("\t")
        if not sep:
            raise ValueError(f"{path}:{n}: no tab between file name and text")
        if not (d / name).is_file():
            raise FileNotFoundError(f"{path}:{n}: image {name} not found in {d}")
        out.append((d / name, text))
    return out


def training_texts(
    n: int = train.DEFAULT_SAMPLES, n_val: int = train.DEFAULT_VAL_SAMPLES
) -> frozenset[str]:
    """The texts of the default training run (and its validation lines)."""
    texts = {train.sample_text(train.TRAIN_SEED_BASE + i) for i in range(n)}
    texts |= {train.sample_text(train.VAL_SEED_BASE + i) for i in range(n_val)}
    return frozenset(texts)


def _fresh(rng: random.Random, exclude: frozenset[str], max_chars: int) -> str:
    """Held-out text that is not the text of any training line (short lines can coincide)."""
    while True:
        text = synth.make_text(rng, "heldout", max_chars=max_chars)
        if text not in exclude:
            return text


def synth_lines(n: int, seed_base: int, exclude: frozenset[str]) -> list[tuple[Image.Image, str]]:
    out = []
    for i in range(n):
        seed = seed_base + i
        text = _fresh(random.Random(seed * 2), exclude, 48)
        out.append((synth.render_line(text, seed=seed * 2 + 1), text))
    return out


def _web_style(rng: random.Random) -> tuple[str, int, int, tuple[int, int]]:
    size = rng.randint(12, 30)
    dark = rng.random() < 0.15
    if dark:
        paper, ink = rng.randint(0, 60), rng.randint(180, 255)
    else:
        paper, ink = rng.randint(200, 255), rng.randint(0, 80)
    style = (
        f"font-family:'{rng.choice(WEB_FONTS)}';font-size:{size}px;"
        f"font-weight:{700 if rng.random() < 0.25 else 400};"
        f"font-style:{'italic' if rng.random() < 0.2 else 'normal'};"
        f"color:rgb({ink},{ink},{ink});"
    )
    return style, size, paper, (ink, paper)


def chromium_lines(
    n: int, seed_base: int, exclude: frozenset[str], per_shot: int = 40
) -> list[tuple[Image.Image, str]]:
    """Lines rendered by headless Chromium (one screenshot per `per_shot` lines)."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM}: not found; apt-get install chromium")
    out: list[tuple[Image.Image, str]] = []
    width = 1000
    for start in range(0, n, per_shot):
        rows = []
        y = 0
        for i in range(start, min(n, start + per_shot)):
            rng = random.Random(seed_base + i)
            text = _fresh(rng, exclude, 40)
            style, size, paper, _ = _web_style(rng)
            h = int(size * rng.uniform(1.5, 2.2))
            pad = rng.randint(4, 30)
            rows.append((text, y, h, paper))
            bg = f"rgb({paper},{paper},{paper})"
            rows_html = (
                f'<div style="position:absolute;left:0;top:{y}px;width:{width}px;height:{h}px;'
                f"line-height:{h}px;background:{bg};white-space:pre;padding-left:{pad}px;"
                f'{style}">{html.escape(text)}</div>'
            )
            rows[-1] = (*rows[-1], rows_html)
            y += h
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><style>body{margin:0}</style>"
            "</head><body>" + "".join(r[4] for r in rows) + "</body></html>"
        )
        with tempfile.TemporaryDirectory() as tmp:
            src, shot = Path(tmp) / "lines.html", Path(tmp) / "shot.png"
            src.write_text(page, encoding="utf-8")
            cmd = [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile", "--force-device-scale-factor=1",
                f"--window-size={width},{y}", f"--screenshot={shot}", src.as_uri(),
            ]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            img = Image.open(shot).convert("L")
            img.load()
        for text, top, h, paper, _ in rows:
            crop = img.crop((0, top, width, top + h))
            a = np.asarray(crop, np.int16)
            cols = np.nonzero((np.abs(a - paper) > 40).any(axis=0))[0]
            if cols.size:  # trim the empty right side of the row, keep a margin
                crop = crop.crop((0, 0, min(width, int(cols[-1]) + 1 + h // 2), h))
            out.append((crop, text))
    return out


def pages(n: int, seed_base: int, exclude: frozenset[str]) -> list[tuple[Image.Image, list[str]]]:
    out = []
    for i in range(n):
        rng = random.Random(seed_base + i)
        lines = [_fresh(rng, exclude, 44) for _ in range(rng.randint(3, 10))]
        img, _ = synth.render_page(lines, seed=seed_base + i)
        out.append((img, lines))
    return out


def build(
    out_dir: Path = DEFAULT_DIR,
    n_synth: int = 400,
    n_web: int = 300,
    n_pages: int = 30,
    exclude: frozenset[str] | None = None,
) -> Path:
    """Write the held-out set under out_dir (lines/ and pages/), replacing an older one.

    `exclude`: texts no line may have; by default those of the default training run.
    """
    lines_dir, pages_dir = out_dir / "lines", out_dir / "pages"
    for d in (lines_dir, pages_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    exclude = training_texts() if exclude is None else exclude
    rows = []
    for i, (img, text) in enumerate(synth_lines(n_synth, SEED_BASE, exclude)):
        name = f"synth-{i:04d}.png"
        img.save(lines_dir / name)
        rows.append((name, text))
    if n_web:
        for i, (img, text) in enumerate(chromium_lines(n_web, SEED_BASE + 10**6, exclude)):
            name = f"web-{i:04d}.png"
            img.save(lines_dir / name)
            rows.append((name, text))
    write_labels(lines_dir, rows)
    prow = []
    for i, (img, lines) in enumerate(pages(n_pages, SEED_BASE + 2 * 10**6, exclude)):
        name = f"page-{i:03d}.png"
        img.save(pages_dir / name)
        prow.append((name, "\\n".join(lines)))
    write_labels(pages_dir, prow)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmops_ocr.heldout", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_DIR)
    p.add_argument("--synth", type=int, default=400, help="lines from the training renderer")
    p.add_argument("--web", type=int, default=300, help="lines rendered by headless Chromium")
    p.add_argument("--pages", type=int, default=30)
    a = p.parse_args(argv)
    out = build(a.out, a.synth, a.web, a.pages)
    print(f"held-out set written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
