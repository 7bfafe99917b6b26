"""Uploaded bytes -> line tensors and boxes (runs on the batch thread), with clear 4xx errors."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from llmops_ocr import page
from llmops_ocr.recognizer import Recognizer

# Decoders exposed to uploads; PIL also knows formats without a magic number (TGA, ...) that
# would take arbitrary bytes for an image.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM")
# Lines wider than this after scaling to 32 px high are refused (line mode) or cut (page mode):
# the recurrent layer's cost grows with width and one such line would pad a whole batch.
MAX_LINE_WIDTH = 8192


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes -> a fully loaded greyscale image, or HTTPException 415 / 422."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise HTTPException(
                    422,
                    f"image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels "
                    "(decompression bomb?); scale it down",
                )
            if w < 1 or h < 1:
                raise HTTPException(422, f"image of {w}x{h} pixels has no content")
            img.load()
            return img.convert("L")
    except HTTPException:
        raise
    except UnidentifiedImageError:
        raise HTTPException(
            415, "the upload is not an image; send PNG, JPEG, TIFF, BMP, GIF, WebP or PPM"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise HTTPException(
            422, f"image exceeds the limit of {max_pixels} pixels (decompression bomb?)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError) as exc:
        raise HTTPException(422, f"the image is corrupt or truncated: {exc}") from None


def line_tensors(
    recognizer: Recognizer, img: Image.Image, mode: str
) -> tuple[list[Any], list[list[int]]]:
    """(line tensors, boxes): the whole image as one line, or the lines of a page."""
    if mode == "line":
        tensor = recognizer.preprocess(img)
        if tensor.shape[-1] > MAX_LINE_WIDTH:
            raise HTTPException(
                422,
                f"the line is too long ({img.width}x{img.height} px scales to more than "
                f"{MAX_LINE_WIDTH} px at 32 px high); send a page with mode=page",
            )
        return [tensor], [[0, 0, img.width, img.height]]
    # The steps of page.ocr_page up to recognition, which goes through the batcher instead so
    # that lines of concurrent requests share model calls.
    lines = page.line_images(img)
    tensors = [recognizer.preprocess(crop)[..., :MAX_LINE_WIDTH] for _, crop in lines]
    return tensors, [[int(v) for v in box] for box, _ in lines]


def make_prepare(
    recognizer: Recognizer, max_pixels: int
) -> Callable[[tuple[bytes, str]], tuple[list[Any], list[list[int]]]]:
    """The batcher's prepare step for (uploaded bytes, mode) jobs."""

    def prepare(job: tuple[bytes, str]) -> tuple[list[Any], list[list[int]]]:
        data, mode = job
        return line_tensors(recognizer, decode_image(data, max_pixels), mode)

    return prepare
