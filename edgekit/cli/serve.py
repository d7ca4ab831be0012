"""``edgekit serve`` (an edge bundle, with cloud fallback) and ``edgekit serve-cloud`` (the torch model;
``--engine triton``: on NVIDIA Triton through :mod:`edgekit.runtime.triton`, in the cloud extra's venv).

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
    from edgekit.runtime.dataplane import Limits, MonitorSettings
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
    fast_lane: bool
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
                              max_inflight_rpcs=self.max_inflight, fast_lane=self.fast_lane, security=security,
                              **more)


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
                     help="Serve Prometheus metrics on this port (0: any free port): https with --tls-cert, else http."),
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
        click.option("--fast-lane/--no-fast-lane", default=True, show_default=True,
                     help="Serve Classify and ModelInfer straight from gRPC's completion queue, a lone call on "
                          "the thread that received it (0.3-0.5 ms less per call at one client); off: "
                          "grpcio's own server path for every method."),
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
    if server.metrics_url is not None:
        click.echo(f"metrics on {server.metrics_url}")
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


_MONITOR_OPTIONS = ("drift_window", "drift_threshold", "no_drift", "record", "record_max_bytes", "record_max_files",
                    "record_max_age_days", "record_fsync", "redact", "no_redact")


def _monitor_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Drift watch and ``--record``, handed to ``serve`` as one ``monitor`` callable that checks them
    and returns the MonitorSettings (ConfigError on bad values or --record-* without --record)."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _MONITOR_OPTIONS}
        return f(*args, monitor=functools.partial(_monitor_settings, click.get_current_context(), given), **kwargs)

    options = [
        click.option("--drift-window", type=click.IntRange(min=1), default=1000, show_default=True,
                     help="Texts in the sliding window compared with the bundle's validation reference."),
        click.option("--drift-threshold", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True,
                     help="Population stability index above which a signal (confidence, labels, length) drifts: "
                          "one warning per episode, edgekit_drift_alert, GetModelInfo."),
        click.option("--no-drift", is_flag=True, default=False, help="Do not watch drift."),
        click.option("--record", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
                     help="Append each query the cloud answered (redacted text, edge top-5, cloud label) to "
                          "rotated JSONL files in DIR, for `edgekit convert --feedback DIR`. Off by default."),
        click.option("--record-max-bytes", type=click.IntRange(min=1), default=64 * 1024 * 1024, show_default=True,
                     help="[record] Size of one file before the next starts."),
        click.option("--record-max-files", type=click.IntRange(min=0), default=16, show_default=True,
                     help="[record] Files kept, oldest deleted first (0: no limit)."),
        click.option("--record-max-age-days", type=click.FloatRange(min=0), default=30.0, show_default=True,
                     help="[record] Retention: files older than this are deleted (0: no limit)."),
        click.option("--record-fsync", type=click.Choice(["never", "rotate", "always"]), default="rotate",
                     show_default=True, help="[record] When records are forced to disk (a power cut; a crash "
                                             "of the server never loses an acknowledged record)."),
        click.option("--redact", type=click.Choice(["email", "phone", "number"]), multiple=True,
                     help="[record] Personal data replaced in recorded texts (repeatable; default: all three)."),
        click.option("--no-redact", is_flag=True, default=False, help="[record] Record texts as they came."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _monitor_settings(ctx: click.Context, given: dict[str, Any]):
    from edgekit.errors import ConfigError
    from edgekit.monitoring import DriftSettings
    from edgekit.runtime.dataplane import MonitorSettings
    from edgekit.runtime.recorder import RecorderSettings

    if given["no_drift"]:
        _refuse_given(ctx, ("drift_window", "drift_threshold"), "drift watching (without --no-drift)")
    drift = None if given["no_drift"] else DriftSettings(window=given["drift_window"],
                                                         threshold=given["drift_threshold"])
    if given["record"] is None:
        _refuse_given(ctx, _MONITOR_OPTIONS[4:], "--record DIR")
        return MonitorSettings(drift=drift)
    if given["redact"] and given["no_redact"]:
        raise ConfigError("--redact and --no-redact contradict each other")
    redact = () if given["no_redact"] else (given["redact"] or ("email", "phone", "number"))
    record = RecorderSettings(directory=given["record"], max_bytes=given["record_max_bytes"],
                              max_files=given["record_max_files"] or None,
                              max_age_days=given["record_max_age_days"] or None,
                              fsync=given["record_fsync"], redact=frozenset(redact))
    return MonitorSettings(drift=drift, record=record)


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
@click.option("--cloud-max-inflight", type=click.IntRange(min=1), default=4, show_default=True,
              help="Cloud calls in flight at once; a query that finds them all busy is answered at the edge "
                   "(EDGE_CLOUD_FAILED). Raise it for a cloud that batches (Triton's dynamic batching).")
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
@click.option("--skip-cloud-label-check", is_flag=True, default=False,
              help="Do not ask the cloud model for its labels at start-up (by default a model whose labels differ "
                   "from the bundle's, or that declares none, is refused).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes sharing the port (SO_REUSEPORT), each with --threads engine threads "
                   "(default: cores / workers); /metrics sums them.")
@click.option("--engine-cpus", metavar="LIST", default=None,
              help="Linux: run the model's engine thread on these CPUs (such as 1, 2,3 or 2-3) and the "
                   "server's other threads on the rest, so that under load the engine keeps its cores and "
                   "caches. Needs micro-batching; --threads defaults to their number. With --workers N, LIST is "
                   "split into N groups of consecutive CPUs, one per worker's engine.")
@_monitor_options
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
    cloud_max_inflight: int,
    on_cloud_error: str,
    threshold: float | None,
    cloud_tls_ca: Path | None,
    cloud_tls_cert: Path | None,
    cloud_tls_key: Path | None,
    cloud_token_file: Path | None,
    skip_cloud_label_check: bool,
    workers: int,
    engine_cpus: str | None,
    server: _ServerOptions,
    monitor: Callable[[], MonitorSettings],
) -> None:
    """Serve an edge BUNDLE over gRPC (edgekit.v1 and KServe/Triton v2), falling back to a cloud model.

    SIGHUP re-reads BUNDLE and swaps the new version in without dropping a request; a bundle that
    fails its checksums, answers other labels or does not load is refused and the old one keeps serving.
    """
    from edgekit.deps import require

    require(*_RUNTIME_MODULES, extra="runtime", what="edgekit serve")
    limits = server.limits()  # bad values fail here, once, also before --workers start
    security = server.security()
    monitoring = monitor()
    if workers > 1:
        groups = _worker_engine_cpus(engine_cpus, workers, threads, server.max_batch_size)
        checked = _cloud_client(cloud_target, cloud_protocol, cloud_model, cloud_tls_ca, cloud_tls_cert,
                                cloud_tls_key, cloud_token_file)  # bad option pairs fail here, once
        if checked is not None:
            checked.close()
        _serve_workers(click.get_current_context(), workers, groups)
        return
    engine, threads = _engine_cpus(engine_cpus, threads, server.max_batch_size)
    from edgekit.runtime.cascade import CascadeSettings

    cascade = CascadeSettings(threshold=threshold, cloud_timeout_ms=cloud_timeout_ms, on_cloud_error=on_cloud_error,
                              max_cloud_inflight=cloud_max_inflight)
    batching = dataclasses.replace(server.batching(), engine_cpus=engine)
    cloud = _cloud_client(cloud_target, cloud_protocol, cloud_model, cloud_tls_ca, cloud_tls_cert, cloud_tls_key,
                          cloud_token_file)
    try:
        from edgekit.runtime.affinity import pinned
        from edgekit.runtime.model import load_bundle_model

        with pinned(engine):  # an engine's own threads (--threads > 1) start on the engine's CPUs
            model = load_bundle_model(bundle, backend=backend, threads=threads)
        if cloud is not None and not skip_cloud_label_check:
            _check_cloud_labels(cloud, model.info.labels, cloud_timeout_ms)
    except BaseException:
        if cloud is not None:
            cloud.close()
        raise
    import os

    from edgekit.runtime.workers import REUSE_PORT_ENV

    settings = server.settings(port, batching=batching, limits=limits, security=security, cascade=cascade,
                               reuse_port=os.environ.get(REUSE_PORT_ENV) == "1", monitor=monitoring)

    def reload() -> LogitModel:
        with pinned(engine):
            return load_bundle_model(bundle, backend=backend, threads=threads)

    _serve(model, settings, cloud=cloud, grace_s=server.grace_s, reloader=reload)


def _engine_cpus(given: str | None, threads: int | None, max_batch_size: int) -> tuple[frozenset[int] | None, int | None]:
    """``--engine-cpus``: the engine's CPUs (None without the option) and the engine threads; the
    calling thread, and every thread the server starts from it, moves to the other CPUs now."""
    if given is None:
        return None, threads
    import os

    from edgekit.errors import ConfigError
    from edgekit.runtime.affinity import RESERVED_CPUS_ENV, parse_cpu_list, pin_thread, split_cpus

    _check_engine_batching(max_batch_size)
    reserved = os.environ.get(RESERVED_CPUS_ENV)  # a worker of `--workers N --engine-cpus`: all the engines' CPUs
    engine, rest = split_cpus(parse_cpu_list(given), reserved=parse_cpu_list(reserved) if reserved else None)
    if threads is not None and threads > len(engine):
        raise ConfigError(f"--threads {threads} needs as many CPUs in --engine-cpus (it names {len(engine)})")
    pin_thread(rest)
    return engine, threads or len(engine)


def _check_engine_batching(max_batch_size: int) -> None:
    if max_batch_size <= 1:
        from edgekit.errors import ConfigError

        raise ConfigError("--engine-cpus needs micro-batching (--max-batch-size > 1): it pins the batcher's "
                          "engine thread")


def _worker_engine_cpus(given: str | None, workers: int, threads: int | None,
                        max_batch_size: int) -> list[frozenset[int]] | None:
    """``--workers N --engine-cpus LIST``: LIST split into N groups of consecutive CPUs, one per worker
    (None without the option), checked here once: the engines' CPUs leave one for the other threads,
    each worker gets at least one, and ``--threads`` fits every group."""
    if given is None:
        return None
    from edgekit.errors import ConfigError
    from edgekit.runtime.affinity import parse_cpu_list, split_cpus, worker_cpus

    _check_engine_batching(max_batch_size)
    engine, _ = split_cpus(parse_cpu_list(given))
    groups = worker_cpus(engine, workers)
    fewest = min(len(group) for group in groups)
    if threads is not None and threads > fewest:
        raise ConfigError(f"--threads {threads} needs as many CPUs per worker in --engine-cpus (LIST split over "
                          f"{workers} workers gives one of them {fewest})")
    return groups


def _check_cloud_labels(cloud: CloudClient, labels: tuple[str, ...], cloud_timeout_ms: float) -> None:
    """The cloud model must answer with the bundle's labels: refused now if it does not (ModelError, one
    line); a cloud that cannot be asked now is asked before its first call (runtime.cloud)."""
    expect = getattr(cloud, "expect_labels", None)  # a third-party protocol's client may not offer it
    if expect is not None:
        expect(labels, timeout_s=max(cloud_timeout_ms / 1000, 5.0))  # start-up: more patient than one call


def _serve_workers(ctx: click.Context, workers: int, engine_groups: list[frozenset[int]] | None) -> None:
    """Run ``workers`` copies of this very command (``--workers 1``) on one port (runtime.workers);
    with ``engine_groups`` (``--engine-cpus``) worker i pins its engine to group i, and every worker's
    other threads keep off all the groups."""
    import sys

    from edgekit.runtime.affinity import RESERVED_CPUS_ENV, format_cpus
    from edgekit.runtime.workers import serve_workers, threads_per_worker

    params = dict(ctx.params)
    if engine_groups is None:
        threads = threads_per_worker(workers, params["threads"])
    else:
        threads = params["threads"] or min(len(group) for group in engine_groups)
    skip = {"bundle", "workers", "metrics_port", "port", "threads", "engine_cpus"}
    options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    argv = [sys.executable, "-m", "edgekit", "serve", str(params["bundle"]), "--threads", str(threads)]
    from click.core import ParameterSource

    for name, value in params.items():
        # only what the user gave: a default passed on would count as given (--record-max-bytes without --record)
        if name in skip or value is None or ctx.get_parameter_source(name) == ParameterSource.DEFAULT:
            continue
        flag = options[name].opts[0]
        if isinstance(value, bool):  # a flag, or the off side of a pair (--no-fast-lane)
            off = options[name].secondary_opts
            argv += [flag] if value else off[:1]
        elif isinstance(value, tuple):  # a repeatable option (--redact): once per value
            argv += [arg for item in value for arg in (flag, str(item))]
        else:
            argv += [flag, str(value)]
    params_port = params["port"]
    security = _security(params["host"], **{name: params[name] for name in _SECURITY_OPTIONS})
    env: dict[str, str] = {}
    if engine_groups is not None:
        env[RESERVED_CPUS_ENV] = format_cpus(frozenset().union(*engine_groups))

    def worker_argv(port: int, index: int) -> list[str]:
        pin = [] if engine_groups is None else ["--engine-cpus", format_cpus(engine_groups[index])]
        return [*argv, *pin, "--port", str(port)]

    code = serve_workers(worker_argv, workers, host=params["host"], port=params_port,
                         metrics_port=params["metrics_port"], grace_s=params["grace_s"], echo=click.echo,
                         security=security, env=env)
    ctx.exit(code)


# --engine triton only (its settings: edgekit.runtime.triton.TritonSettings); the built-in server's own
# options are refused with --engine triton, these without it: no option is silently ignored.
_TRITON_OPTIONS = ("model_name", "http_port", "triton_max_batch_size", "triton_queue_delay_us",
                   "triton_dynamic_batching", "instances", "top_k")
_BUILTIN_ONLY = ("max_batch_size", "max_wait_ms", "grace_s", "max_workers", "max_queue", "max_inflight",
                 "fast_lane", "tls_cert", "tls_key", "tls_client_ca", "auth_token_file", "health_open")


def _triton_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--engine triton`` options, handed to the command as one ``triton`` dict."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        return f(*args, triton={name: kwargs.pop(name) for name in _TRITON_OPTIONS}, **kwargs)

    options = [
        click.option("--model-name", metavar="NAME", default=None,
                     help="[triton] Name of the model on the Triton server (the edge's --cloud-model). "
                          "Default: MODEL_DIR's name, other characters than [a-zA-Z0-9._-] made '-'."),
        click.option("--http-port", type=click.IntRange(0, 65535), default=None,
                     help="[triton] Serve Triton's HTTP/REST endpoint (/v2: health, metadata, infer) on this "
                          "port too (0: any free port). Default: gRPC only."),
        click.option("--triton-max-batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     help="[triton] Texts per model call (Triton's max_batch_size), also the most one request "
                          "may send."),
        click.option("--triton-queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
                     help="[triton] How long Triton's dynamic batcher may hold a request to merge it with others."),
        click.option("--triton-dynamic-batching/--no-triton-dynamic-batching", default=True, show_default=True,
                     help="[triton] Let Triton merge concurrent requests into one model call."),
        click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
                     help="[triton] Model instances: copies of the model, each with its own inference thread."),
        click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
                     help="[triton] Width of the top_labels / top_scores outputs (at most the number of labels)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _refuse_given(ctx: click.Context, names: tuple[str, ...], applies_to: str) -> None:
    """ConfigError naming the first option of ``names`` given on the command line."""
    from click.core import ParameterSource

    from edgekit.errors import ConfigError

    flags = {p.name: p.opts[0] for p in ctx.command.params}
    for name in names:
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
            raise ConfigError(f"{flags[name]} applies to {applies_to} only")


@click.command("serve-cloud")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=50052, show_default=True,
              help="Port to listen on (gRPC); 0 picks a free one (printed).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--engine", type=click.Choice(["edgekit", "triton"]), default="edgekit", show_default=True,
              help="edgekit: the built-in gRPC server (edgekit.v1 and v2); triton: NVIDIA Triton Inference Server "
                   "through PyTriton (Open Inference Protocol v2; the cloud extra, in a venv of its own: see README).")
@_triton_options
@_server_options
def cloud_command(
    model_dir: Path,
    port: int,
    device: str,
    engine: str,
    triton: dict[str, Any],
    server: _ServerOptions,
) -> None:
    """Serve the fine-tuned torch model in MODEL_DIR as the cloud model (it answers every text itself)."""
    from edgekit.deps import require

    ctx = click.get_current_context()
    if engine == "triton":
        _refuse_given(ctx, _BUILTIN_ONLY, "--engine edgekit")
        _serve_triton(model_dir, port, device, triton, server)
        return
    _refuse_given(ctx, _TRITON_OPTIONS, "--engine triton")
    require(*_RUNTIME_MODULES, extra="runtime", what="edgekit serve-cloud")
    require("torch", "transformers", extra="convert", what="edgekit serve-cloud")
    from edgekit.runtime.model import load_model

    batching = server.batching()
    limits = server.limits()  # checked before the model loads
    security = server.security()
    model = load_model(model_dir, device=device)  # a model directory: the torch engine
    _serve(model, server.settings(port, batching=batching, limits=limits, security=security), cloud=None,
           grace_s=server.grace_s, reloader=lambda: load_model(model_dir, device=device))


def _serve_triton(model_dir: Path, port: int, device: str, triton: dict[str, Any], server: _ServerOptions) -> None:
    """``serve-cloud --engine triton``: the model bound to Triton (edgekit.runtime.triton), until SIGTERM/Ctrl-C."""
    from edgekit.deps import require
    from edgekit.runtime.triton import TritonSettings, default_model_name, serve_triton

    settings = TritonSettings(  # bad values fail here, before anything heavy is looked for
        model_name=triton["model_name"] or default_model_name(model_dir), host=server.host, grpc_port=port,
        http_port=triton["http_port"], metrics_port=server.metrics_port,
        max_batch_size=triton["triton_max_batch_size"], queue_delay_us=triton["triton_queue_delay_us"],
        dynamic_batching=triton["triton_dynamic_batching"], instances=triton["instances"], top_k=triton["top_k"],
    )
    server.security()  # plaintext off loopback needs --insecure, as for the built-in server
    require("pytriton", extra="cloud", what="serve-cloud --engine triton")
    if not (model_dir / "manifest.json").is_file():  # a model directory: the torch engine (a bundle: its own)
        require("torch", "transformers", extra="cloud", what="serve-cloud --engine triton")
    serve_triton(model_dir, settings, device=device, echo=click.echo)
