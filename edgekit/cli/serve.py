"""``edgekit serve`` (an edge bundle, with cloud fallback) and ``edgekit serve-cloud`` (the torch model).

Both print one line when ready, ``serving <name> (<format>/<precision>, backend <b>) on
HOST:PORT``, with the real port also for ``--port 0``, so scripts can parse it; then they
serve until SIGTERM or Ctrl-C, letting in-flight requests finish for ``--grace-s``.
Only click and the standard library are imported at module level (``edgekit --help``
stays light); the runtime is imported when a command runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli._options import cloud_protocol_choice, engine_choice

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.batching import BatchSettings
    from edgekit.runtime.cloud import CloudClient
    from edgekit.runtime.dataplane import Limits
    from edgekit.runtime.security import Security
    from edgekit.runtime.server import ServerSettings
    from edgekit.runtime.types import LogitModel

__all__ = ["cloud_command", "command"]

_RUNTIME_MODULES = ("grpc", "grpc_health", "grpc_reflection", "prometheus_client")
_FILE = click.Path(dir_okay=False, path_type=Path)  # existence and permissions: checked by runtime.security


@dataclasses.dataclass(frozen=True)
class _ServerOptions:
    """The options both commands share (``_server_options``), handed to each as one ``server`` argument."""

    host: str
    max_batch_size: int
    max_wait_ms: float
    metrics_port: int | None
    grace_s: float
    max_workers: int
    max_queue: int
    max_inflight: int
    security_options: dict[str, Any]  # tls_cert, tls_key, tls_client_ca, auth_token_file, health_open, insecure

    def batching(self) -> BatchSettings:
        from edgekit.runtime.batching import BatchSettings

        return BatchSettings(max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms)

    def limits(self) -> Limits:
        from edgekit.runtime.dataplane import Limits

        return Limits(max_queue=self.max_queue)

    def security(self) -> Security:
        """The server's Security, checked now (see ``_security``)."""
        return _security(self.host, **self.security_options)

    def settings(self, port: int, *, batching: BatchSettings, limits: Limits, security: Security,
                 **more: Any) -> ServerSettings:
        """The ServerSettings of these options; ``more``: what only one command sets (cascade, reuse_port)."""
        from edgekit.runtime.server import ServerSettings

        return ServerSettings(host=self.host, port=port, batching=batching, limits=limits,
                              metrics_port=self.metrics_port, max_workers=self.max_workers,
                              max_inflight_rpcs=self.max_inflight, security=security, **more)


_SHARED_OPTIONS = tuple(f.name for f in dataclasses.fields(_ServerOptions) if f.name != "security_options")
_SECURITY_OPTIONS = ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file", "health_open", "insecure")


def _server_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options both commands share: where to listen, batching, metrics, shutdown, security. The
    command receives them as one ``server`` argument (:class:`_ServerOptions`)."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        security_options = {name: kwargs.pop(name) for name in _SECURITY_OPTIONS}
        shared = {name: kwargs.pop(name) for name in _SHARED_OPTIONS}
        return f(*args, server=_ServerOptions(**shared, security_options=security_options), **kwargs)

    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on."),
        click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Texts per model call when requests are merged; 1 turns micro-batching off."),
        click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="How long a request may wait for others to share its model call. 0: never; a "
                          "request that finds the model idle runs at once, and batches form from the "
                          "requests that arrive while it is busy."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                     help="Serve Prometheus metrics over HTTP on this port (0: any free port)."),
        click.option("--grace-s", type=click.FloatRange(min=0), default=5.0, show_default=True,
                     help="On SIGTERM/Ctrl-C, how long in-flight requests may still run."),
        click.option("--max-workers", type=click.IntRange(min=1), default=16, show_default=True,
                     help="gRPC worker threads: requests served at once (size it for the concurrent clients)."),
        click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Texts admitted and not yet answered; a request that does not fit is refused at once "
                          "(RESOURCE_EXHAUSTED) instead of waiting without bound. At least 64 (one full request)."),
        click.option("--max-inflight", type=click.IntRange(min=1), default=128, show_default=True,
                     help="RPCs running or waiting for a worker thread (open streams included); beyond, new "
                          "calls are refused at once with RESOURCE_EXHAUSTED (health checks excepted)."),
        click.option("--tls-cert", type=_FILE, default=None, help="TLS certificate chain (PEM); needs --tls-key."),
        click.option("--tls-key", type=_FILE, default=None, help="TLS private key (PEM) of --tls-cert."),
        click.option("--tls-client-ca", type=_FILE, default=None,
                     help="Mutual TLS: accept only clients whose certificate this CA (PEM) signed."),
        click.option("--auth-token-file", type=_FILE, default=None,
                     help="Bearer tokens, one per line (chmod 600): clients must send the gRPC metadata "
                          "'authorization: Bearer <token>', else UNAUTHENTICATED. Re-read on reload; turns "
                          "on the admin API (edgekit reload)."),
        click.option("--health-open", is_flag=True, default=False,
                     help="Let the gRPC health service answer without a token (for probes that cannot send one)."),
        click.option("--insecure", is_flag=True, default=False,
                     help="Allow plaintext on an address other than loopback (a trusted network only)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _serve(model: LogitModel, settings: ServerSettings, *, cloud: CloudClient | None, grace_s: float,
           reloader: Callable[[], LogitModel]) -> None:
    """Start the server (it owns model and cloud from here on), print the ready line, serve until a signal
    (SIGHUP: ``reloader`` loads the model again and the server swaps it in)."""
    from edgekit.runtime.server import build_server

    server = build_server(model, settings, cloud=cloud, reloader=reloader)
    server.install_signal_handlers(grace_s)  # before the ready line: a script may SIGTERM right after it
    info = server.dataplane.model_info()
    click.echo(f"serving {info.name} ({info.format}/{info.precision}, backend {info.backend}) on {server.address}")
    if server.metrics_port is not None:
        click.echo(f"metrics on http://{settings.host}:{server.metrics_port}/metrics")
    server.wait()


def _security(host: str, *, tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None,
              auth_token_file: Path | None, health_open: bool, insecure: bool):
    """The server's Security from its options, checked now (files read, combinations and address)."""
    from edgekit.runtime.security import Security

    security = Security(tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, token_file=auth_token_file,
                        health_open=health_open, insecure=insecure)
    security.check(host)
    security.tokens()  # the token file exists, is private and holds a token
    security.server_credentials()  # the PEM files are readable
    return security


def _cloud_client(target: str | None, protocol: str, model_name: str | None, tls_ca: Path | None = None,
                  tls_cert: Path | None = None, tls_key: Path | None = None,
                  token_file: Path | None = None) -> CloudClient | None:
    from edgekit.errors import ConfigError

    if target is None:
        if model_name is not None:
            raise ConfigError("--cloud-model needs --cloud HOST:PORT")
        if any(x is not None for x in (tls_ca, tls_cert, tls_key, token_file)):
            raise ConfigError("--cloud-tls-* and --cloud-token-file need --cloud HOST:PORT")
        return None
    from edgekit.runtime.security import channel_credentials, read_token

    security = {
        "credentials": channel_credentials(tls_ca, tls_cert, tls_key)
        if any(x is not None for x in (tls_ca, tls_cert, tls_key)) else None,
        "token": read_token(token_file) if token_file is not None else None,
    }
    from edgekit.runtime.cloud_protocols import load_cloud_protocols

    spec = load_cloud_protocols().get(protocol)
    if spec.needs_model_name and not model_name:
        raise ConfigError(f"--cloud-protocol {spec.name} needs --cloud-model NAME (the model to call on the server)")
    if not spec.needs_model_name and model_name is not None:
        raise ConfigError(f"--cloud-model does not apply to --cloud-protocol {spec.name} (its server serves one model)")
    return spec.make_client(target, model_name, **security)


@click.command("serve")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True,
              help="Port to listen on; 0 picks a free one (printed).")
@click.option("--backend", type=engine_choice(), default="auto",
              show_default=True, help="Inference engine; auto follows the bundle's manifest.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: the engine's).")
@click.option("--cloud", "cloud_target", metavar="HOST:PORT", default=None,
              help="Cloud model to ask when the edge model is unsure.")
@click.option("--cloud-protocol", type=cloud_protocol_choice(), default="edgekit", show_default=True,
              help="edgekit: another `edgekit serve-cloud`; kserve-v2: Triton/KServe ModelInfer (Open Inference Protocol v2).")
@click.option("--cloud-model", metavar="NAME", default=None, help="Model name on a kserve-v2 cloud server.")
@click.option("--cloud-timeout-ms", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Deadline of one cloud call.")
@click.option("--on-cloud-error", type=click.Choice(["degrade", "fail"]), default="degrade", show_default=True,
              help="degrade: answer at the edge (route EDGE_CLOUD_FAILED); fail: the request fails (UNAVAILABLE).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Fallback threshold on the calibrated score (default: the bundle's).")
@click.option("--cloud-tls-ca", type=_FILE, default=None,
              help="Reach the cloud over TLS, trusting this CA (PEM) for its certificate.")
@click.option("--cloud-tls-cert", type=_FILE, default=None, help="Client certificate (PEM) for a mutual-TLS cloud.")
@click.option("--cloud-tls-key", type=_FILE, default=None, help="Client key (PEM) of --cloud-tls-cert.")
@click.option("--cloud-token-file", type=_FILE, default=None,
              help="Send the first token of this file (chmod 600) to the cloud as 'authorization: Bearer <token>'.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes sharing the port (SO_REUSEPORT), each with --threads engine threads "
                   "(default: cores / workers); /metrics sums them.")
@_server_options
def command(
    bundle: Path,
    port: int,
    backend: str,
    threads: int | None,
    cloud_target: str | None,
    cloud_protocol: str,
    cloud_model: str | None,
    cloud_timeout_ms: float,
    on_cloud_error: str,
    threshold: float | None,
    cloud_tls_ca: Path | None,
    cloud_tls_cert: Path | None,
    cloud_tls_key: Path | None,
    cloud_token_file: Path | None,
    workers: int,
    server: _ServerOptions,
) -> None:
    """Serve an edge BUNDLE over gRPC (edgekit.v1 and KServe/Triton v2), falling back to a cloud model.

    SIGHUP re-reads BUNDLE and swaps the new version in without dropping a request; a bundle that
    fails its checksums, answers other labels or does not load is refused and the old one keeps serving.
    """
    from edgekit.deps import require

    require(*_RUNTIME_MODULES, extra="runtime", what="edgekit serve")
    limits = server.limits()  # bad values fail here, once, also before --workers start
    security = server.security()
    if workers > 1:
        checked = _cloud_client(cloud_target, cloud_protocol, cloud_model, cloud_tls_ca, cloud_tls_cert,
                                cloud_tls_key, cloud_token_file)  # bad option pairs fail here, once
        if checked is not None:
            checked.close()
        _serve_workers(click.get_current_context(), workers)
        return
    from edgekit.runtime.cascade import CascadeSettings

    cascade = CascadeSettings(threshold=threshold, cloud_timeout_ms=cloud_timeout_ms, on_cloud_error=on_cloud_error)
    batching = server.batching()
    cloud = _cloud_client(cloud_target, cloud_protocol, cloud_model, cloud_tls_ca, cloud_tls_cert, cloud_tls_key,
                          cloud_token_file)
    try:
        from edgekit.runtime.model import load_bundle_model

        model = load_bundle_model(bundle, backend=backend, threads=threads)
    except BaseException:
        if cloud is not None:
            cloud.close()
        raise
    import os

    from edgekit.runtime.workers import REUSE_PORT_ENV

    settings = server.settings(port, batching=batching, limits=limits, security=security, cascade=cascade,
                               reuse_port=os.environ.get(REUSE_PORT_ENV) == "1")
    _serve(model, settings, cloud=cloud, grace_s=server.grace_s,
           reloader=lambda: load_bundle_model(bundle, backend=backend, threads=threads))


def _serve_workers(ctx: click.Context, workers: int) -> None:
    """Run ``workers`` copies of this very command (``--workers 1``) on one port (runtime.workers)."""
    import sys

    from edgekit.runtime.workers import serve_workers, threads_per_worker

    params = dict(ctx.params)
    threads = threads_per_worker(workers, params["threads"])
    skip = {"bundle", "workers", "metrics_port", "port", "threads"}
    flags = {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option)}
    argv = [sys.executable, "-m", "edgekit", "serve", str(params["bundle"]), "--threads", str(threads)]
    for name, value in params.items():
        if name in skip or value is None or value is False:
            continue
        argv += [flags[name]] if value is True else [flags[name], str(value)]
    params_port = params["port"]
    code = serve_workers(lambda port: [*argv, "--port", str(port)], workers, host=params["host"], port=params_port,
                         metrics_port=params["metrics_port"], grace_s=params["grace_s"], echo=click.echo)
    ctx.exit(code)


@click.command("serve-cloud")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=50052, show_default=True,
              help="Port to listen on; 0 picks a free one (printed).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@_server_options
def cloud_command(
    model_dir: Path,
    port: int,
    device: str,
    server: _ServerOptions,
) -> None:
    """Serve the fine-tuned torch model in MODEL_DIR as the cloud model (it answers every text itself)."""
    from edgekit.deps import require

    require(*_RUNTIME_MODULES, extra="runtime", what="edgekit serve-cloud")
    require("torch", "transformers", extra="convert", what="edgekit serve-cloud")
    from edgekit.runtime.model import load_model

    batching = server.batching()
    limits = server.limits()  # checked before the model loads
    security = server.security()
    model = load_model(model_dir, device=device)  # a model directory: the torch engine
    _serve(model, server.settings(port, batching=batching, limits=limits, security=security), cloud=None,
           grace_s=server.grace_s, reloader=lambda: load_model(model_dir, device=device))
