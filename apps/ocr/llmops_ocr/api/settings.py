"""The API's effective settings, read once from its service config (schemas/api.schema.json)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops_ocr.config import ConfigError, load_config

DEFAULT_MODELS_DIR = "/opt/llmops/current/models"


@dataclass(frozen=True)
class ApiSettings:
    """What the API needs from its config; defaults match schemas/api.schema.json."""

    model_name: str = "crnn-ocr"
    default_version: str = "1.1.0"
    models_dir: Path = Path(DEFAULT_MODELS_DIR)
    threads_per_worker: int = 1
    max_batch_size: int = 16
    max_wait_ms: int = 5
    max_queue: int = 256
    max_upload_bytes: int = 10 * 1024 * 1024
    # A decoded image larger than this is treated as a decompression bomb (422).
    max_image_pixels: int = 40_000_000
    database: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ApiSettings:
        """Build settings from a config dict, raising ConfigError naming the bad key."""

        def section(key: str) -> Mapping[str, Any]:
            value = cfg.get(key, {})
            if not isinstance(value, Mapping):
                raise ConfigError(f"api config: {key} must be an object")
            return value

        def integer(where: str, value: Any, minimum: int) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"api config: {where} must be an integer >= {minimum}")
            return value

        model = section("model")
        batching = section("batching")
        db = cfg.get("database")
        if db is not None and not isinstance(db, Mapping):
            raise ConfigError("api config: database must be an object")
        return cls(
            model_name=str(model.get("name", cls.model_name)),
            default_version=str(model.get("version", cls.default_version)),
            models_dir=Path(str(cfg.get("models_dir", DEFAULT_MODELS_DIR))),
            threads_per_worker=integer(
                "threads_per_worker", cfg.get("threads_per_worker", cls.threads_per_worker), 1
            ),
            max_batch_size=integer(
                "batching.max_batch_size",
                batching.get("max_batch_size", cls.max_batch_size),
                1,
            ),
            max_wait_ms=integer(
                "batching.max_wait_ms", batching.get("max_wait_ms", cls.max_wait_ms), 0
            ),
            max_queue=integer("batching.max_queue", batching.get("max_queue", cls.max_queue), 1),
            max_upload_bytes=integer(
                "max_upload_bytes", cfg.get("max_upload_bytes", cls.max_upload_bytes), 1
            ),
            database=db,
            raw=cfg,
        )

    @classmethod
    def load(cls) -> ApiSettings:
        """Settings from ``$LLMOPS_CONFIG`` or /etc/llmops/api.json."""
        return cls.from_config(load_config("api"))
