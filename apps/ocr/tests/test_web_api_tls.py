"""The web app reaches an https api_url (the lb with its own CA) through `api_ca_file`."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from llmops_ocr.web.api_client import ApiError, OcrClient

RESULT = {"model": {"name": "crnn-ocr", "version": "1.0.0"}, "text": "hello", "lines": []}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.dumps(RESULT).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTPS server on loopback with a freshly made self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_ca_file_makes_the_api_trusted(tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    client = OcrClient(url, "token", 5.0, ca_file=str(ca))
    try:
        assert client.ocr(b"img", "a.png", "image/png")["text"] == "hello"
    finally:
        client.close()


def test_without_ca_file_an_unknown_ca_is_refused(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    client = OcrClient(url, "token", 5.0)
    try:
        with pytest.raises(ApiError) as err:
            client.ocr(b"img", "a.png", "image/png")
        assert err.value.status == 502
    finally:
        client.close()


def test_missing_ca_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        OcrClient("https://127.0.0.1:1", "token", 5.0, ca_file=str(missing))
