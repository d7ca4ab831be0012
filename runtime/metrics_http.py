"""The Prometheus ``/metrics`` endpoint of ``edgekit serve``: prometheus_client's WSGI app on a
threading HTTP server, over TLS when the gRPC port has it.

Hand-written around prometheus_client's ``make_wsgi_app`` because its ``start_http_server`` wraps
the *listening* socket in TLS, so each handshake runs in ``accept()`` on the server's one loop
thread without a timeout: one client that connects and sends nothing (a port scanner, a stalled
load balancer) stops every scrape after it, and ``shutdown()`` then waits forever. Here the loop
only accepts; each connection's handshake runs in its own request thread, with a timeout.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from edgekit.errors import ConfigError

__all__ = ["serve_metrics"]

HANDSHAKE_TIMEOUT_S = 10.0  # a scrape that has not said hello by then is dropped; its thread ends


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a line per scrape would flood the log
        pass


class _MetricsServer(ThreadingWSGIServer):
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        conn, address = self.socket.accept()
        if self.tls is not None:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            try:
                request.do_handshake()
            except (OSError, ValueError):  # ssl.SSLError, a timeout, a reset: this client only
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def serve_metrics(host: str, port: int, registry: Any, tls: ssl.SSLContext | None = None) -> WSGIServer:
    """Serve ``registry`` at ``http(s)://host:port/metrics`` from a daemon thread; ``server_port``
    is the real port (also for port 0). Stop it with ``shutdown()`` then ``server_close()``."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class = type("MetricsServer", (_MetricsServer,), {"address_family": family, "tls": tls})
        httpd = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    except OSError as exc:  # socket.gaierror too
        host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ConfigError(f"cannot serve metrics on {host_port}: {exc}") from exc
    threading.Thread(target=httpd.serve_forever, name="edgekit-metrics", daemon=True).start()
    return httpd
