"""``POST /v1/ocr`` as a lean ASGI handler: the API's hot path.

FastAPI's dependency injection, form parsing (python-multipart) and response models cost about as
much CPU per request as a small model call; at 30+ requests in flight that overhead was a quarter
of what the API spent per line. This handler does the same work directly: bearer auth, the two
query parameters, the upload read while streaming (413 past the limit), a small multipart parser,
the batcher, a JSON answer. The route is still declared in FastAPI (app.py) so that /docs,
/openapi.json and schemathesis describe it; this handler is mounted in front of it and answers
every status code of that description the same way.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import HTTPException
from starlette.types import Receive, Scope, Send

from llmops_ocr.api import metrics
from llmops_ocr.api.auth import AuthError, AuthUnavailableError, Principal
from llmops_ocr.api.batching import BatcherStoppedError, QueueFullError

if TYPE_CHECKING:
    from llmops_ocr.api.app import ApiState

VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"
_VERSION_RE = re.compile(VERSION_PATTERN)
RETRY_AFTER_S = "1"
MODES = ("line", "page")
MAX_FIELDS = 8  # multipart parts per request
MAX_FIELD_BYTES = 64 * 1024  # a part that is not a file
_PARAM_RE = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class BadRequestError(Exception):
    """A response to send instead of the OCR result: status, detail, headers, extra fields."""

    def __init__(
        self,
        status: int,
        detail: Any,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers or {}, extra


def _params(header_value: str) -> dict[str, str]:
    """``; a=b; c="d"`` parameters of a header value, names lowercased, quotes removed."""
    out = {}
    for name, value in _PARAM_RE.findall(header_value):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[name.lower()] = value
    return out


def parse_multipart(body: bytes, content_type: str) -> bytes:
    """The content of the ``file`` part (a part with a file name) of a multipart/form-data body.

    Raises BadRequestError(400) for a malformed body or one without such a part.
    """
    boundary = _params(content_type).get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise BadRequestError(400, "malformed multipart body: no boundary in Content-Type")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise BadRequestError(400, "malformed multipart body: the boundary never appears")
    pos = start + len(delimiter)
    found: bytes | None = None
    parts = 0
    while True:
        if body.startswith(b"--", pos):
            break  # the closing delimiter
        if not body.startswith(b"\r\n", pos):
            raise BadRequestError(400, "malformed multipart body: bad delimiter line")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        end = body.find(b"\r\n" + delimiter, head_end + 4) if head_end >= 0 else -1
        if end < 0:
            raise BadRequestError(400, "malformed multipart body: a part is not terminated")
        parts += 1
        if parts > MAX_FIELDS:
            raise BadRequestError(400, f"malformed multipart body: more than {MAX_FIELDS} parts")
        disposition = ""
        for line in body[pos + 2 : head_end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-disposition":
                disposition = value.decode("latin-1")
        params = _params(disposition)
        content = body[head_end + 4 : end]
        if "filename" in params:
            if found is not None:
                raise BadRequestError(400, "malformed multipart body: send exactly one file")
            if params.get("name") == "file":
                found = content
        elif len(content) > MAX_FIELD_BYTES:
            raise BadRequestError(
                400, f"malformed multipart body: a field is larger than {MAX_FIELD_BYTES} bytes"
            )
        pos = end + 2 + len(delimiter)
    if found is None:
        raise BadRequestError(400, "the multipart body has no file field named 'file'")
    return found


def _query(scope: Scope, default_version: str) -> tuple[str, str]:
    """(model_version, mode) from the query string, or BadRequestError(400) like FastAPI's."""
    version: str | None = None
    mode = "page"
    errors = []
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True):
        if name == "model_version":
            if not _VERSION_RE.match(value):
                errors.append(
                    {
                        "loc": ["query", "model_version"],
                        "msg": f"String should match pattern '{VERSION_PATTERN}'",
                        "type": "string_pattern_mismatch",
                    }
                )
            version = value
        elif name == "mode":
            if value not in MODES:
                errors.append(
                    {
                        "loc": ["query", "mode"],
                        "msg": "Input should be 'line' or 'page'",
                        "type": "literal_error",
                    }
                )
            mode = value
    if errors:
        raise BadRequestError(400, errors)
    return version or default_version, mode


class OcrEndpoint:
    """The ASGI app serving ``POST /v1/ocr`` (see the module docstring)."""

    path = "/v1/ocr"  # the route template MetricsMiddleware labels requests with

    def __init__(self, state: ApiState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        scope["route"] = self  # FastAPI's router names only its own routes in the scope
        state = self.state
        settings = state.settings
        headers: dict[bytes, bytes] = dict(scope["headers"])
        try:
            auth = headers.get(b"authorization")
            who = await state.authenticator.authenticate(auth.decode("latin-1") if auth else None)
        except AuthError as exc:
            await self._send(send, 401, str(exc), {"WWW-Authenticate": "Bearer"})
            return
        except AuthUnavailableError as exc:
            await self._send(send, 503, str(exc), {"Retry-After": "5"})
            return
        version, mode = settings.default_version, "page"
        status, n_lines, error = 500, 0, None
        try:
            version, mode = _query(scope, settings.default_version)
            body = await self._ocr(scope, receive, headers, version, mode, started)
            status, n_lines = 200, len(body["lines"])
            await self._send_json(send, 200, body, {})
        except BadRequestError as exc:
            status, error = exc.status, str(exc.detail)[:500]
            await self._send(send, exc.status, exc.detail, exc.headers, **exc.extra)
        except HTTPException as exc:  # from decoding the image: 415, 422
            status, error = exc.status_code, str(exc.detail)[:500]
            await self._send(send, exc.status_code, exc.detail, dict(exc.headers or {}))
        finally:
            if state.history is not None:
                self._record(who, version, mode, status, n_lines, error, started)

    async def _ocr(
        self,
        scope: Scope,
        receive: Receive,
        headers: dict[bytes, bytes],
        version: str,
        mode: str,
        started: float,
    ) -> dict[str, Any]:
        lm = self.state.models.get(version)
        if lm is None:
            known = sorted(self.state.models)
            raise BadRequestError(
                404,
                f"unknown model_version {version!r}; known versions: " + ", ".join(known),
                known_versions=known,
            )
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        if not ctype.lower().startswith("multipart/form-data"):
            raise BadRequestError(
                415, "send the image as multipart/form-data with a field named 'file'"
            )
        with lm.batcher.incoming():
            body = await self._read_body(receive, headers, self.state.settings.max_upload_bytes)
        data = parse_multipart(body, ctype)
        peer = scope.get("client")  # the connection: its next request will follow
        try:
            # Decoding, page splitting and recognition all happen on the batch thread.
            results, boxes = await lm.batcher.submit((data, mode), tuple(peer) if peer else None)
        except QueueFullError as exc:
            metrics.QUEUE_FULL.inc()
            raise BadRequestError(
                503, f"{exc}; retry later", {"Retry-After": RETRY_AFTER_S}
            ) from None
        except BatcherStoppedError as exc:
            raise BadRequestError(503, f"{exc}; retry", {"Retry-After": RETRY_AFTER_S}) from None
        lines = [
            {"text": t, "confidence": min(1.0, max(0.0, float(c))), "box": b}
            for (t, c), b in zip(results, boxes, strict=True)
            if mode == "line" or t.strip()  # a page line read as nothing is noise, like ocr_page
        ]
        return {
            "model": {"name": lm.recognizer.name, "version": version},
            "text": "\n".join(line["text"] for line in lines),
            "lines": lines,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    @staticmethod
    async def _read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
        """The request body; 413 as soon as it passes ``limit`` (declared or while streaming)."""
        # "Connection: close" makes the server drop the connection instead of reading (and
        # discarding) the rest of an oversized body, so the client learns early too.
        too_large = BadRequestError(
            413,
            f"upload larger than the limit of {limit} bytes (max_upload_bytes)",
            {"Connection": "close"},
        )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequestError(400, "the client disconnected during the upload")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _record(
        self,
        who: Principal,
        version: str,
        mode: str,
        status: int,
        n_lines: int,
        error: str | None,
        started: float,
    ) -> None:
        assert self.state.history is not None
        self.state.history.record(
            client=who.client,
            user_id=who.user_id,
            api_key_id=who.api_key_id,
            model_name=self.state.settings.model_name,
            model_version=version,
            mode=mode,
            status_code=status,
            lines=n_lines,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
            error=error,
        )

    async def _send(
        self, send: Send, status: int, detail: Any, headers: dict[str, str], **extra: Any
    ) -> None:
        await self._send_json(send, status, {"detail": detail, **extra}, headers)

    @staticmethod
    async def _send_json(send: Send, status: int, content: Any, headers: dict[str, str]) -> None:
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
