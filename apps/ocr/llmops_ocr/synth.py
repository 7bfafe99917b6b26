"""Synthetic training and evaluation data: text lines and pages rendered with system fonts.

Everything here is deterministic given a seed: the same seed gives the same text, font, size,
colours and augmentations, hence the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .charset import CHARSET
from .page import rotate_box

# Debian font packages installed by scripts/apt-packages.txt (see README).
FONT_DIRS = [
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/truetype/liberation",
    "/usr/share/fonts/truetype/freefont",
    "/usr/share/fonts/truetype/noto",
    "/usr/share/fonts/opentype/urw-base35",
    "/usr/share/fonts/truetype/roboto",
    "/usr/share/fonts/truetype/open-sans",
    "/usr/share/fonts/truetype/crosextra",
]
# Latin text faces only: no symbol, dingbat, maths or script fonts, no non-Latin Noto families.
_NOTO_LATIN = re.compile(r"^Noto(Sans|Serif)(Mono|Display)?-")
_EXCLUDE = re.compile(r"Math|Symbol|D050000L|Z003|ExtraLight|Thin", re.I)


@lru_cache(maxsize=1)
def font_paths() -> tuple[str, ...]:
    """Sorted paths of the usable fonts (a stable order, so seeds pick the same fonts)."""
    found = []
    for d in FONT_DIRS:
        for p in sorted(Path(d).rglob("*")):
            if p.suffix.lower() not in (".ttf", ".otf") or _EXCLUDE.search(p.name):
                continue
            if "/noto" in str(p.parent) and not _NOTO_LATIN.match(p.name):
                continue
            found.append(str(p))
    if not found:
        raise RuntimeError(
            "no fonts found under /usr/share/fonts: install the packages listed in "
            "scripts/apt-packages.txt (fonts-dejavu, fonts-liberation, ...)"
        )
    return tuple(found)


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


# ---------------------------------------------------------------------------------------- text


@lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    text = resources.files("llmops_ocr").joinpath("data/corpus.txt").read_text()
    return tuple(s for s in text.splitlines() if s.strip())


def _is_heldout(sentence: str) -> bool:
    return hashlib.md5(sentence.encode()).digest()[0] % 10 == 0


@lru_cache(maxsize=2)
def sentences(split: str) -> tuple[str, ...]:
    """Corpus sentences of one split: 'train' (90%) or 'heldout' (10%), split by text hash."""
    want = split == "heldout"
    return tuple(s for s in corpus() if _is_heldout(s) == want)


@lru_cache(maxsize=2)
def vocabulary(split: str) -> tuple[str, ...]:
    words = set()
    for s in sentences(split):
        for w in s.split():
            w = w.strip(".,;:!?()[]{}'\"`")
            if w.isalpha() and 1 < len(w) < 16:
                words.add(w)
    return tuple(sorted(words))


_MONTHS = "January February March April May June July August September October November December"
_MONTHS_L = _MONTHS.split()
_TLDS = ["com", "org", "net", "io", "de", "co.uk", "fr", "edu"]
_PUNCT = [",", ".", ";", ":", "!", "?", "...", ")", '"', "'"]


def _number(rng: random.Random) -> str:
    k = rng.random()
    if k < 0.3:
        return str(rng.randint(0, 99))
    if k < 0.5:
        return str(rng.randint(100, 99999))
    if k < 0.7:
        return f"{rng.uniform(0, 10000):,.2f}"
    if k < 0.85:
        return f"{rng.uniform(0, 100):.{rng.randint(1, 3)}f}"
    return f"{rng.randint(1, 9999999):,}"


def _token(rng: random.Random, words: tuple[str, ...]) -> str:
    """A structured token: a date, price, time, id, e-mail, URL, code fragment, ..."""
    w = rng.choice(words)
    y, mo, d = rng.randint(1950, 2039), rng.randint(1, 12), rng.randint(1, 28)
    choices = [
        lambda: f"{y}-{mo:02d}-{d:02d}",
        lambda: f"{d:02d}/{mo:02d}/{y}",
        lambda: f"{mo}/{d}/{y % 100:02d}",
        lambda: f"{_MONTHS_L[mo - 1]} {d}, {y}",
        lambda: f"{d} {_MONTHS_L[mo - 1][:3]} {y}",
        lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        lambda: f"${rng.uniform(0, 5000):,.2f}",
        lambda: f"{rng.uniform(0, 999):.2f} EUR",
        lambda: f"{rng.randint(0, 100)}%",
        lambda: f"{rng.uniform(0, 100):.1f}%",
        lambda: f"+{rng.randint(1, 99)} {rng.randint(10, 999)} {rng.randint(1000, 9999999)}",
        lambda: f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}",
        lambda: f"{w.lower()}.{rng.choice(words).lower()}@{rng.choice(words).lower()}.com",
        lambda: f"https://www.{w.lower()}.{rng.choice(_TLDS)}/{rng.choice(words).lower()}",
        lambda: f"#{rng.randint(1, 99999)}",
        lambda: (
            f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(0, 999)}"
            f"-{rng.randint(0, 9999):04d}"
        ),
        lambda: f"No. {rng.randint(1, 999)}",
        lambda: f"{rng.randint(1, 20)} x {rng.uniform(0, 99):.2f}",
        lambda: f"{w}({rng.randint(0, 9)}, {rng.choice(words)})",
        lambda: f"[{rng.randint(0, 99)}]",
        lambda: f"{{'{w}': {rng.randint(0, 999)}}}",
        lambda: f"<{w.lower()}>",
        lambda: f"{w.lower()}_{rng.choice(words).lower()}",
        lambda: f"a{rng.choice('+-*/=<>')}b",
        lambda: f"~/{w.lower()}/{rng.choice(words).lower()}.txt",
        lambda: f"C:\\{w}\\{rng.choice(words)}",
        lambda: f"{w} & {rng.choice(words)}",
        lambda: f"{w}-{rng.choice(words).lower()}",
        lambda: f"x^{rng.randint(2, 9)}",
        lambda: f"{rng.randint(1, 99)}/{rng.randint(1, 99)}",
        lambda: f"@{w.lower()}",
        lambda: f"Q{rng.randint(1, 4)} {y}",
        lambda: f"v{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        lambda: f"`{w.lower()}`",
        lambda: f"{w}|{rng.choice(words)}",
    ]
    return rng.choice(choices)()


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut


def make_text(rng: random.Random, split: str = "train", max_chars: int = 48) -> str:
    """One line of printable ASCII: prose, words with numbers/dates/prices, or symbols."""
    sents, words = sentences(split), vocabulary(split)
    target = rng.choice([rng.randint(1, 12), rng.randint(8, max_chars), rng.randint(16, max_chars)])
    k = rng.random()
    if k < 0.40:  # a run of prose from the corpus
        ws = rng.choice(sents).split()
        start = rng.randint(0, max(0, len(ws) - 2))
        text = " ".join(ws[start:])
    elif k < 0.72:  # words mixed with numbers, dates, prices and punctuation
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target:
            r = rng.random()
            if r < 0.55:
                w = rng.choice(words)
                w = w.capitalize() if rng.random() < 0.2 else w
                parts.append(w + (rng.choice(_PUNCT) if rng.random() < 0.15 else ""))
            elif r < 0.75:
                parts.append(_number(rng))
            else:
                parts.append(_token(rng, words))
        text = " ".join(parts)
    elif k < 0.94:  # a label: value line, as on forms and invoices
        label = " ".join(rng.choice(words).capitalize() for _ in range(rng.randint(1, 2)))
        sep = rng.choice([": ", " - ", " = ", " ", ":\u0020\u0020"])
        text = label + sep + _token(rng, words)
        if rng.random() < 0.5:
            text += " " + _token(rng, words)
    else:  # random characters, so that every symbol is seen often enough
        n = rng.randint(1, min(24, max_chars))
        text = "".join(rng.choice(CHARSET) for _ in range(n))
    if rng.random() < 0.07:
        text = text.upper()
    text = " ".join(_cut(text, target).split())
    if not text:
        text = rng.choice(words)
    return text


# ---------------------------------------------------------------------------------- rendering


def _colours(rng: random.Random, dark: bool) -> tuple[int, int]:
    """(ink, paper) grey levels with enough contrast to read."""
    if dark:
        paper = rng.randint(0, 70)
        ink = rng.randint(min(255, paper + 90), 255)
    else:
        paper = rng.randint(170, 255)
        ink = rng.randint(0, max(0, paper - 100))
    return ink, paper


def _background(rng: random.Random, w: int, h: int, paper: int) -> Image.Image:
    k = rng.random()
    if k < 0.6:
        return Image.new("L", (w, h), paper)
    if k < 0.8:  # a smooth gradient, as on photos and scans
        a = np.linspace(0, 1, w)[None, :] * rng.uniform(-40, 40)
        b = np.linspace(0, 1, h)[:, None] * rng.uniform(-20, 20)
        arr = np.clip(paper + a + b, 0, 255)
        return Image.fromarray(arr.astype(np.uint8))
    # a blotchy paper texture
    nrng = np.random.default_rng(rng.randrange(2**32))
    small = nrng.normal(0, rng.uniform(5, 18), (max(1, h // 8), max(1, w // 8)))
    tex = np.asarray(Image.fromarray(small.astype(np.float32)).resize((w, h), Image.BILINEAR))
    return Image.fromarray(np.clip(paper + tex, 0, 255).astype(np.uint8))


def _augment(img: Image.Image, rng: random.Random, paper: int) -> Image.Image:
    if rng.random() < 0.35:  # small rotation
        img = img.rotate(rng.uniform(-1.5, 1.5), Image.BILINEAR, expand=True, fillcolor=paper)
    if rng.random() < 0.25:  # horizontal shear (slanted text)
        s = rng.uniform(-0.25, 0.25)
        w, h = img.size
        extra = int(abs(s) * h)
        img = img.transform(
            (w + extra, h),
            Image.AFFINE,
            (1, s, -extra if s > 0 else 0, 0, 1, 0),
            Image.BILINEAR,
            fillcolor=paper,
        )
    if rng.random() < 0.4:  # lower resolution: text only a few pixels high
        w, h = img.size
        f = rng.uniform(0.35, 0.9)
        if h * f >= 14:
            img = img.resize((max(1, int(w * f)), max(1, int(h * f))), Image.BILINEAR)
    if rng.random() < 0.3:  # defocus, never so strong that a person could not read it
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, max(0.4, img.size[1] / 40))))
    if rng.random() < 0.4:
        nrng = np.random.default_rng(rng.randrange(2**32))
        arr = np.asarray(img, np.float32) + nrng.normal(0, rng.uniform(2, 14), img.size[::-1])
        if rng.random() < 0.15:  # salt and pepper specks
            mask = nrng.random(arr.shape) < rng.uniform(0.001, 0.01)
            arr[mask] = nrng.choice([0, 255], size=int(mask.sum()))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(30, 80))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("L")
    return img


def render_line(
    text: str,
    seed: int = 0,
    font: str | None = None,
    size: int | None = None,
    augment: bool = True,
    dark: bool | None = None,
) -> Image.Image:
    """Render one text line as a grey PIL image; font, size, margins and noise come from seed."""
    rng = random.Random(seed)
    path = font or rng.choice(font_paths())
    size = size or rng.randint(16, 44)
    f = _font(path, size)
    if dark is None:
        dark = augment and rng.random() < 0.15
    ink, paper = _colours(rng, dark) if augment else ((255, 0) if dark else (0, 255))
    ascent, descent = f.getmetrics()
    x0, _, x1, _ = f.getbbox(text or " ", anchor="ls")
    top = int(rng.uniform(0.02, 0.35) * size) if augment else size // 6
    bottom = int(rng.uniform(0.02, 0.35) * size) if augment else size // 6
    left = int(rng.uniform(0.0, 1.2) * size) if augment else size // 2
    right = int(rng.uniform(0.0, 1.2) * size) if augment else size // 2
    w = max(1, x1 - min(0, x0)) + left + right
    h = ascent + descent + top + bottom
    img = _background(rng, w, h, paper) if augment else Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(img)
    stroke = 1 if augment and size >= 26 and rng.random() < 0.08 else 0
    draw.text(
        (left - min(0, x0), top + ascent),
        text,
        fill=ink,
        font=f,
        anchor="ls",
        stroke_width=stroke,
        stroke_fill=ink,
    )
    return _augment(img, rng, paper) if augment else img


def render_page(
    lines: list[str],
    seed: int = 0,
    width: int | None = None,
    font: str | None = None,
    size: int | None = None,
    skew_deg: float | None = None,
    noise: bool = True,
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """Render a page of lines (margins, uneven spacing, a slight skew).

    Returns the grey page image and, per line, the box (x0, y0, x1, y1) around its ink.
    """
    rng = random.Random(seed)
    path = font or rng.choice(font_paths())
    size = size or rng.randint(18, 34)
    f = _font(path, size)
    ink, paper = rng.randint(0, 60), rng.randint(215, 255)
    margin_x, margin_y = rng.randint(30, 90), rng.randint(30, 90)
    widths = [f.getbbox(t, anchor="ls")[2] for t in lines] or [0]
    w = width or max(widths) + 2 * margin_x
    ascent, descent = f.getmetrics()
    gaps = [int(size * rng.uniform(0.35, 1.6)) for _ in lines]
    h = 2 * margin_y + sum(ascent + descent + g for g in gaps)
    img = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[int, int, int, int]] = []
    y = margin_y
    for text, gap in zip(lines, gaps, strict=True):
        x = margin_x + (rng.randint(0, size) if rng.random() < 0.2 else 0)
        draw.text((x, y + ascent), text, fill=ink, font=f, anchor="ls")
        bx0, by0, bx1, by1 = draw.textbbox((x, y + ascent), text, font=f, anchor="ls")
        boxes.append((bx0, by0, bx1, by1))
        y += ascent + descent + gap
    angle = rng.uniform(-1.0, 1.0) if skew_deg is None else skew_deg
    if angle:
        img = img.rotate(angle, Image.BICUBIC, expand=False, fillcolor=paper)
        boxes = [rotate_box(b, angle, w, h) for b in boxes]
    if noise:
        nrng = np.random.default_rng(seed)
        arr = np.asarray(img, np.float32) + nrng.normal(0, rng.uniform(0, 8), (h, w))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    return img, boxes
