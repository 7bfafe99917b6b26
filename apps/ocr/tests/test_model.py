"""The CRNN: training lowers the loss, model dirs round-trip, the shipped weights read lines."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from llmops_ocr import synth, train
from llmops_ocr.model import (
    CRNN,
    LINE_FRAME,
    count_params,
    fuse_for_inference,
    pad_batch,
    preprocess_array,
    preprocess_line,
    save_model_dir,
)
from llmops_ocr.recognizer import ModelDirError, Recognizer
from PIL import ImageOps

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "crnn-ocr" / "1.1.0"
DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
LIBERATION_SERIF = "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf"


def test_short_training_run_lowers_the_loss():
    torch.set_num_threads(1)
    data = train.render_set(96, base=7_000_000, workers=1, cache=False)
    torch.manual_seed(0)
    model = CRNN(channels=[8, 16, 32, 32], hidden=32, lstm_layers=1)
    _, losses = train.train(data, steps=40, batch_size=16, lr=3e-3, log_every=0, model=model)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_model_dir_round_trip_and_corrupt_weights(tmp_path):
    torch.manual_seed(0)
    model = CRNN(channels=[8, 16, 16, 32], hidden=16, lstm_layers=1)
    d = save_model_dir(model, tmp_path / "crnn-ocr" / "9.9.9", "crnn-ocr", "9.9.9", {"note": "x"})
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["version"] == "9.9.9" and meta["input_height"] == 32
    assert meta["params"] == count_params(model) and meta["note"] == "x"
    rec = Recognizer.load(d)
    assert (rec.name, rec.version, rec.sha256) == ("crnn-ocr", "9.9.9", meta["sha256"])
    line = synth.render_line("abc", seed=1)
    assert rec.preprocess(line).shape[:2] == (1, 32)
    (d / "model.pt").write_bytes((d / "model.pt").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelDirError, match="sha256"):
        Recognizer.load(d)


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    return Recognizer.load(SHIPPED)


def test_shipped_metadata_describes_the_weights(shipped):
    meta = shipped.metadata
    assert meta["name"] == "crnn-ocr" and meta["version"] == "1.1.0"
    assert meta["input_height"] == 32 and len(meta["charset"]) == 95
    assert meta["training"]["command"].startswith("python -m llmops_ocr.train")
    assert meta["size_mb"] < 10


@pytest.mark.parametrize(
    ("text", "font", "size"),
    [
        ("Invoice No. 4471, due 2025-03-14: $1,280.50", DEJAVU, 28),
        ("The quick brown fox jumps over the lazy dog.", LIBERATION_SERIF, 32),
        ("Call (555) 014-2236 or mail info@example.org", None, None),
    ],
)
def test_shipped_weights_read_a_fresh_line_exactly(shipped, text, font, size):
    img = synth.render_line(text, seed=424242, font=font, size=size, augment=font is not None)
    [(got, conf)] = shipped.recognize_lines([img])
    assert got == text
    assert 0.5 < conf <= 1.0


def test_batching_does_not_change_what_a_line_reads(shipped):
    rng = random.Random(99)
    texts = ["ok", "A much longer line of text, with 12 numbers and symbols: 3/4 = 0.75!"]
    texts += [synth.make_text(rng, "heldout") for _ in range(6)]
    imgs = [synth.render_line(t, seed=900 + i) for i, t in enumerate(texts)]
    alone = [shipped.recognize_lines([im])[0][0] for im in imgs]
    together = [t for t, _ in shipped.recognize_lines(imgs)]
    assert together == alone


def test_training_is_reproducible_with_a_fixed_seed():
    torch.set_num_threads(1)
    data = train.render_set(48, base=7_100_000, workers=1, cache=False)
    states = []
    for run in range(2):
        torch.manual_seed(run)  # whatever the global state: train() seeds the initial weights
        model, _ = train.train(data, steps=4, batch_size=8, log_every=0, seed=3)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_fast_preprocessing_equals_the_training_preprocessing():
    """The Recognizer's histogram-based preprocess_line gives training's pixels, bit for bit."""
    rng = random.Random(5)
    imgs = [synth.render_line(synth.make_text(rng), seed=3000 + i) for i in range(60)]
    imgs += [synth.render_line("dark", seed=1, dark=True), synth.render_line(".", seed=2)]
    for im in imgs:
        assert np.array_equal(preprocess_line(im), preprocess_array(im))


def test_recognizer_sequence_equals_the_packed_lstm():
    """The dense per-line-reversed LSTM gives CRNN.sequence's log-probs on every real step."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = CRNN(channels=[8, 16, 16, 32], hidden=24, lstm_layers=2)
    rec = Recognizer(fuse_for_inference(model), {"name": "t", "version": "0"}, "fp32")
    imgs = [synth.render_line(t, seed=i) for i, t in enumerate(["a", "two words", "x" * 40])]
    batch, lengths = pad_batch([preprocess_line(im) for im in imgs])
    with torch.inference_mode():
        f = rec._conv(batch)
        want, got = model.sequence(f, lengths), rec._sequence(f, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert torch.allclose(got[i, :n], want[i, :n], atol=1e-5)


def test_wide_blank_margins_are_framed_away(shipped):
    """A line with much blank space above and below is read at the size of a tight crop."""
    text = "Margins 2024-05-17: $88.10"
    img = synth.render_line(text, seed=7, font=DEJAVU, size=26, augment=False)
    roomy = ImageOps.expand(img, border=(0, 70, 0, 90), fill=255)
    tight_w = preprocess_line(img).shape[1]
    assert preprocess_line(roomy).shape[1] < 0.5 * tight_w  # unframed: text a third the size
    assert preprocess_line(roomy, LINE_FRAME).shape[1] > 0.65 * tight_w
    assert shipped.recognize_lines([roomy])[0][0] == text
