"""The server's TLS files, read again when they change on disk.

Certificates are rotated in place (cert-manager renews a Secret's files, certbot its
live/ links) well before they expire; a server that kept the ones it started with would
serve an expired certificate one day. So each new gRPC connection asks whether the files
changed (a `stat` of each) and gets the new ones from then on, connections already open
keep theirs; the web console's certificate is looked at every few seconds; and each new
worker is told what to trust as it is made, from the files as they are then. A change
half written (a new certificate beside the old key) is not taken until the pair matches:
the old one goes on serving meanwhile, and the server's log says why.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

import grpc

from hodei.config import TlsConfig
from hodei.server.preflight import Misconfigured

log = logging.getLogger(__name__)

# Seconds between two looks at the web console's certificate files.
CONSOLE_CHECK_INTERVAL = 5.0

# What identifies a file's version: its modification time and size (a file written again
# with the same bytes is reloaded, which costs one read).
_Stamp = tuple[tuple[int, int] | None, ...]


class ServerCertificates:
    """The server's certificate, its key and the client CA (mutual TLS) of ``tls``, as they
    are on disk now; and what workers are told to trust (``worker_environment``)."""

    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._served = self.serving_stamp()
        self._unusable: _Stamp | None = None
        self._workers = self._stamp(self._worker_files())
        self._worker_env = self._read_worker_environment()

    def serving_stamp(self) -> _Stamp:
        """Which version of the served files is on disk now."""
        return self._stamp([path for path in (self.tls.cert, self.tls.key, self.tls.client_ca) if path is not None])

    def _worker_files(self) -> list[Path]:
        tls = self.tls
        return [path for path in (tls.trusted_by_workers, tls.worker_cert, tls.worker_key) if path is not None]

    @staticmethod
    def _stamp(paths: list[Path]) -> _Stamp:
        stamps: list[tuple[int, int] | None] = []
        for path in paths:
            try:
                status = path.stat()
            except OSError:
                stamps.append(None)
            else:
                stamps.append((status.st_mtime_ns, status.st_size))
        return tuple(stamps)

    # gRPC ----------------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        """None without a certificate (plaintext)."""
        if self.tls.cert is None or self.tls.key is None:
            return None
        try:
            initial = self._grpc_configuration()
        except ssl.SSLError as exc:
            cert, key = self.pair
            files = f"HODEI_TLS_CERT={cert}, HODEI_TLS_KEY={key}"
            wanted = "a certificate and its key"
            if self.tls.client_ca is not None:
                files += f", HODEI_TLS_CLIENT_CA={self.tls.client_ca}"
                wanted = "a certificate, its key and a CA bundle"
            raise Misconfigured(f"{files}: not {wanted} ({exc.reason or exc})") from None
        return grpc.dynamic_ssl_server_credentials(
            initial,
            self._changed_grpc_configuration,  # type: ignore[arg-type]  # None: unchanged (gRPC's docs; not its stub)
            require_client_authentication=self.tls.client_ca is not None,
        )

    @property
    def pair(self) -> tuple[Path, Path]:
        """The certificate and key files (TLS on)."""
        if self.tls.cert is None or self.tls.key is None:
            raise ValueError("TLS is off: no HODEI_TLS_CERT and HODEI_TLS_KEY")
        return self.tls.cert, self.tls.key

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        self.check()
        cert, key = self.pair
        client_ca = self.tls.client_ca.read_bytes() if self.tls.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(key.read_bytes(), cert.read_bytes())], root_certificates=client_ca
        )

    def _changed_grpc_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at every new connection: the files' new contents when they
        changed since they were last taken, else None (gRPC keeps what it has)."""
        with self._lock:
            stamp = self.serving_stamp()
            if stamp in (self._served, self._unusable):
                return None
            try:
                configuration = self._grpc_configuration()
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS files changed but cannot be used yet (%s): serving the previous ones", exc)
                self._unusable = stamp  # tried again once they change again, not at every connection
                return None
            self._served = stamp
        log.info("TLS certificate reloaded from %s", self.tls.cert)
        return configuration

    def check(self) -> None:
        """Raises ssl.SSLError (or OSError) unless the key is the certificate's and the
        client CA (mutual TLS) holds certificates: unless the files make a context."""
        self.console_context()

    # The web console -------------------------------------------------------------------

    def console_context(self) -> ssl.SSLContext:
        """The gRPC port's TLS rules for HTTP: the same certificate; with mutual TLS, the
        same client CA is required. ``ConsoleWatch`` loads a new pair into it."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self.pair)
        if self.tls.client_ca is not None:
            context.load_verify_locations(self.tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # Workers ---------------------------------------------------------------------------

    def worker_environment(self) -> dict[str, str]:
        """What a new worker agent is told about trusting the server, with TLS: the CA (and
        under mutual TLS its own client certificate), as PEM text, so that containers and
        pods need no files; read again when the files changed."""
        with self._lock:
            stamp = self._stamp(self._worker_files())
            if stamp != self._workers:
                try:
                    self._worker_env = self._read_worker_environment()
                except OSError as exc:
                    log.warning("TLS files for workers changed but cannot be read (%s): using the previous", exc)
                else:
                    self._workers = stamp
            return dict(self._worker_env)

    def _read_worker_environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        tls = self.tls
        trusted = tls.trusted_by_workers
        if trusted is not None:
            env["HODEI_TLS_CA_PEM"] = trusted.read_text()
        if tls.worker_cert is not None and tls.worker_key is not None:
            env["HODEI_TLS_CERT_PEM"] = tls.worker_cert.read_text()
            env["HODEI_TLS_KEY_PEM"] = tls.worker_key.read_text()
        return env


class ConsoleWatch:
    """Serves each new console connection the SSL context made from the files as they
    were at the last look: ``context`` is the listening one, and its SNI callback (which
    OpenSSL calls for every handshake, with or without a server name) hands the handshake
    to the newest context, certificate, key and client CA together. Loading new files into
    one context instead would keep a rotated-out client CA trusted until a restart: an SSL
    context only adds CAs."""

    def __init__(self, certificates: ServerCertificates) -> None:
        self.certificates = certificates
        self.context = self._newest = certificates.console_context()
        self.context.sni_callback = self._hand_over
        self._seen = certificates.serving_stamp()
        self._unusable: _Stamp | None = None

    def _hand_over(self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self._newest

    async def run(self) -> None:
        """Looks at the files every CONSOLE_CHECK_INTERVAL seconds, for as long as the
        console serves."""
        while True:
            await asyncio.sleep(CONSOLE_CHECK_INTERVAL)
            await asyncio.to_thread(self.refresh)

    def refresh(self) -> bool:
        """True when new files were taken."""
        certificates = self.certificates
        stamp = certificates.serving_stamp()
        if stamp in (self._seen, self._unusable):
            return False
        try:
            self._newest = certificates.console_context()
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS files changed but cannot be used yet (%s): the console serves the previous ones", exc)
            self._unusable = stamp
            return False
        self._seen = stamp
        log.info("web console's TLS certificate reloaded from %s", certificates.tls.cert)
        return True
