"""The web app (Flask test client) against the real inference API running under gunicorn,
and a browser (Playwright + Debian's chromium) against both under gunicorn."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llmops_ocr import db
from llmops_ocr.db import store
from llmops_ocr.synth import render_page
from ocr_servers import Server, has_trained_model, make_models_dir, new_token, start_api, start_web
from PIL import Image
from sqlalchemy import URL
from webutil import ADMIN_PASSWORD, csrf_of, login, make_web

PAGE_LINES = ["The quick brown fox", "jumps over 13 lazy dogs."]
CHROMIUM = Path("/usr/bin/chromium")


DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# A trained model may still slip on a character; a reader would call this the right text.
MAX_CER = 0.05


def page_png() -> bytes:
    """A clean page of two lines in a common font (what a user would upload)."""
    font = str(DEJAVU) if DEJAVU.exists() else None
    img, _ = render_page(PAGE_LINES, seed=7, noise=False, skew_deg=0.0, font=font, size=28)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("web-api")
    token = new_token()
    server = start_api(tmp, make_models_dir(tmp / "models"), token)
    try:
        yield server, token
    finally:
        server.stop()


def api_result(api: tuple[Server, str], data: bytes) -> dict:  # type: ignore[type-arg]
    server, token = api
    r = httpx.post(
        f"{server.url}/v1/ocr",
        params={"mode": "page"},
        files={"file": ("p.png", data, "image/png")},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_upload_results_and_history(
    tmp_path: Path, sqlite_url: URL, api: tuple[Server, str]
) -> None:
    server, token = api
    web = make_web(tmp_path, sqlite_url, api_url=server.url, api_token=token, timeout_s=60)
    with db.session_scope(db.make_sessionmaker(web.app.extensions["llmops"]["engine"])) as s:
        store.create_user(s, "eve", "eve-password")
    data = page_png()
    want = api_result(api, data)
    assert len(want["lines"]) == len(PAGE_LINES)  # the page was split into its two lines

    c = web.client()
    assert login(c).status_code == 302
    form = c.get("/upload")
    r = c.post(
        "/upload",
        data={
            "file": (io.BytesIO(data), "page.png"),
            "mode": "page",
            "csrf_token": csrf_of(form.text),
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 303, r.text
    result_url = r.headers["Location"]
    assert re.fullmatch(r"/results/\d+", result_url)
    page = c.get(result_url)
    assert page.status_code == 200
    shown = html.unescape(re.search(r'<pre id="ocr-text">(.*?)</pre>', page.text, re.S).group(1))  # type: ignore[union-attr]
    assert shown == want["text"]
    boxes = re.findall(r'<rect class="ocr-box" data-line="\d+" x="(\d+)" y="(\d+)"', page.text)
    assert [(int(x), int(y)) for x, y in boxes] == [
        (line["box"][0], line["box"][1]) for line in want["lines"]
    ]
    w, h = Image.open(io.BytesIO(data)).size
    assert f'viewBox="0 0 {w} {h}"' in page.text
    img = c.get(result_url + "/image")
    assert img.status_code == 200 and img.data == data and img.mimetype == "image/png"

    hist = c.get("/history")
    assert (
        hist.status_code == 200 and "page.png" in hist.text and f'href="{result_url}"' in hist.text
    )

    # Another user sees neither the result nor the image, and has an empty history.
    other = web.client()
    assert login(other, "eve", "eve-password").status_code == 302
    assert other.get(result_url).status_code == 404
    assert other.get(result_url + "/image").status_code == 404
    assert "page.png" not in other.get("/history").text


def test_wrong_service_token_is_an_operator_error(
    tmp_path: Path, sqlite_url: URL, api: tuple[Server, str]
) -> None:
    server, _ = api
    web = make_web(tmp_path, sqlite_url, api_url=server.url, api_token="not-the-token")
    c = web.client()
    login(c)
    form = c.get("/upload")
    r = c.post(
        "/upload",
        data={"file": (io.BytesIO(page_png()), "p.png"), "csrf_token": csrf_of(form.text)},
        content_type="multipart/form-data",
    )
    assert r.status_code == 502
    assert "not allowed to use the OCR service" in r.text and "api-token" in r.text


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_edit_distance() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("same", "same") == 0


def healthz_count(site: Server) -> float:
    m = httpx.get(site.url + "/metrics", timeout=10).text
    got = re.search(
        r'llmops_web_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)', m
    )
    return float(got.group(1)) if got else 0.0


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_browser_login_upload_result_history(
    tmp_path: Path, sqlite_url: URL, api: tuple[Server, str]
) -> None:
    """A person in a browser: log in, upload a page, read the text, find it in the history."""
    from playwright.sync_api import expect, sync_playwright

    server, token = api
    web = make_web(tmp_path, sqlite_url, api_url=server.url, api_token=token, timeout_s=60)
    site = start_web(tmp_path, web.config_path, web.credentials, workers=2)
    image = tmp_path / "letter.png"
    image.write_bytes(page_png())
    want = api_result(api, image.read_bytes())
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(site.url + "/history")
                expect(page).to_have_url(re.compile(r"/login\?next=/history$"))
                page.get_by_label("User name").fill("admin")
                page.get_by_label("Password").fill("wrong password")
                page.get_by_role("button", name="Log in").click()
                expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
                page.get_by_label("Password").fill(ADMIN_PASSWORD)
                page.get_by_role("button", name="Log in").click()
                expect(page).to_have_url(re.compile(r"/history$"))
                page.get_by_role("link", name="Upload", exact=True).click()
                page.get_by_label(re.compile("^Image")).set_input_files(str(image))
                page.get_by_role("button", name="Recognise").click()
                expect(page).to_have_url(re.compile(r"/results/\d+$"))
                result_url = page.url
                text = page.locator("#ocr-text").inner_text()
                assert text == want["text"]
                if has_trained_model():
                    truth = "\n".join(PAGE_LINES)
                    cer = edit_distance(text, truth) / len(truth)
                    assert cer <= MAX_CER, f"read {text!r} for {truth!r} (CER {cer:.3f})"
                expect(page.locator("rect.ocr-box")).to_have_count(len(PAGE_LINES))
                # The image under the boxes really loaded (the SVG <image> is same-origin).
                loaded = page.evaluate(
                    "async () => (await fetch(document.querySelector('svg image')"
                    ".getAttribute('href'))).status"
                )
                assert loaded == 200
                page.get_by_role("link", name="History").first.click()
                row = page.locator("table.history tbody tr").first
                expect(row).to_contain_text("letter.png")
                row.get_by_role("link").click()
                assert page.url == result_url
                page.get_by_role("button", name="Log out").click()
                expect(page).to_have_url(re.compile(r"/login$"))
                page.goto(result_url)
                expect(page).to_have_url(re.compile(r"/login\?next="))
            finally:
                browser.close()
        # Multiprocess metrics: /metrics of any worker counts the requests of all workers.
        before = healthz_count(site)
        n = 8
        for _ in range(n):
            assert httpx.get(site.url + "/healthz", timeout=10).status_code == 200
        assert healthz_count(site) == before + n
        assert (
            'llmops_web_logins_total{result="failed"} 1.0' in httpx.get(site.url + "/metrics").text
        )
    finally:
        site.stop()
    if not has_trained_model():
        pytest.skip(
            "browser flow passed; only the check of the text against the page's ground truth "
            "was skipped: no trained weights in apps/ocr/models/crnn-ocr/1.0.0 yet"
        )
