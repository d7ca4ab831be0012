"""The edge server: one model, two gRPC APIs, health, reflection, metrics, graceful stop.

:func:`build_server` wires a :class:`~edgekit.runtime.dataplane.DataPlane` to a gRPC server
that speaks ``edgekit.v1.EdgeClassifier`` and the Open Inference Protocol v2
(``inference.GRPCInferenceService``), plus ``grpc.health.v1.Health`` and server reflection
(so ``grpcurl`` and ``grpc_health_probe`` work without the protos). It returns a started,
warmed-up server: health says NOT_SERVING while the model warms up, SERVING once it is
ready, and NOT_SERVING again as soon as :meth:`EdgeServer.stop` starts draining.

The server is synchronous (a thread pool): each running RPC holds one worker, and so does
every open ``ClassifyStream`` for as long as it stays open, so size ``max_workers`` for the
number of kiosks that keep a stream open plus the expected concurrent calls. ``Classify`` and
``ModelInfer`` come in by the fast lane (:mod:`edgekit.runtime.grpc.lane`, unless
``fast_lane=False``): a lone call runs on the lane thread that received it, and calls that find
another running go to the same pool.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from types import FrameType, TracebackType
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from edgekit.runtime.batching import BatchSettings
from edgekit.runtime.cascade import CascadeSettings
from edgekit.runtime.dataplane import WARMUP_TEXTS, DataPlane, Limits, MonitorSettings
from edgekit.runtime.grpc import edgekit_pb2_grpc, grpc_predict_v2_pb2_grpc
from edgekit.runtime.grpc.lane import FastLane
from edgekit.runtime.grpc.pool import LifoPool
from edgekit.runtime.grpc.servicers import (
    SERVICE_NAMES,
    AdminServicer,
    Admission,
    EdgeClassifierServicer,
    ErrorInterceptor,
    InferenceServicer,
)
from edgekit.runtime.metrics_http import serve_metrics
from edgekit.runtime.security import AuthInterceptor, Security, auth_refusal, hostport
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgekit.errors import ConfigError, EdgekitError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.cloud import CloudClient
    from edgekit.runtime.types import LogitModel, ModelInfo

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "EdgeServer", "ServerSettings", "build_server"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # 64 texts of 2,000 characters need well under 1 MiB


@dataclass(frozen=True)
class ServerSettings:
    """How ``edgekit serve`` serves: address, engine-facing policies and gRPC limits."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks one (read server.port)
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
    batching: BatchSettings = field(default_factory=BatchSettings)
    limits: Limits = field(default_factory=Limits)
    metrics_port: int | None = None  # Prometheus /metrics on the same host (0: any port); https under TLS
    max_workers: int = 16
    max_inflight_rpcs: int | None = 128  # RPCs running or waiting for a thread (None: unbounded)
    fast_lane: bool = True  # Classify and ModelInfer from the completion queue (runtime.grpc.lane)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    warmup_texts: Sequence[str] = WARMUP_TEXTS
    reuse_port: bool = False  # SO_REUSEPORT: set for the processes of `serve --workers N` only
    security: Security = field(default_factory=Security)  # TLS, mutual TLS, bearer tokens
    monitor: MonitorSettings = field(default_factory=MonitorSettings)  # drift watch, --record


class EdgeServer:
    """A running edge server. Build it with :func:`build_server`; use it as a context manager
    or call :meth:`stop`. It owns the data plane, and through it the model and cloud client."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        settings: ServerSettings,
        reloader: Callable[[], LogitModel] | None = None,
    ) -> None:
        """Bound to its port, not yet started. Of ``settings`` it reads the address, the gRPC limits,
        ``metrics_port``, ``reuse_port`` and ``security`` (the rest configures ``dataplane``)."""
        security = settings.security
        security.check(settings.host)  # before anything starts: a refused address leaves nothing behind
        credentials = security.server_credentials()
        self._tokens = security.tokens()
        self.dataplane = dataplane
        self._reloader = reloader
        self.host = settings.host
        self._metrics_port = settings.metrics_port
        self._security = security
        self._metrics_httpd: WSGIServer | None = None
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._reload_lock = threading.Lock()
        self._health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekit-health")
        self._health = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=self._health_pool)
        self._lane: FastLane | None = None
        self._server = self._grpc_server(settings)
        if settings.fast_lane:
            self._lane = self._fast_lane()
        self._add_services()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._listen(hostport(settings.host, settings.port), credentials)

    def _grpc_server(self, settings: ServerSettings) -> grpc.Server:
        # the thread that went idle last takes the next call (runtime.grpc.pool says why)
        pool = self._pool = LifoPool(max_workers=settings.max_workers, thread_name_prefix="edgekit-grpc")
        max_inflight_rpcs = settings.max_inflight_rpcs
        # RPCs running or waiting for a worker thread are bounded (else they would queue in the
        # pool without limit); beyond, RESOURCE_EXHAUSTED at once, counted in /metrics
        self._admission = None if max_inflight_rpcs is None else Admission(
            self._held_calls, max_inflight_rpcs, self.dataplane.count_refusal)
        return grpc.server(
            pool,
            interceptors=[
                *([AuthInterceptor(self._tokens, health_open=settings.security.health_open)] if self._tokens else []),
                ErrorInterceptor(admission=self._admission),
            ],
            options=[
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                # a second server on a busy port must fail, not share it; only `serve --workers`
                # processes (runtime.workers) share one on purpose
                ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
            ],
        )

    def _held_calls(self) -> int:
        """RPCs running or waiting for a thread: the pool's and the fast lane's."""
        return self._pool.held + (self._lane.held if self._lane is not None else 0)

    def _fast_lane(self) -> FastLane | None:
        """The fast lane on this grpcio, or None (a warning says why) where it cannot run."""
        tokens = self._tokens
        try:
            return FastLane(self._server, self._pool, admission=self._admission,
                            authorize=None if tokens is None else functools.partial(auth_refusal, tokens))
        except ConfigError as exc:  # lane_available(): this grpcio lacks what the lane needs
            log.warning("event=fast_lane_off reason=%r", str(exc))
            return None

    def _add_services(self) -> None:
        """Both classify APIs (their unary hot methods on the fast lane, if on), the admin API
        (refusing unless tokens are checked), health, reflection."""
        classify = self._server if self._lane is None else self._lane.registrar()
        edgekit_pb2_grpc.add_EdgeClassifierServicer_to_server(EdgeClassifierServicer(self.dataplane), classify)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.dataplane), classify)
        edgekit_pb2_grpc.add_EdgeAdminServicer_to_server(
            AdminServicer(self.reload, enabled=self._tokens is not None), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    def _listen(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        """Bind ``address``; the port bound (the real one, also when 0 was asked for)."""
        try:
            if credentials is None:
                return self._server.add_insecure_port(address)
            return self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}").with_hint(
                "is another server using the port?"
            ) from exc

    @property
    def address(self) -> str:
        """host:port the server listens on (the real port, also when 0 was asked for)."""
        return hostport(self.host, self.port)

    @property
    def metrics_port(self) -> int | None:
        """The Prometheus /metrics port, or None without metrics_port."""
        return None if self._metrics_httpd is None else self._metrics_httpd.server_port

    @property
    def metrics_url(self) -> str | None:
        """Where Prometheus scrapes this server (https:// when the gRPC port has TLS), or None."""
        port = self.metrics_port
        return None if port is None else f"{self._security.metrics_scheme}://{hostport(self.host, port)}/metrics"

    def start(self) -> EdgeServer:
        """Listen, expose metrics, warm the model up, then report SERVING (or stop and raise)."""
        try:
            self._server.start()
            if self._lane is not None:
                self._lane.start()
            if self._metrics_port is not None:
                self._metrics_httpd = self._serve_metrics(self._metrics_port)
            self.dataplane.warm_up()
        except BaseException:
            self.stop(grace_s=0)
            raise
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        info = self.dataplane.model_info()
        log.info(
            "event=serving address=%s model=%s version=%s backend=%s metrics_port=%s",
            self.address, info.name, info.version, info.backend, self.metrics_port,
        )
        return self

    def _serve_metrics(self, port: int) -> WSGIServer:
        return serve_metrics(self.host, port, self.dataplane.registry, self._security.metrics_tls())

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` has finished (True) or ``timeout_s`` passes (False).

        Without a timeout it still wakes up every 0.2 s: Python runs signal handlers only in
        the main thread, and a signal the OS delivered to another thread would otherwise
        wait for the main thread to wake up by itself.
        """
        if timeout_s is not None:
            return self._stopped.wait(timeout_s)
        while not self._stopped.wait(0.2):
            pass
        return True

    def stop(self, grace_s: float = 5.0) -> None:
        """Drain: report NOT_SERVING, refuse new RPCs, let running ones finish within
        ``grace_s``, then close the data plane. Idempotent; a second caller waits."""
        with self._stop_lock:
            already = self._stopping
            self._stopping = True
        if already:
            self._stopped.wait()
            return
        log.info("event=draining address=%s grace_s=%s", self.address, grace_s)
        self._health.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()
        if self._lane is not None:
            self._lane.stop(timeout_s=max(grace_s, 0.1))  # calls past the grace were cancelled: as long again
        self.dataplane.close()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        self._health_pool.shutdown(wait=False)
        self._pool.shutdown(wait=False)
        counts = self.dataplane.request_counts()  # what a supervisor compares with what callers received
        log.info("event=stopped address=%s answered=%d refused_or_failed=%d", self.address, counts.get("ok", 0),
                 sum(n for status, n in counts.items() if status != "ok"))
        self._stopped.set()

    def reload(self) -> ModelInfo:
        """Load the model again (the bundle path may now hold a new version) and swap it in
        without dropping a request (:meth:`DataPlane.swap_model`).

        A bundle that cannot be served (unreadable, tampered: sha256 mismatch, other labels,
        failing its warm-up) is refused: the reason is logged and raised, and the model
        already served keeps serving.
        """
        if self._reloader is None:
            raise ConfigError("this server was built without a way to reload its model (build_server(reloader=...))")
        with self._reload_lock:
            if self._tokens is not None:
                try:
                    self._tokens.reload()
                except EdgekitError as exc:  # keep the tokens in force; the model reload goes on
                    log.warning("event=token_reload_refused reason=%s", exc)
            try:
                info = self.dataplane.swap_model(self._reloader())
            except EdgekitError as exc:
                log.warning("event=reload_refused reason=%s", exc)
                raise
            except Exception as exc:  # a bug in a loader must not take the server down either
                log.warning("event=reload_refused reason=%r", exc)
                raise ModelError(f"the new model could not be loaded: {exc!r}") from exc
        log.info("event=reloaded model=%s version=%s backend=%s", info.name, info.version, info.backend)
        return info

    def install_signal_handlers(self, grace_s: float = 5.0) -> None:
        """Stop gracefully on SIGTERM (what a supervisor sends) and SIGINT; reload on SIGHUP.
        Main thread only.

        The handlers only start a thread: the main thread keeps waiting in :meth:`wait`, which
        returns once in-flight requests have finished.
        """

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("event=signal signal=%s", signal.Signals(signum).name)
            threading.Thread(target=self.stop, args=(grace_s,), name="edgekit-stop").start()

        def on_hangup(signum: int, frame: FrameType | None) -> None:
            log.info("event=signal signal=SIGHUP action=reload")
            threading.Thread(target=self._reload_quietly, name="edgekit-reload").start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        if self._reloader is not None:
            signal.signal(signal.SIGHUP, on_hangup)

    def _reload_quietly(self) -> None:
        try:
            self.reload()
        except EdgekitError:
            pass  # logged by reload(); the old model keeps serving

    def _set_health(self, status: int) -> None:
        for service in ("", *SERVICE_NAMES):
            self._health.set(service, status)

    def __enter__(self) -> EdgeServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def build_server(model: LogitModel, settings: ServerSettings | None = None, *, cloud: CloudClient | None = None,
                 reloader: Callable[[], LogitModel] | None = None, **overrides) -> EdgeServer:
    """Serve ``model`` (falling back to ``cloud``); returns the started, ready server.

    ``reloader`` loads the model anew (``edgekit serve`` re-reads its bundle path): with it,
    SIGHUP and :meth:`EdgeServer.reload` swap in a new version without a restart.

    ``overrides`` are :class:`ServerSettings` fields (``build_server(model, port=0, batching=...)``);
    ``None`` values keep the default. The server takes ownership of ``model`` and ``cloud``:
    ``stop()`` closes them.
    """
    settings = settings or ServerSettings()
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    dataplane = DataPlane(model, cloud=cloud, cascade=settings.cascade, batching=settings.batching,
                          limits=settings.limits, warmup_texts=settings.warmup_texts, monitor=settings.monitor)
    try:
        server = EdgeServer(dataplane, settings=settings, reloader=reloader)
    except BaseException:
        dataplane.close()
        raise
    return server.start()
