"""HTTPS in front of a loopback HTTP server: TLS terminated here, bytes relayed to the server.

Why: an archive's DICOMweb endpoint is served over HTTPS, often by a TLS terminator (nginx,
stunnel, a cloud load balancer) in front of the archive. Debian's Orthanc 1.10.1 cannot serve
HTTPS itself here (it dies with SIGSEGV on the first connection with SslEnabled), so tests of
HTTPS DICOMweb destinations put this in front of it: Python's ssl (OpenSSL) on the server side,
with a real certificate, and optionally requiring client certificates (mutual TLS).
"""
from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


class TlsFront:
    """Accepts TLS on 127.0.0.1:`port` and relays each connection to 127.0.0.1:`target_port`."""

    def __init__(self, target_port: int, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.target_port = target_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:  # mutual TLS: a client without a certificate signed by client_ca is refused
            self.context.load_verify_locations(str(client_ca))
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # the accept loop looks at _stop this often
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-front", daemon=True)
        self.handshake_errors: list[str] = []

    def __enter__(self) -> "TlsFront":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(str(exc))
            raw.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except OSError:
            client.close()
            return
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)  # until the client is done (it closes after the response)
        upstream.close()
        back.join(timeout=30)
        client.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy from `src` to `dst` until either ends."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
