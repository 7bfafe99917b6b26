"""Loading every model version under ``models_dir`` and warming each one up."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from llmops_ocr.api import metrics
from llmops_ocr.api.batching import DynamicBatcher
from llmops_ocr.api.images import make_prepare
from llmops_ocr.api.settings import ApiSettings
from llmops_ocr.config import ConfigError
from llmops_ocr.recognizer import Recognizer

log = logging.getLogger(__name__)

BatchObserver = Callable[[str, int, list[float], float], None]
# metadata.json keys that are bulky or internal; /v1/models shows the rest.
_HIDDEN_METADATA = {"charset", "arch", "eval", "evaluation", "history", "training"}


@dataclass
class LoadedModel:
    recognizer: Recognizer
    batcher: DynamicBatcher
    load_seconds: float
    evaluation: dict[str, Any] = field(default_factory=dict)
    public_metadata: dict[str, Any] = field(default_factory=dict)


def _warm_up_image() -> Image.Image:
    img = Image.new("L", (160, 32), 255)
    ImageDraw.Draw(img).text((4, 10), "warm up 123", fill=0)
    return img


def _evaluation(meta: dict[str, Any]) -> dict[str, Any]:
    for key in ("evaluation", "eval", "metrics"):
        value = meta.get(key)
        if isinstance(value, dict):
            return value
    return {}


def version_dirs(settings: ApiSettings) -> list[Path]:
    """The ``<models_dir>/<name>/<version>/`` directories holding a metadata.json."""
    base = settings.models_dir / settings.model_name
    if not base.is_dir():
        raise ConfigError(
            f"{base}: no such directory; models_dir must hold {settings.model_name}/<version>/ "
            "with model.pt and metadata.json (see the api config's models_dir and model.name)"
        )
    return sorted(p for p in base.iterdir() if (p / "metadata.json").is_file())


def load_models(settings: ApiSettings, observer: BatchObserver) -> dict[str, LoadedModel]:
    """Load, verify and warm up every version; the default version must be among them."""
    dirs = version_dirs(settings)
    if settings.default_version not in {d.name for d in dirs}:
        raise ConfigError(
            f"{settings.models_dir / settings.model_name}: default version "
            f"{settings.default_version!r} not found (found: "
            f"{', '.join(d.name for d in dirs) or 'none'}); install it or change model.version"
        )
    lock = threading.Lock()  # one model call at a time per worker, whatever the version
    loaded: dict[str, LoadedModel] = {}
    for d in dirs:
        started = time.perf_counter()
        rec = Recognizer.load(d)
        version = str(rec.version)
        if version != d.name:
            raise ConfigError(
                f"{d}/metadata.json: version {version!r} does not match its directory name"
            )
        # Warm-up: a real inference through the path requests take (decode, page split,
        # preprocess, predict).
        prepare = make_prepare(rec, settings.max_image_pixels)
        buf = io.BytesIO()
        _warm_up_image().save(buf, format="PNG")
        tensors, _ = prepare((buf.getvalue(), "page"))
        tensors += prepare((buf.getvalue(), "line"))[0]
        results = rec.predict(tensors)
        if len(results) != len(tensors) or not all(isinstance(t, str) for t, _ in results):
            raise RuntimeError(f"{d}: warm-up inference returned {results!r}")
        seconds = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(version).set(seconds)

        def observe(size: int, waits: list[float], took: float, v: str = version) -> None:
            observer(v, size, waits, took)

        batcher = DynamicBatcher(
            rec.predict,
            prepare=prepare,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            lock=lock,
            observer=observe,
            name=f"infer-{version}",
        )
        meta = dict(rec.metadata)
        loaded[version] = LoadedModel(
            recognizer=rec,
            batcher=batcher,
            load_seconds=seconds,
            evaluation=_evaluation(meta),
            public_metadata={k: v for k, v in meta.items() if k not in _HIDDEN_METADATA},
        )
        log.info("loaded %s %s from %s in %.2fs", rec.name, version, d, seconds)
    return loaded
