"""The OCR inference API (FastAPI): ``create_app()`` is the ASGI factory gunicorn calls.

Models are loaded in the lifespan, i.e. in each worker after gunicorn forked it; the worker
accepts requests only once every model version is loaded and a warm-up inference passed.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmops_ocr.api import balance, metrics
from llmops_ocr.api.auth import (
    Authenticator,
    AuthError,
    AuthUnavailableError,
    Principal,
)
from llmops_ocr.api.history import HistoryWriter
from llmops_ocr.api.ocr_endpoint import RETRY_AFTER_S, VERSION_PATTERN, OcrEndpoint
from llmops_ocr.api.registry import LoadedModel, load_models
from llmops_ocr.api.settings import ApiSettings
from llmops_ocr.config import read_credential

log = logging.getLogger("llmops_ocr.api")


class ModelRef(BaseModel):
    name: str
    version: str


class OcrLine(BaseModel):
    text: str
    confidence: float = Field(ge=0.0, le=1.0)
    box: list[int] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] in pixels")


class OcrResponse(BaseModel):
    model: ModelRef
    text: str = Field(description="The recognised lines joined by newlines")
    lines: list[OcrLine]
    elapsed_ms: float


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str
    default: bool
    evaluation: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    default: ModelRef
    models: list[ModelInfo]


class ErrorResponse(BaseModel):
    detail: Any


class NotFoundResponse(BaseModel):
    detail: str
    known_versions: list[str]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad parameters or missing `file` field"},
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token"},
    404: {"model": NotFoundResponse, "description": "Unknown model version"},
    413: {"model": ErrorResponse, "description": "Upload larger than max_upload_bytes"},
    415: {"model": ErrorResponse, "description": "Not multipart/form-data, or not an image"},
    422: {"model": ErrorResponse, "description": "Unreadable or decompression-bomb image"},
    503: {"model": ErrorResponse, "description": "Queue full or not ready; see Retry-After"},
}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The image (PNG, JPEG, TIFF, BMP, GIF, WebP)",
                        }
                    },
                    "required": ["file"],
                }
            }
        },
    }
}


@dataclass
class ApiState:
    settings: ApiSettings
    authenticator: Authenticator
    models: dict[str, LoadedModel] = field(default_factory=dict)
    history: HistoryWriter | None = None
    ready: bool = False


class ApiApp(FastAPI):
    """FastAPI, except that ``POST /v1/ocr``, the hot path, skips the middleware stack."""

    ocr: OcrEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ocr = self.ocr
        if (
            ocr is not None
            and scope["type"] == "http"
            and scope["path"] == ocr.path
            and scope["method"] == "POST"
        ):
            await ocr.direct(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _json_error(status: int, detail: Any, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The API application; settings default to the config at ``$LLMOPS_CONFIG``."""
    _configure_logging()
    settings = settings or ApiSettings.load()
    token = read_credential("api-token")
    assert token is not None
    engine = None
    if settings.database is not None:
        from llmops_ocr.db import make_engine, url_from_config

        engine = make_engine(
            url_from_config(settings.database),
            pool_size=2,
            max_overflow=2,
            pool_timeout=2,
            **(
                {"connect_args": {"connect_timeout": 3}}
                if settings.database.get("engine") == "postgresql"
                else {}
            ),
        )
    state = ApiState(settings=settings, authenticator=Authenticator(token, engine))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import torch

        torch.set_num_threads(settings.threads_per_worker)
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
            torch.set_num_interop_threads(1)
        state.models = await asyncio.to_thread(load_models, settings, metrics.observe_batch)
        if engine is not None:
            state.history = HistoryWriter(engine)
        state.ready = True
        metrics.READY_WORKERS.inc()
        log.info(
            "ready: %s versions %s (default %s)",
            settings.model_name,
            ", ".join(state.models),
            settings.default_version,
        )
        try:
            yield
        finally:
            state.ready = False
            metrics.READY_WORKERS.dec()
            for lm in state.models.values():
                await asyncio.to_thread(lm.batcher.close)
            if state.history is not None:
                await asyncio.to_thread(state.history.close)

    app = ApiApp(
        title="llmops OCR inference API",
        version=_package_version(),
        description="Recognise text in line or page images with the CRNN OCR model.",
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(metrics.MetricsMiddleware)
    balancer = balance.this_worker()
    app.ocr = ocr_endpoint = OcrEndpoint(state, balancer)
    if balancer is not None:  # under gunicorn: even out keep-alive connections across workers
        app.add_middleware(balance.BalanceMiddleware, balancer=balancer)

    @app.exception_handler(RequestValidationError)
    async def bad_params(_: HttpRequest, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return _json_error(400, errors)

    bearer = HTTPBearer(auto_error=False, description="The service token or a client API key")

    async def principal(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        request: HttpRequest,
    ) -> Principal:
        try:
            return await state.authenticator.authenticate(request.headers.get("authorization"))
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        except AuthUnavailableError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None

    @app.get("/healthz", tags=["health"], summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Ready: models loaded and warm-up inference passed",
        responses={503: {"model": ErrorResponse}},
    )
    async def readyz() -> Response:
        alive = state.ready and all(lm.batcher.alive for lm in state.models.values())
        if not alive:
            return _json_error(503, "not ready", headers={"Retry-After": RETRY_AFTER_S})
        return JSONResponse({"status": "ready", "versions": sorted(state.models)})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics of all workers")
    async def metrics_endpoint() -> Response:
        body, ctype = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=ctype)

    @app.get(
        "/v1/models",
        response_model=ModelsResponse,
        tags=["ocr"],
        summary="Loaded model versions",
        responses={401: ERRORS[401]},
    )
    async def list_models(_: Annotated[Principal, Depends(principal)]) -> ModelsResponse:
        return ModelsResponse(
            default=ModelRef(name=settings.model_name, version=settings.default_version),
            models=[
                ModelInfo(
                    name=lm.recognizer.name,
                    version=v,
                    sha256=lm.recognizer.sha256,
                    default=v == settings.default_version,
                    evaluation=lm.evaluation,
                    metadata=lm.public_metadata,
                )
                for v, lm in sorted(state.models.items())
            ],
        )

    @app.post(
        "/v1/ocr",
        response_model=OcrResponse,
        tags=["ocr"],
        summary="Recognise the text in an image",
        responses=ERRORS,
        openapi_extra=UPLOAD_BODY,
    )
    async def ocr(
        _: Annotated[Principal, Depends(principal)],
        model_version: Annotated[
            str | None,
            Query(
                pattern=VERSION_PATTERN,
                description="Model version (see /v1/models); the default version if omitted",
            ),
        ] = None,
        mode: Annotated[
            Literal["line", "page"],
            Query(description="`line`: the image is one text line; `page`: split it into lines"),
        ] = "page",
    ) -> OcrResponse:
        """Declaration only: the schema is generated from it; OcrEndpoint serves the requests."""
        raise NotImplementedError

    @app.exception_handler(HTTPException)
    async def http_error(_: HttpRequest, exc: HTTPException) -> JSONResponse:
        return _json_error(exc.status_code, exc.detail, headers=exc.headers)

    # Generate (and cache) the OpenAPI schema from the declared routes. ApiApp hands every
    # POST /v1/ocr to the lean handler; in the router the same handler replaces the declaration,
    # which then only answers other methods (405) and /v1/ocr/ (redirect) like any route.
    app.openapi()
    for i, route in enumerate(app.router.routes):
        if isinstance(route, APIRoute) and route.path == OcrEndpoint.path:
            app.router.routes[i] = Route(OcrEndpoint.path, ocr_endpoint, methods=["POST"])
    return app


def _configure_logging() -> None:
    """Our log lines go to stderr (the journal under systemd) at $LOG_LEVEL, default info."""
    root = logging.getLogger()
    if root.handlers:
        return
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "INFO",
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("llmops-ocr")
    except Exception:
        return "0"
