"""``POST /v1/ocr`` as a lean ASGI handler: the API's hot path.

FastAPI's dependency injection, form parsing (python-multipart) and response models cost about as
much CPU per request as a small model call; at 30+ requests in flight that overhead was a quarter
of what the API spent per line. This handler does the same work directly: bearer auth, the two
query parameters, the upload read while streaming (413 past the limit), python-multipart's parser
called directly, the batcher, a JSON answer. The route is still declared in FastAPI (app.py) so
that /docs, /openapi.json and schemathesis describe it; this handler is mounted in front of it
and answers every status code of that description the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import HTTPException
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Receive, Scope, Send

from llmops_ocr.api import metrics
from llmops_ocr.api.auth import AuthError, AuthUnavailableError, Principal
from llmops_ocr.api.batching import BatcherStoppedError, QueueFullError

if TYPE_CHECKING:
    from llmops_ocr.api.app import ApiState
    from llmops_ocr.api.balance import Balancer

log = logging.getLogger(__name__)

VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"
_VERSION_RE = re.compile(VERSION_PATTERN)
RETRY_AFTER_S = "1"
MODES = ("line", "page")
MAX_FIELDS = 8  # multipart parts per request
MAX_FIELD_BYTES = 64 * 1024  # a part that is not a file


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


class _FilePart:
    """python-multipart callbacks that keep the ``file`` part and check the others' limits."""

    def __init__(self) -> None:
        self.parts = 0
        self.found: bytearray | None = None
        self.error: str | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._disposition = b""
        self._chunks: bytearray | None = None
        self._is_file = False
        self._size = 0
        self.ended = False

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self.parts += 1
        self._disposition, self._chunks, self._is_file, self._size = b"", None, False, 0
        if self.parts > MAX_FIELDS and self.error is None:
            self.error = f"malformed multipart body: more than {MAX_FIELDS} parts"

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._field).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        self._is_file = b"filename" in params
        if self._is_file:
            if self.found is not None and self.error is None:
                self.error = "malformed multipart body: send exactly one file"
            if params.get(b"name") == b"file":
                self._chunks = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._chunks is not None:
            self._chunks += data[start:end]
            return
        self._size += end - start
        if not self._is_file and self._size > MAX_FIELD_BYTES and self.error is None:
            self.error = f"malformed multipart body: a field is larger than {MAX_FIELD_BYTES} bytes"

    def on_part_end(self) -> None:
        if self._chunks is not None and self.found is None:
            self.found = self._chunks
        self._chunks = None


def parse_multipart(body: bytes, content_type: str) -> bytes:
    """The content of the ``file`` part (a part with a file name) of a multipart/form-data body.

    Parsed by python-multipart (the parser Starlette's forms use), called directly: FastAPI's
    form handling around it (UploadFile, spooled temp files) was the expensive part.
    Raises BadRequestError(400) for a malformed body or one without such a part.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise BadRequestError(400, "malformed multipart body: no boundary in Content-Type")
    sink = _FilePart()
    callbacks: Any = {
        name: getattr(sink, name)
        for name in (
            "on_part_begin",
            "on_part_data",
            "on_part_end",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_end",
        )
    }
    # RFC 2046 lets a preamble precede the first delimiter; the parser expects none.
    first = body.find(b"--" + boundary)
    if first < 0:
        raise BadRequestError(400, "malformed multipart body: the boundary never appears")
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body[first:])
        parser.finalize()
    except MultipartParseError as exc:
        if sink.parts == 0:
            raise BadRequestError(
                400, "malformed multipart body: the boundary never appears"
            ) from None
        raise BadRequestError(400, f"malformed multipart body: {exc}") from None
    if sink.error is not None:
        raise BadRequestError(400, sink.error)
    if sink.parts == 0:
        raise BadRequestError(400, "malformed multipart body: the boundary never appears")
    if not sink.ended:
        raise BadRequestError(400, "malformed multipart body: a part is not terminated")
    if sink.found is None:
        raise BadRequestError(400, "the multipart body has no file field named 'file'")
    return bytes(sink.found)


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
    """The ASGI app serving ``POST /v1/ocr`` (see the module docstring).

    ``direct`` is what the server calls for every ``POST /v1/ocr`` (ApiApp dispatches to it
    before FastAPI's middleware stack: a dozen layers, each wrapping ``send``, cost as much CPU
    per request as the rest of this handler). It therefore does itself what the middleware does
    for the other routes: count and time the response (MetricsMiddleware), ask for a new
    connection when this worker has too many clients (BalanceMiddleware), answer 500 to an
    unexpected error (ServerErrorMiddleware). Called as a plain route (``__call__``), the
    middleware around it does those.
    """

    path = "/v1/ocr"  # the route template MetricsMiddleware labels requests with

    def __init__(self, state: ApiState, balancer: Balancer | None = None) -> None:
        self.state = state
        self.balancer = balancer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self  # FastAPI's router names only its own routes in the scope
        await self._handle(scope, receive, send, False, time.perf_counter())

    async def direct(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        peer = scope.get("client")
        close = (
            self.balancer is not None
            and peer is not None
            and self.balancer.should_close(tuple(peer))
        )
        status = 500
        try:
            status = await self._handle(scope, receive, send, close, started)
        except Exception:
            log.exception("POST %s failed", self.path)
            # Sending is each answer's last step, so nothing was sent yet -- unless sending
            # itself failed, and then the connection is beyond help.
            with contextlib.suppress(Exception):
                await self._send(send, 500, "Internal Server Error", {}, False)
        finally:
            metrics.observe_request("POST", self.path, status, time.perf_counter() - started)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, close: bool, started: float
    ) -> int:
        """Serve one request (``started``: its perf_counter() at arrival); returns the status."""
        state = self.state
        settings = state.settings
        headers: dict[bytes, bytes] = dict(scope["headers"])
        try:
            auth = headers.get(b"authorization")
            who = await state.authenticator.authenticate(auth.decode("latin-1") if auth else None)
        except AuthError as exc:
            await self._send(send, 401, str(exc), {"WWW-Authenticate": "Bearer"}, close)
            return 401
        except AuthUnavailableError as exc:
            await self._send(send, 503, str(exc), {"Retry-After": "5"}, close)
            return 503
        version, mode = settings.default_version, "page"
        status, n_lines, error = 500, 0, None
        try:
            version, mode = _query(scope, settings.default_version)
            body = await self._ocr(scope, receive, headers, version, mode, started)
            status, n_lines = 200, len(body["lines"])
            await self._send_json(send, 200, body, {}, close)
        except BadRequestError as exc:
            status, error = exc.status, str(exc.detail)[:500]
            await self._send(send, exc.status, exc.detail, exc.headers, close, **exc.extra)
        except HTTPException as exc:  # from decoding the image: 415, 422
            status, error = exc.status_code, str(exc.detail)[:500]
            await self._send(send, exc.status_code, exc.detail, dict(exc.headers or {}), close)
        finally:
            if state.history is not None:
                self._record(who, version, mode, status, n_lines, error, started)
        return status

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
        self,
        send: Send,
        status: int,
        detail: Any,
        headers: dict[str, str],
        close: bool,
        **extra: Any,
    ) -> None:
        await self._send_json(send, status, {"detail": detail, **extra}, headers, close)

    @staticmethod
    async def _send_json(
        send: Send, status: int, content: Any, headers: dict[str, str], close: bool
    ) -> None:
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if close and "Connection" not in headers:  # hand this client to another worker
            raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
