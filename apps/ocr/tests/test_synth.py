"""The synthetic data generator: deterministic, printable ASCII, held-out text kept apart."""

import random

import numpy as np
from llmops_ocr import synth
from llmops_ocr.charset import CHARSET


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = np.asarray(synth.render_line("Total: $1,234.56", seed=7))
    b = np.asarray(synth.render_line("Total: $1,234.56", seed=7))
    c = np.asarray(synth.render_line("Total: $1,234.56", seed=8))
    assert a.shape == b.shape and (a == b).all()
    assert a.shape != c.shape or (a != c).any()


def test_many_font_families_are_installed_and_used():
    fonts = synth.font_paths()
    families = {f.rsplit("/", 1)[1].split("-")[0] for f in fonts}
    assert len(families) >= 20, families
    used = {random.Random(s).choice(fonts) for s in range(200)}
    assert len(used) > 50


def test_text_is_printable_ascii_with_varied_lengths():
    texts = [synth.make_text(random.Random(s)) for s in range(500)]
    assert all(t and set(t) <= set(CHARSET) for t in texts)
    lengths = [len(t) for t in texts]
    assert min(lengths) <= 3 and max(lengths) >= 40
    joined = "".join(texts)
    assert any(c.isdigit() for c in joined) and "$" in joined and "-" in joined


def test_heldout_text_shares_no_sentence_with_training():
    assert not set(synth.sentences("train")) & set(synth.sentences("heldout"))
    train = {synth.make_text(random.Random(2 * s), "train") for s in range(3000)}
    held = {synth.make_text(random.Random(2 * (10**9 + s)), "heldout") for s in range(300)}
    # Short lines (a word or a number) can coincide by chance; real lines must not.
    assert not {t for t in train & held if len(t) > 12}


def test_page_boxes_cover_the_ink_of_each_line():
    img, boxes = synth.render_page(["first line", "second, longer line", "3rd"], seed=1)
    assert len(boxes) == 3
    a = np.asarray(img) < 128
    for x0, y0, x1, y1 in boxes:
        assert a[y0:y1, x0:x1].sum() > 20
    assert [b[1] for b in boxes] == sorted(b[1] for b in boxes)
