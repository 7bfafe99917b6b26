"""The web app's client of the inference API: bearer token, timeouts, errors for people."""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx

from llmops_ocr.web import metrics


@dataclass
class ApiError(Exception):
    """The API could not give a result; ``status`` is what the web app answers the browser."""

    status: int
    title: str
    message: str
    retry_after: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.message}"


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    return str(detail)[:300] if detail is not None else resp.reason_phrase


class OcrClient:
    """Posts images to ``{api_url}/v1/ocr``; one pooled connection set per worker process."""

    def __init__(
        self, api_url: str, token: str, timeout_s: float, ca_file: str | None = None
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s
        # An https api_url behind the lb's self-signed CA is trusted through that CA alone.
        if ca_file and not os.path.isfile(ca_file):
            raise FileNotFoundError(
                f"api_ca_file {ca_file} does not exist: install the load balancer's CA there "
                "(roles/webapp does) or remove api_ca_file from the web config"
            )
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._client = httpx.Client(
            base_url=self.api_url,
            verify=verify,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def ocr(
        self,
        image: bytes,
        filename: str,
        content_type: str,
        *,
        mode: str = "page",
        model_version: str | None = None,
    ) -> dict[str, Any]:
        """The API's JSON result for ``image``; raises ApiError with a message for the user."""
        params = {"mode": mode}
        if model_version:
            params["model_version"] = model_version
        started = time.perf_counter()
        outcome = "ok"
        try:
            resp = self._client.post(
                "/v1/ocr", params=params, files={"file": (filename, image, content_type)}
            )
        except httpx.TimeoutException:
            outcome = "timeout"
            raise ApiError(
                504,
                "The OCR service is too slow",
                f"It did not answer within {self.timeout_s:g} seconds. "
                "Try again later or with a smaller image.",
            ) from None
        except httpx.TransportError:
            outcome = "unreachable"
            raise ApiError(
                502,
                "The OCR service is unreachable",
                "The web app cannot connect to the OCR service right now. "
                "Try again in a minute; if this persists, tell the operator.",
            ) from None
        finally:
            metrics.API_DURATION.observe(time.perf_counter() - started)
            if outcome != "ok":
                metrics.API_CALLS.labels(outcome).inc()
        try:
            return self._result(resp)
        except ApiError as exc:
            metrics.API_CALLS.labels(f"http_{resp.status_code}").inc()
            raise exc from None

    def _result(self, resp: httpx.Response) -> dict[str, Any]:
        code = resp.status_code
        if code == 200:
            try:
                body = resp.json()
                body["text"], body["lines"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(
                    502, "The OCR service answered nonsense", "Its reply was not OCR JSON."
                ) from None
            metrics.API_CALLS.labels("ok").inc()
            return body  # type: ignore[no-any-return]
        detail = _detail(resp)
        if code in (401, 403):
            raise ApiError(
                502,
                "The web app is not allowed to use the OCR service",
                "The OCR service refused the web app's token. Tell the operator "
                "(the web and API hosts must share the api-token credential).",
            )
        if code == 413:
            raise ApiError(413, "Image too large", f"The OCR service refused it: {detail}")
        if code in (400, 404, 415, 422):
            raise ApiError(422, "The OCR service could not read this image", detail)
        if code == 503:
            raise ApiError(
                503,
                "The OCR service is busy",
                "It is handling too many images right now; try again in a few seconds.",
                retry_after=resp.headers.get("Retry-After", "5"),
            )
        raise ApiError(502, "The OCR service failed", f"It answered HTTP {code}. Try again later.")
