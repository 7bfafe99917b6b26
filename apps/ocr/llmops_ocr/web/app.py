"""The OCR web app: login, upload -> inference API -> results with boxes, per-user history.

``create_app()`` is the WSGI factory gunicorn calls (``'llmops_ocr.web.app:create_app()'``). It
reads the web config (``$LLMOPS_CONFIG`` or /etc/llmops/web.json) and the credentials
``session-key`` and ``api-token`` from ``$CREDENTIALS_DIRECTORY``. The schema must already be
migrated (``python -m llmops_ocr.db.migrate --type web``).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from PIL import Image, UnidentifiedImageError
from sqlalchemy import text as sql_text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from llmops_ocr.config import ConfigError, load_config, read_credential
from llmops_ocr.db import make_engine, make_sessionmaker, store, url_from_config
from llmops_ocr.web import auth, metrics
from llmops_ocr.web.api_client import ApiError, OcrClient

log = logging.getLogger("llmops_ocr.web")

INSECURE_COOKIES_ENV = "LLMOPS_WEB_INSECURE_COOKIES"
MAX_IMAGE_PIXELS = 40_000_000
MODES = ("page", "line")

# Browser security policy: nothing inline, nothing from elsewhere, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

ERROR_TEXTS = {
    400: ("Bad request", "The request was not understood."),
    404: ("Not found", "There is nothing here."),
    405: ("Method not allowed", "This page does not accept that kind of request."),
    413: ("Image too large", "The upload is larger than the limit of {limit}."),
    429: ("Too many attempts", "Too many failed logins. Try again in {retry} seconds."),
    500: ("Something went wrong", "The web app failed; the operator can find details in its log."),
    503: ("Temporarily unavailable", "The web app cannot reach its database; try again soon."),
}


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in {"1", "true", "yes", "on"}


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def create_app(
    config: Mapping[str, Any] | None = None,
    *,
    credentials_dir: str | os.PathLike[str] | None = None,
) -> Flask:
    """Build the web app from ``config`` (default: the deployed web config) and credentials."""
    cfg: Mapping[str, Any] = config if config is not None else load_config("web")
    env_cfg = cfg.get("environment") or {}
    creds = Path(credentials_dir) if credentials_dir is not None else None

    app = Flask(__name__)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    insecure = _truthy(os.environ.get(INSECURE_COOKIES_ENV, env_cfg.get(INSECURE_COOKIES_ENV, "")))
    lifetime = dt.timedelta(minutes=int(cfg.get("session_lifetime_minutes", 60)))
    max_upload = int(cfg.get("max_upload_bytes", 10 * 1024 * 1024))
    secret = read_credential("session-key", creds) or ""
    if len(secret) < 32:
        raise ConfigError(
            "credential 'session-key' is too short to sign sessions safely: use at least 32 "
            "random characters (the controller generates 64)"
        )
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="llmops_session",
        SESSION_COOKIE_SECURE=not insecure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=lifetime,
        # Room for the multipart framing and the form fields around the image.
        MAX_CONTENT_LENGTH=max_upload + 64 * 1024,
        DEBUG=bool(cfg.get("debug", False)),
    )
    engine = make_engine(url_from_config(cfg, creds))
    sessions = make_sessionmaker(engine)
    client = OcrClient(
        str(cfg.get("api_url", "http://127.0.0.1:8000")),
        read_credential("api-token", creds) or "",
        float(cfg.get("api_timeout_s", 30)),
        ca_file=cfg.get("api_ca_file"),
    )
    limit = auth.RateLimit()
    app.extensions["llmops"] = {"engine": engine, "client": client, "config": cfg}
    app.jinja_env.globals["csrf_token"] = auth.csrf_token

    @app.template_filter("when")
    def when(t: dt.datetime) -> str:
        t = t if t.tzinfo else t.replace(tzinfo=dt.UTC)
        return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    # --- request plumbing ---------------------------------------------------------------------

    @app.before_request
    def before() -> None:
        g.started = time.perf_counter()
        if request.endpoint in ("healthz", "metrics", "static"):
            return
        g.db = sessions()
        try:
            g.user = auth.load_user(g.db)
        except SQLAlchemyError as exc:
            log.error("database unavailable: %s", str(exc).splitlines()[0])
            abort(503)
        auth.check_csrf()

    @app.after_request
    def after(resp: Response) -> Response:
        db = g.get("db")
        if db is not None and resp.status_code >= 500:
            db.rollback()
        elif db is not None:
            # Commit before the response leaves, so a redirect never points at unsaved data
            # and a failing commit still becomes a proper error page.
            try:
                db.commit()
            except SQLAlchemyError as exc:
                db.rollback()
                log.error("database error on commit: %s", str(exc).splitlines()[0])
                resp = error_page(503, *ERROR_TEXTS[503], headers={"Retry-After": "10"})
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        if g.get("user") is not None or request.endpoint in ("login",):
            resp.headers.setdefault("Cache-Control", "no-store")
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.REQUESTS.labels(request.method, route, str(resp.status_code)).inc()
        metrics.DURATION.labels(route).observe(time.perf_counter() - g.get("started", 0.0))
        return resp

    @app.teardown_request
    def teardown(exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()  # rolls back whatever after_request did not commit

    def error_page(
        status: int, title: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        resp = app.make_response(
            (render_template("error.html", title=title, message=message, status=status), status)
        )
        resp.headers.update(headers or {})
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 400 and exc.description == "csrf":
            return error_page(
                400,
                "Form expired",
                "The form was stale or not sent from this site. Go back, reload the page and try "
                "again.",
            )
        title, message = ERROR_TEXTS.get(code, (exc.name, exc.description or ""))
        message = message.format(limit=_human_bytes(max_upload), retry="a few")
        return error_page(code, title, message)

    @app.errorhandler(SQLAlchemyError)
    def db_error(exc: SQLAlchemyError) -> Response:
        log.error("database error: %s", str(exc).splitlines()[0])
        return error_page(503, *ERROR_TEXTS[503], headers={"Retry-After": "10"})

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        log.warning("OCR API call failed: %s", exc)
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
        return error_page(exc.status, exc.title, exc.message, headers)

    # --- pages --------------------------------------------------------------------------------

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("upload" if g.get("user") else "login"))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        nxt = auth.safe_next(request.values.get("next"))
        if request.method == "GET":
            if g.user is not None:
                return redirect(nxt or url_for("upload"))
            return render_template("login.html", next=nxt, error=None)
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        address = request.remote_addr or "unknown"
        wait = auth.login_blocked(g.db, username, address, limit)
        if wait:
            metrics.LOGINS.labels("rate_limited").inc()
            title, message = ERROR_TEXTS[429]
            return error_page(429, title, message.format(retry=wait), {"Retry-After": str(wait)})
        user = store.authenticate(g.db, username, password) if username and password else None
        if user is None:
            auth.record_failure(g.db, username, address, limit)
            metrics.LOGINS.labels("failed").inc()
            return render_template(
                "login.html", next=nxt, error="Wrong user name or password.", username=username
            ), 401
        auth.clear_failures(g.db, username)
        auth.start_session(g.db, user, lifetime)
        metrics.LOGINS.labels("ok").inc()
        return redirect(nxt or url_for("upload"))

    @app.post("/logout")
    def logout() -> Response:
        auth.end_session(g.db)
        return redirect(url_for("login"))

    @app.route("/upload", methods=["GET", "POST"])
    @auth.login_required
    def upload() -> Any:
        if request.method == "GET":
            return render_template(
                "upload.html", error=None, modes=MODES, limit=_human_bytes(max_upload)
            )
        f = request.files.get("file")
        mode = request.form.get("mode", "page")
        if mode not in MODES:
            mode = "page"

        def again(msg: str, status: int) -> tuple[str, int]:
            page = render_template(
                "upload.html", error=msg, modes=MODES, limit=_human_bytes(max_upload)
            )
            return page, status

        if f is None or not f.filename:
            return again("Choose an image file to upload.", 400)
        data = f.read(max_upload + 1)
        if len(data) > max_upload:
            return again(f"The image is larger than the limit of {_human_bytes(max_upload)}.", 413)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                width, height = img.size
                fmt = img.format or ""
        except (
            UnidentifiedImageError,
            OSError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ):
            return again("That file is not an image this service can read (PNG, JPEG, ...).", 415)
        if width * height > MAX_IMAGE_PIXELS:
            return again(f"The image is too large ({width}x{height} pixels).", 413)
        content_type = Image.MIME.get(fmt, "application/octet-stream")
        filename = Path(f.filename).name[:255] or "image"
        result = client.ocr(data, filename, content_type, mode=mode)
        model = result.get("model") or {}
        up = store.add_upload(
            g.db,
            g.user,
            filename=filename,
            content_type=content_type,
            image=data,
            width=width,
            height=height,
            text=str(result.get("text", "")),
            result=result,
            model_version=model.get("version"),
            elapsed_ms=float(result.get("elapsed_ms", 0.0)),
        )
        return redirect(url_for("result", upload_id=up.id), code=303)

    @app.get("/results/<int:upload_id>")
    @auth.login_required
    def result(upload_id: int) -> Any:
        up = store.get_upload(g.db, upload_id, g.user.id)
        if up is None:
            abort(404)
        lines = []
        for i, line in enumerate(up.result.get("lines", []), start=1):
            x0, y0, x1, y1 = (int(v) for v in line.get("box", (0, 0, 0, 0)))
            lines.append(
                {
                    "n": i,
                    "text": line.get("text", ""),
                    "confidence": float(line.get("confidence", 0.0)),
                    "x": x0,
                    "y": y0,
                    "w": max(0, x1 - x0),
                    "h": max(0, y1 - y0),
                }
            )
        return render_template("result.html", up=up, lines=lines, model=up.result.get("model"))

    @app.get("/results/<int:upload_id>/image")
    @auth.login_required
    def result_image(upload_id: int) -> Response:
        up = store.get_upload(g.db, upload_id, g.user.id)
        if up is None:
            abort(404)
        resp = Response(up.image, mimetype=up.content_type)
        resp.headers["Cache-Control"] = "private, max-age=3600"
        resp.headers["Content-Disposition"] = "inline"
        return resp

    @app.get("/history")
    @auth.login_required
    def history() -> str:
        uploads = store.user_uploads(g.db, g.user.id, limit=100)
        return render_template("history.html", uploads=uploads)

    @app.get("/healthz")
    def healthz() -> Response:
        """Alive and able to reach the database (503 otherwise)."""
        try:
            with engine.connect() as conn:
                conn.execute(sql_text("SELECT 1"))
        except SQLAlchemyError as exc:
            return app.response_class(
                '{"status": "degraded", "database": "unreachable"}\n',
                status=503,
                mimetype="application/json",
                headers={"X-Error": type(exc).__name__},
            )
        return app.response_class(
            '{"status": "ok", "database": "ok"}\n', mimetype="application/json"
        )

    @app.get("/metrics", endpoint="metrics")
    def metrics_view() -> Response:
        body, ctype = metrics.render()
        return Response(body, content_type=ctype)

    return app
