"""Page OCR: binarise a page, undo a slight skew, split it into lines, recognise them in batches."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

if TYPE_CHECKING:
    from .recognizer import Recognizer

Box = tuple[int, int, int, int]
MAX_SKEW_DEG = 3.0


def rotate_box(box: Box, angle: float, w: int, h: int) -> Box:
    """The axis-aligned box around `box` after PIL's `rotate(angle)` about the image centre."""
    cx, cy = w / 2, h / 2
    a = math.radians(angle)
    ca, sa = math.cos(a), math.sin(a)
    xs, ys = [], []
    for x, y in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
        dx, dy = x - cx, y - cy
        # rotate(angle) turns the picture counter-clockwise as seen on screen (y grows down)
        xs.append(cx + dx * ca + dy * sa)
        ys.append(cy - dx * sa + dy * ca)
    return (
        max(0, math.floor(min(xs))),
        max(0, math.floor(min(ys))),
        min(w, math.ceil(max(xs))),
        min(h, math.ceil(max(ys))),
    )


def _otsu(a: np.ndarray) -> float:
    hist = np.bincount(a.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    omega = np.cumsum(hist) / total
    mu = np.cumsum(hist * np.arange(256)) / total
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(np.argmax(between))


def _grey_dark_ink(img: Image.Image) -> Image.Image:
    """Grey version of the page with dark ink on light paper (inverts light-on-dark pages)."""
    g = ImageOps.grayscale(img) if img.mode != "L" else img
    a = np.asarray(g)
    if a.size and np.median(a) < (int(a.min()) + int(a.max())) / 2:
        g = ImageOps.invert(g)
    return g


def binarise(grey: Image.Image) -> np.ndarray:
    """Boolean ink mask (True = ink) of a dark-ink page; speckle noise is filtered out first."""
    smooth = np.asarray(grey.filter(ImageFilter.MedianFilter(3)))
    if smooth.size == 0 or int(smooth.max()) - int(smooth.min()) < 32:
        return np.zeros(smooth.shape, bool)
    return smooth < _otsu(smooth)


def estimate_skew(ink: np.ndarray) -> float:
    """The rotation (degrees, for PIL rotate) that makes text rows horizontal.

    Tries small angles and keeps the one whose horizontal projection profile is sharpest; for
    angles this small a rotation is a vertical shear, computed on the ink pixels' coordinates.
    """
    h, w = ink.shape
    step = max(1, max(h, w) // 800)
    ys, xs = np.nonzero(ink[::step, ::step])
    if ys.size == 0:
        return 0.0
    xs = xs.astype(np.float64) - xs.mean()
    ys = ys.astype(np.float64)

    def score(angle: float) -> float:
        # PIL's rotate(angle) moves a point at x (from the centre) up by x * tan(angle).
        rows = np.round(ys - xs * math.tan(math.radians(angle))).astype(np.int64)
        prof = np.bincount(rows - rows.min())
        return float(np.sum(np.diff(prof.astype(np.float64)) ** 2))

    angles = np.arange(-MAX_SKEW_DEG, MAX_SKEW_DEG + 1e-6, 0.25)
    best = max(angles, key=score)
    fine = np.arange(best - 0.25, best + 0.25 + 1e-6, 0.05)
    return round(float(max(fine, key=score)), 2)


def _row_bands(ink: np.ndarray) -> list[tuple[int, int]]:
    """Runs of rows that hold ink (a horizontal projection profile), small gaps closed."""
    prof = ink.sum(axis=1)
    rows = prof > max(1, int(0.002 * ink.shape[1]))
    bands: list[tuple[int, int]] = []
    y = 0
    n = len(rows)
    while y < n:
        if rows[y]:
            y0 = y
            while y < n and rows[y]:
                y += 1
            bands.append((y0, y))
        y += 1
    if not bands:
        return []
    heights = sorted(b - a for a, b in bands)
    typical = heights[len(heights) // 2]
    # Merge a thin band (an i-dot row, an accent, an underline) into its close neighbour.
    merged: list[tuple[int, int]] = []
    for a, b in bands:
        if merged:
            pa, pb = merged[-1]
            thin = (b - a) < 0.35 * typical or (pb - pa) < 0.35 * typical
            if thin and a - pb < 0.3 * typical:
                merged[-1] = (pa, b)
                continue
        merged.append((a, b))
    return [(a, b) for a, b in merged if b - a >= 3]


# Line boxes span this many x-heights above and below the baseline. Tuned on 60 generated dev
# pages apart from the held-out set (bench/ocr_framing.py): with crnn-ocr 1.0.0 their CER went
# from 2.27% (2.3, 0.9) to 0.79%.
PAGE_FRAME = (1.9, 0.75)


def _core(ink: np.ndarray, y0: int, y1: int) -> tuple[int, int]:
    """(top, bottom) rows of a band's dense core: the x-height zone (cap height in capitals)."""
    prof = ink[y0:y1].sum(axis=1)
    dense = np.nonzero(prof >= 0.5 * prof.max())[0]
    return y0 + int(dense[0]), y0 + int(dense[-1]) + 1


def _segment(ink: np.ndarray) -> list[Box]:
    """Line boxes shaped like the training lines: full ascender and descender room plus a margin.

    A tight box around the ink of a line without descenders (or without ascenders) would make
    its letters look larger once scaled to 32 px; so each box is laid out from the line's
    baseline and the page's typical x-height instead.
    """
    above, below = PAGE_FRAME
    h, w = ink.shape
    bands = _row_bands(ink)
    cores = [_core(ink, y0, y1) for y0, y1 in bands]
    heights = sorted(b - a for a, b in cores)
    xh_page = heights[len(heights) // 2] if heights else 0
    boxes: list[Box] = []
    for (y0, y1), (c0, c1) in zip(bands, cores, strict=True):
        cols = np.nonzero(ink[y0:y1].any(axis=0))[0]
        if cols.size == 0:
            continue
        core = c1 - c0
        xh = xh_page if 0.6 * xh_page <= core <= 1.6 * xh_page else core
        xh = max(xh, 4)
        top = min(y0 - 2, int(c1 - above * xh))
        bottom = max(y1 + 2, int(c1 + below * xh))
        ph = max(3, int(0.8 * xh))
        boxes.append(
            (
                max(0, int(cols[0]) - ph),
                max(0, top),
                min(w, int(cols[-1]) + 1 + ph),
                min(h, bottom),
            )
        )
    return boxes


def _deskewed(img: Image.Image) -> tuple[Image.Image, np.ndarray, float]:
    grey = _grey_dark_ink(img)
    ink = binarise(grey)
    angle = estimate_skew(ink) if ink.any() else 0.0
    if abs(angle) >= 0.1:
        paper = int(np.median(np.asarray(grey)))
        grey = grey.rotate(angle, Image.BICUBIC, fillcolor=paper)
        ink = binarise(grey)  # (turning the mask instead is cheaper but reads worse)
    else:
        angle = 0.0
    return grey, ink, angle


def segment_lines(img: Image.Image) -> list[Box]:
    """Boxes (x0, y0, x1, y1) of the text lines of a page, top to bottom, in page coordinates."""
    return [box for box, _ in line_images(img)]


def line_images(img: Image.Image) -> list[tuple[Box, Image.Image]]:
    """The lines of a page, top to bottom: (box in page coordinates, grey crop of the line).

    The crops come from the deskewed page (level text, as the recogniser was trained on); for
    callers that batch crops themselves (the API's batcher).
    """
    grey, ink, angle = _deskewed(img)
    w, h = grey.size
    return [
        (rotate_box(box, -angle, w, h) if angle else box, grey.crop(box)) for box in _segment(ink)
    ]


def ocr_page(
    recognizer: Recognizer, img: Image.Image, batch_size: int = 32
) -> list[dict[str, Any]]:
    """Read a page: [{"text", "confidence", "box": [x0, y0, x1, y1]}] in reading order."""
    lines = line_images(img)
    tensors = [recognizer.preprocess(crop) for _, crop in lines]
    # Batch lines of similar width together, so little of each batch is padding.
    order = sorted(range(len(tensors)), key=lambda i: tensors[i].shape[-1])
    results: list[tuple[str, float]] = [("", 0.0)] * len(tensors)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, r in zip(idx, recognizer.predict([tensors[i] for i in idx]), strict=True):
            results[i] = r
    return [
        {"text": text, "confidence": conf, "box": list(box)}
        for (box, _), (text, conf) in zip(lines, results, strict=True)
        if text.strip()
    ]
