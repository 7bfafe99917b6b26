"""Page segmentation on generated pages: skewed, uneven spacing, margins, noise."""

import random

import pytest
from llmops_ocr import page, synth
from PIL import ImageOps


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


@pytest.mark.parametrize("seed", range(12))
def test_splitter_finds_every_line_in_reading_order(seed):
    rng = random.Random(seed)
    lines = [synth.make_text(rng, "heldout", max_chars=40) for _ in range(rng.randint(2, 9))]
    img, truth = synth.render_page(lines, seed=seed)
    boxes = page.segment_lines(img)
    assert len(boxes) == len(lines)
    for got, want in zip(boxes, truth, strict=True):
        # Tiny lines (a lone quote mark) have loose true boxes: there, the centre must match.
        centre_y = (got[1] + got[3]) / 2
        assert _iou(got, want) > 0.5 or want[1] - 2 <= centre_y <= want[3] + 2, (got, want)


def test_light_text_on_dark_page_and_a_blank_page():
    img, _ = synth.render_page(["white on black", "still two lines"], seed=3, skew_deg=0.8)
    assert len(page.segment_lines(ImageOps.invert(img))) == 2
    blank = img.point(lambda _: 240)
    assert page.segment_lines(blank) == []


def test_skew_is_measured():
    img, _ = synth.render_page(["a fairly long line of text here"] * 6, seed=5, skew_deg=1.5)
    assert abs(page.estimate_skew(page.binarise(img)) + 1.5) < 0.35


def test_line_images_give_page_boxes_and_level_crops():
    lines = ["first line of the page", "and a second one", "3rd"]
    img, truth = synth.render_page(lines, seed=11, skew_deg=0.7)
    got = page.line_images(img)
    assert len(got) == len(truth)
    for (box, crop), want in zip(got, truth, strict=True):
        cx, cy = (want[0] + want[2]) / 2, (want[1] + want[3]) / 2
        assert box[0] <= cx <= box[2] and box[1] <= cy <= box[3], (box, want)
        assert crop.mode == "L" and crop.height < 3 * (want[3] - want[1])
