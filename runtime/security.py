"""Transport security of the gRPC servers: TLS, mutual TLS and bearer tokens.

TLS (``--tls-cert``, ``--tls-key``) and mutual TLS (``--tls-client-ca``: only clients with a
certificate signed by that CA get through) are grpcio's own ``ssl_server_credentials``.
A server refuses to listen on an address other than loopback without TLS unless told
``--insecure``: a kiosk's port on the store Wi-Fi must not be open by accident.

Bearer tokens (``--auth-token-file``):

Clients send the gRPC metadata ``authorization: Bearer <token>``. The token file holds one
token per line (two lines during a rotation: either is accepted); like an SSH key it must not
be readable or writable by other users, and the server re-reads it on every reload (SIGHUP or
the admin Reload call). Tokens are compared in constant time (``hmac.compare_digest``) and
are never logged.

Hand-written because grpcio ships only the client half of token auth
(``grpc.access_token_call_credentials``); checking the token on the server is left to an
interceptor, which this is.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import ssl
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from edgekit.runtime.grpc import refusing_handler

from edgekit.errors import ConfigError

__all__ = [
    "AuthInterceptor",
    "Security",
    "TokenFile",
    "auth_refusal",
    "bearer_metadata",
    "channel_credentials",
    "hostport",
    "https_context",
    "is_loopback",
    "read_token",
]

log = logging.getLogger(__name__)

_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_SCHEME = "bearer "


def _read_tokens(path: Path) -> tuple[bytes, ...]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from exc
    if not stat.S_ISREG(mode):
        raise ConfigError(f"token file {path} is not a regular file")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"token file {path} is readable or writable by other users; run: chmod 600 {path}")
    tokens = tuple(line.strip().encode("utf-8") for line in text.splitlines() if line.strip())
    if not tokens:
        raise ConfigError(f"token file {path} holds no token")
    return tokens


def read_token(path: str | Path) -> str:
    """The first token of a token file (what a client sends), with the server's file checks."""
    return _read_tokens(Path(path))[0].decode("utf-8")


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (empty without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class TokenFile:
    """The accepted tokens, read from ``path`` now and again on :meth:`reload`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._tokens = _read_tokens(self.path)

    def reload(self) -> None:
        """Read the file again; a file that became unusable is refused (ConfigError) and the
        tokens read before stay in force."""
        tokens = _read_tokens(self.path)
        with self._lock:
            self._tokens = tokens

    def accepts(self, authorization: str | None) -> bool:
        """Is ``authorization`` (the metadata value) ``Bearer <one of the tokens>``?"""
        if authorization is None or authorization[: len(_SCHEME)].lower() != _SCHEME:
            return False
        presented = authorization[len(_SCHEME):].strip().encode("utf-8")
        with self._lock:
            tokens = self._tokens
        # every token is compared (no early exit), each in constant time
        return sum(hmac.compare_digest(presented, token) for token in tokens) > 0


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuse every RPC without a valid bearer token with UNAUTHENTICATED (the health service
    too, unless ``health_open``)."""

    def __init__(self, tokens: TokenFile, *, health_open: bool = False) -> None:
        self._tokens = tokens
        self._open = (_HEALTH_PREFIX,) if health_open else ()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if self._open and handler_call_details.method.startswith(self._open):
            return continuation(handler_call_details)
        reason = auth_refusal(self._tokens, handler_call_details.invocation_metadata)
        if reason is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, reason)


def auth_refusal(tokens: TokenFile, metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """Why a call with ``metadata`` (its invocation metadata) is refused UNAUTHENTICATED, or None
    if it carries a valid bearer token. Shared by :class:`AuthInterceptor` and the fast lane
    (:mod:`edgekit.runtime.grpc.lane`), so both refuse alike."""
    authorization = next((value for key, value in metadata or () if key == "authorization"), None)
    if tokens.accepts(authorization):
        return None
    return ("missing bearer token: send the gRPC metadata 'authorization: Bearer <token>'"
            if authorization is None else "invalid bearer token")


def is_loopback(host: str) -> bool:
    """Is ``host`` an address only this machine can reach?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def hostport(host: str, port: int) -> str:
    """``host:port`` as an address or a URL writes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{what} {path} is not PEM (no -----BEGIN line)")
    return data


@dataclass(frozen=True)
class Security:
    """How a server is reached: TLS files, client CA (mutual TLS), token file, open health.

    :meth:`check` refuses incomplete combinations and a non-loopback ``host`` without TLS
    (unless ``insecure``), each with a one-line reason.
    """

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token_file: Path | None = None
    health_open: bool = False
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self, host: str) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.tls_cert is not None else ("--tls-key", "--tls-cert")
            raise ConfigError(f"{given} needs {missing} too")
        if self.tls_client_ca is not None and not self.tls:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.health_open and self.token_file is None:
            raise ConfigError("--health-open only applies with --auth-token-file (without a token, health is open)")
        if not self.tls and not self.insecure and not is_loopback(host):
            raise ConfigError(
                f"refusing to listen on {host} without TLS: give --tls-cert and --tls-key, "
                "or --insecure if the network is trusted"
            )

    def metrics_tls(self) -> ssl.SSLContext | None:
        """The server side of TLS for ``/metrics`` (None without TLS): the gRPC port's certificate
        and key, and with ``tls_client_ca`` the same client check (mutual TLS). A server that
        encrypts its gRPC port must not publish its traffic figures (labels, routes, drift) in
        plaintext next to it."""
        if not self.tls:
            return None
        for path, what in ((self.tls_cert, "TLS certificate"), (self.tls_key, "TLS key")):
            _read_pem(path, what)  # a one-line reason before the ssl module's
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            if self.tls_client_ca is not None:
                context.load_verify_locations(cafile=str(self.tls_client_ca))
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot use the TLS files for /metrics ({self.tls_cert}, {self.tls_key}): {exc}") from exc
        return context

    @property
    def metrics_scheme(self) -> str:
        return "https" if self.tls else "http"

    def tokens(self) -> TokenFile | None:
        return None if self.token_file is None else TokenFile(self.token_file)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """grpcio's TLS credentials (None without TLS); mutual TLS with ``tls_client_ca``."""
        if not self.tls:
            return None
        key = _read_pem(self.tls_key, "TLS key")
        cert = _read_pem(self.tls_cert, "TLS certificate")
        client_ca = None if self.tls_client_ca is None else _read_pem(self.tls_client_ca, "client CA")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                           require_client_auth=client_ca is not None)


def https_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Client-side TLS for an https:// endpoint (``/metrics`` of a TLS server): as
    :func:`channel_credentials`, with the ssl module."""
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its key too (and the other way round)")
    try:
        context = ssl.create_default_context(cafile=None if ca is None else str(ca))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"cannot use the TLS files ({ca or 'system CAs'}, {cert}, {key}): {exc}") from exc
    return context


def channel_credentials(ca: Path | None = None, cert: Path | None = None, key: Path | None = None
                        ) -> grpc.ChannelCredentials:
    """Client-side TLS: trust ``ca`` (default: the system's roots); ``cert`` + ``key`` for mutual TLS."""
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its key too (and the other way round)")
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca is None else _read_pem(ca, "CA certificate"),
        private_key=None if key is None else _read_pem(key, "client key"),
        certificate_chain=None if cert is None else _read_pem(cert, "client certificate"),
    )
