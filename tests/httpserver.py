"""A real HTTP(S) server on 127.0.0.1 serving one file with Range support; misbehaves on cue."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Behaviour:
    """How the server treats the next requests; tests change it between pulls."""

    drop_after: int | None = None  # close the connection after sending this many body bytes
    ignore_range: bool = False  # always answer 200 with the whole file
    stall_s: float = 0.0  # sleep this long in the middle of the body
    no_length: bool = False  # send no Content-Length
    status: int = 0  # answer with this error status instead
    piece_delay_s: float = 0.0  # send the body in 16 KiB pieces, sleeping between them
    bytes_sent: int = 0
    requests: list[str] = field(default_factory=list)


class FileServer:
    """Serves `content` at /model.gguf; /moved redirects there."""

    def __init__(self, content: bytes, tls: ssl.SSLContext | None = None) -> None:
        self.content = content
        self.behaviour = Behaviour()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:  # HTTPS with the certificate the context holds
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/model.gguf"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        b.requests.append(request.headers.get("Range") or "")
        if request.path == "/moved":
            request.send_response(302)
            request.send_header("Location", self.url)
            request.end_headers()
            return
        if b.status or request.path != "/model.gguf":
            request.send_error(b.status or 404)
            return
        start = 0
        spec = request.headers.get("Range")
        if spec and not b.ignore_range:
            first, _, last = spec.removeprefix("bytes=").partition("-")
            start = int(first)
            stop = int(last) + 1 if last else len(self.content)
            if start >= len(self.content):
                request.send_error(416)
                return
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(self.content)}")
        else:
            start, stop = 0, len(self.content)
            request.send_response(200)
        body = self.content[start:stop]
        if not b.no_length:
            request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        self._send_body(request, body)

    def _send_body(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        b = self.behaviour
        limit = len(body) if b.drop_after is None else min(b.drop_after, len(body))
        if b.piece_delay_s:
            self._trickle(request, body[:limit])
            return
        half = limit // 2
        try:
            request.wfile.write(body[:half])
            b.bytes_sent += half
            if b.stall_s:
                request.wfile.flush()
                time.sleep(b.stall_s)
            request.wfile.write(body[half:limit])
            b.bytes_sent += limit - half
            request.wfile.flush()
        except OSError:
            return
        if limit < len(body):
            request.close_connection = True

    def _trickle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            for i in range(0, len(body), 16384):
                request.wfile.write(body[i : i + 16384])
                request.wfile.flush()
                self.behaviour.bytes_sent += len(body[i : i + 16384])
                time.sleep(self.behaviour.piece_delay_s)
        except OSError:
            return

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def https_for_loopback(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A test CA (its PEM written to folder, the only place that trusts it) and a server context
    holding a certificate it signed for 127.0.0.1."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from meshd.security import pki

    ca_key, ca = pki.create_ca("test-https")
    key = pki.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (folder / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_file.write_bytes(pki.cert_pem(ca))
    cert_file.write_bytes(pki.cert_pem(cert))
    key_file.write_bytes(pki.key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context
