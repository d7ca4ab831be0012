"""Server load benchmark: concurrent clients against a real edge server, with and without micro-batching.

:func:`run_load` measures, in one run and on one bundle:

- ``raw-backend``: the loaded model called in-process, one text per call, by one caller
  (tokenizer + engine, no gRPC): the ceiling a server is compared with;
- ``raw-backend-concurrent``: the same with ``clients`` threads calling at once (left out
  for one client);
- ``server-no-batching``: a real server (:func:`~edgekit.runtime.server.build_server`, as
  ``edgekit serve`` builds it) on 127.0.0.1 with ``max_batch_size=1``, and ``clients``
  threads, each with its own :class:`~edgekit.runtime.client.EdgeClient` and channel,
  sending one text per ``Classify`` call (``allow_cloud=False``) for ``seconds``;
- ``server-micro-batching``: the same against a server that merges concurrent requests
  (``max_batch_size``, ``max_wait_ms``);
- with ``config.cloud`` (:class:`TritonCloud`), edge → Triton fallback, side by side:
  ``cloud-triton-batching`` and ``cloud-triton-no-batching``. Each starts the cloud model on
  NVIDIA Triton (``edgekit serve-cloud --engine triton`` from the cloud venv, with and then without
  Triton's dynamic batching, one after the other), puts the micro-batching edge server in front of
  it with ``--cloud-protocol kserve-v2`` and a threshold that sends ``fraction`` of the texts to the
  cloud, and drives it as above (``allow_cloud=True``). These rows also report the routes, the
  latency of the requests Triton answered, and Triton's own counters from its metrics port: model
  calls (``nv_inference_exec_count``) against requests (``nv_inference_request_success``) give
  the mean batch Triton ran.

Each row reports completed requests, errors (what the client raises as
:class:`~edgekit.errors.EdgekitError`), throughput and client-side p50/p99 latency; server
rows also report the mean number of texts per model call, read from the server's metrics.

The client threads run in the server's own process: they share its interpreter lock and
its cores, so the server rows are a lower bound of what the server does for clients on
other machines. Throughput is completed requests over the wall time from the common start
until the last client finishes its last call (calls running at the deadline complete).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.bench.load_triton import TritonCloud
from edgekit.errors import ConfigError, EdgekitError

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.batching import BatchSettings
    from edgekit.runtime.model import BundleModel
    from edgekit.runtime.types import ModelInfo

__all__ = ["CLOUD_MODES", "LoadConfig", "MODES", "TritonCloud", "format_load_markdown", "run_load"]

log = logging.getLogger(__name__)

RAW = "raw-backend"
RAW_CONCURRENT = "raw-backend-concurrent"
NO_BATCHING = "server-no-batching"
MICRO_BATCHING = "server-micro-batching"
MODES = (RAW, RAW_CONCURRENT, NO_BATCHING, MICRO_BATCHING)
TRITON_BATCHING = "cloud-triton-batching"
TRITON_NO_BATCHING = "cloud-triton-no-batching"
CLOUD_MODES = (TRITON_BATCHING, TRITON_NO_BATCHING)  # with LoadConfig.cloud, after MODES

_GRACE_S = 2.0  # for stopping a server after its phase


@dataclass
class _Tally:
    """What one caller saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    finished: float = 0.0  # perf_counter() after its last call

    def error(self, exc: EdgekitError) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = str(exc)


def _drive(
    calls: Sequence[Callable[[str], object]],
    texts: Sequence[str],
    seconds: float,
    *,
    warm: Sequence[Callable[[], object]] = (),
) -> dict[str, Any]:
    """Run every call in its own thread, one text per call (cycling through ``texts``), for
    ``seconds`` from a common start. ``warm[i]`` runs before the start (a channel connect);
    an :class:`EdgekitError` from either counts as an error, anything else propagates."""
    tallies = [_Tally() for _ in calls]
    start: list[float] = []
    barrier = threading.Barrier(len(calls), action=lambda: start.append(time.perf_counter()))

    def caller(i: int) -> None:
        tally, call = tallies[i], calls[i]
        try:
            if i < len(warm):
                warm[i]()
        except EdgekitError as exc:
            tally.error(exc)
        except BaseException:
            barrier.abort()
            raise
        barrier.wait()
        deadline = start[0] + seconds
        k = i  # callers start at different texts
        while (t0 := time.perf_counter()) < deadline:
            text = texts[k % len(texts)]
            k += 1
            try:
                call(text)
            except EdgekitError as exc:
                tally.error(exc)
                continue
            tally.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        tally.finished = time.perf_counter()

    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="edgekit-load") as pool:
        futures = [pool.submit(caller, i) for i in range(len(calls))]
    failures = [exc for exc in (f.exception() for f in futures) if exc is not None]
    if failures:  # the cause, not the other callers' broken barrier
        raise next((e for e in failures if not isinstance(e, threading.BrokenBarrierError)), failures[0])
    return _row(tallies, start[0], clients=len(calls))


def _row(tallies: Sequence[_Tally], start: float, *, clients: int) -> dict[str, Any]:
    import numpy as np

    latencies = np.asarray([ms for t in tallies for ms in t.latencies_ms], dtype=np.float64)
    elapsed = max(t.finished for t in tallies) - start
    requests = int(latencies.size)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(latencies, q)), 3) if requests else None

    return {
        "clients": clients,
        "requests": requests,
        "errors": sum(t.errors for t in tallies),
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(requests / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_ms_p50": pct(50),
        "latency_ms_p99": pct(99),
        "latency_ms_mean": round(float(latencies.mean()), 3) if requests else None,
        "mean_batch_size": None,  # texts per model call (server rows)
        "max_batch_size": None,
        "max_wait_ms": None,
        "first_error": next((t.first_error for t in tallies if t.first_error), None),
    }


def _serve_and_drive(
    model: BundleModel, batching: BatchSettings, texts: Sequence[str], clients: int, seconds: float
) -> dict[str, Any]:
    """Serve ``model`` (the server owns and closes it), drive it with ``clients`` EdgeClients."""
    from edgekit.runtime.client import EdgeClient
    from edgekit.runtime.server import build_server

    server = build_server(model, host="127.0.0.1", port=0, batching=batching)
    try:
        edge_clients = [EdgeClient(server.address) for _ in range(clients)]
        try:
            row = _drive(
                [lambda text, c=c: c.classify([text], allow_cloud=False) for c in edge_clients],
                texts,
                seconds,
                warm=[c.health for c in edge_clients],
            )
        finally:
            for c in edge_clients:
                c.close()
        registry = server.dataplane.registry
        calls = registry.get_sample_value("edgekit_batch_size_count") or 0.0
        total = registry.get_sample_value("edgekit_batch_size_sum") or 0.0
        row["mean_batch_size"] = round(total / calls, 2) if calls else None
        row["max_batch_size"] = batching.max_batch_size
        row["max_wait_ms"] = batching.max_wait_ms if batching.enabled else None
    finally:
        server.stop(grace_s=_GRACE_S)
    return row


def _is_number(value: object, kind: type) -> bool:
    """``value`` is a ``kind`` (numbers.Integral, numbers.Real) and not a bool."""
    return isinstance(value, kind) and not isinstance(value, bool)


@dataclass(frozen=True)
class LoadConfig:
    """How :func:`run_load` drives a bundle: ``clients`` concurrent callers for ``seconds`` per mode,
    the engine (``backend``, ``threads``), the micro-batching server's ``max_batch_size`` and
    ``max_wait_ms``, and a progress bar. Raises :class:`~edgekit.errors.ConfigError` on bad values."""

    clients: int = 8
    seconds: float = 10.0
    backend: str = "auto"
    threads: int | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 0.0
    progress: bool = True
    cloud: TritonCloud | None = None  # the edge → Triton rows (CLOUD_MODES)

    def __post_init__(self) -> None:
        if not _is_number(self.clients, numbers.Integral) or self.clients < 1:
            raise ConfigError(f"clients must be a whole number >= 1, got {self.clients!r}")
        if not _is_number(self.seconds, numbers.Real) or not 0 < self.seconds < math.inf:
            raise ConfigError(f"seconds must be a finite number > 0, got {self.seconds!r}")
        if not _is_number(self.max_batch_size, numbers.Integral) or self.max_batch_size < 2:
            raise ConfigError(
                f"max_batch_size must be >= 2 for the micro-batching row, got {self.max_batch_size!r} "
                "(the no-batching row is always measured)"
            )
        if not _is_number(self.max_wait_ms, numbers.Real) or not 0 <= self.max_wait_ms < math.inf:
            raise ConfigError(f"max_wait_ms must be a finite number >= 0, got {self.max_wait_ms!r}")
        if self.cloud is not None and not isinstance(self.cloud, TritonCloud):
            raise ConfigError(f"cloud must be a TritonCloud or None, got {type(self.cloud).__name__}")
        # plain numbers in the JSON (numpy scalars are accepted)
        for name, plain in (("clients", int), ("seconds", float), ("max_batch_size", int), ("max_wait_ms", float)):
            object.__setattr__(self, name, plain(getattr(self, name)))


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of texts, got a single string")
    if not texts:
        raise ConfigError("texts is empty: give at least one text to send")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(
                f"texts[{i}] is {text!r}: every text must be a non-blank string (the server refuses others)"
            )


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="phase", desc="load", leave=False)


def run_load(bundle_dir: str | Path, texts: Sequence[str], config: LoadConfig | None = None) -> dict[str, Any]:
    """Load-test the bundle in ``bundle_dir``: the raw backend, then a server without and with
    micro-batching, each for ``config.seconds`` with ``config.clients`` concurrent callers (see the
    module doc; ``config`` defaults to ``LoadConfig()``).

    Returns a JSON-able dict: ``device``, ``bundle``, the settings, ``rows`` (one per mode, in
    :data:`MODES` order) and ``ratios`` (each row's throughput over the single-caller raw
    backend's). Raises :class:`~edgekit.errors.ConfigError` on bad texts before loading anything.
    """
    from edgekit.runtime.batching import BatchSettings

    config = LoadConfig() if config is None else config
    _check_texts(texts)
    cloud_edgekit = config.cloud.check() if config.cloud is not None else None
    texts = list(texts)
    servers = {
        NO_BATCHING: BatchSettings(max_batch_size=1),
        MICRO_BATCHING: BatchSettings(max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms),
    }
    bundle_dir = Path(bundle_dir)
    info, rows, threshold = _measure(bundle_dir, texts, config, servers, cloud_edgekit)
    return _result(bundle_dir, texts, config, info, rows, threshold)


def _measure(
    bundle_dir: Path, texts: list[str], config: LoadConfig, servers: dict[str, BatchSettings],
    cloud_edgekit: Path | None,
) -> tuple[ModelInfo, list[dict[str, Any]], float | None]:
    """Every mode in :data:`MODES` order (the concurrent raw row only for several clients), then
    :data:`CLOUD_MODES` with ``config.cloud``: the bundle's info, one row per mode and the cloud
    rows' threshold. ``servers``: the batching of each server mode."""
    from edgekit.bench.load_triton import threshold_for, triton_row
    from edgekit.runtime.model import load_bundle_model

    clients, seconds = config.clients, config.seconds
    phases = [RAW, *([RAW_CONCURRENT] if clients > 1 else []), *servers,
              *(CLOUD_MODES if config.cloud is not None else ())]
    threshold = None
    bar = None  # started once the bundle has loaded
    rows: list[dict[str, Any]] = []

    def phase(mode: str, measure: Callable[[], dict[str, Any]]) -> None:
        if bar is not None:
            bar.set_postfix_str(mode)
        log.info("event=load_phase mode=%s clients=%d seconds=%s", mode, clients, seconds)
        rows.append({"mode": mode, **measure()})
        if bar is not None:
            bar.update()

    try:
        model = load_bundle_model(bundle_dir, config.backend, config.threads)  # verifies checksums once
        bar = _progress(len(phases), config.progress)
        try:
            info = model.info
            model.logits(texts[:1])  # the first call allocates and picks kernels
            phase(RAW, lambda: _drive([lambda text: model.logits([text])], texts, seconds))
            if clients > 1:
                phase(RAW_CONCURRENT, lambda: _drive([lambda text: model.logits([text])] * clients, texts, seconds))
            if config.cloud is not None:
                threshold = threshold_for(model, texts, config.cloud.fraction)
        finally:
            model.close()
        # build_server owns its model and closes it on stop(): a fresh one per server
        for mode, batching in servers.items():
            fresh = load_bundle_model(bundle_dir, config.backend, config.threads, verify=False)
            phase(mode, lambda: _serve_and_drive(fresh, batching, texts, clients, seconds))
        if config.cloud is not None and cloud_edgekit is not None and threshold is not None:
            for mode in CLOUD_MODES:
                phase(mode, lambda dynamic=mode == TRITON_BATCHING: triton_row(
                    config.cloud, cloud_edgekit,
                    lambda: load_bundle_model(bundle_dir, config.backend, config.threads, verify=False),
                    dynamic_batching=dynamic, texts=texts, clients=clients, seconds=seconds,
                    batching=servers[MICRO_BATCHING], threshold=threshold, drive=_drive))
    finally:
        if bar is not None:
            bar.close()
    return info, rows, threshold


def _result(
    bundle_dir: Path, texts: list[str], config: LoadConfig, info: ModelInfo, rows: list[dict[str, Any]],
    threshold: float | None,
) -> dict[str, Any]:
    from edgekit.device import device_record

    raw_rps = rows[0]["throughput_rps"]
    return {
        "device": device_record(),
        "bundle": {
            "path": str(bundle_dir),
            "name": info.name,
            "version": info.version,
            "format": info.format,
            "precision": info.precision,
            "backend": info.backend,
        },
        "clients": config.clients,
        "seconds": config.seconds,
        "threads": config.threads,
        "texts": len(texts),
        "batching": {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms},
        "load_generator": "client threads in the server's process (sharing its interpreter lock and cores)",
        "cloud": None if config.cloud is None else config.cloud.record(config.clients, threshold),
        "rows": rows,
        "ratios": {
            row["mode"]: round(row["throughput_rps"] / raw_rps, 3) if raw_rps else None for row in rows[1:]
        },
    }


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_load_markdown(result: dict[str, Any]) -> str:
    """A markdown summary of :func:`run_load`'s result: a line of settings and one table row per mode."""
    bundle, device = result["bundle"], result["device"]
    batching = result["batching"]
    lines = [
        f"Load: `{bundle['name']}` ({bundle['format']}/{bundle['precision']}, backend {bundle['backend']}) on "
        f"{device.get('cpu', '?')} ({device.get('cores', '?')} cores); {result['clients']} clients × "
        f"{result['seconds']:g} s, one text per request; micro-batching up to {batching['max_batch_size']} texts "
        f"/ {batching['max_wait_ms']:g} ms.",
        "",
        "| mode | clients | requests | errors | req/s | vs raw | p50 ms | p99 ms | texts/call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = result.get("ratios", {})
    for row in result["rows"]:
        ratio = 1.0 if row["mode"] == RAW else ratios.get(row["mode"])
        vs_raw = "–" if ratio is None else f"{ratio:.2f}×"
        lines.append(
            f"| {row['mode']} | {row['clients']} | {row['requests']} | {row['errors']} "
            f"| {_cell(row['throughput_rps'])} | {vs_raw} | {_cell(row['latency_ms_p50'], 2)} "
            f"| {_cell(row['latency_ms_p99'], 2)} | {_cell(row.get('mean_batch_size'), 2)} |"
        )
    lines += _cloud_markdown(result)
    errors = [f"{row['mode']}: {row['first_error']}" for row in result["rows"] if row.get("first_error")]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors)]
    lines += ["", "The clients are threads in the server's process: server rows are a lower bound."]
    return "\n".join(lines) + "\n"


def _cloud_markdown(result: dict[str, Any]) -> list[str]:
    """The edge → Triton rows side by side: routes, the latency of Triton's answers, Triton's batches."""
    cloud = result.get("cloud")
    rows = [row for row in result["rows"] if row["mode"] in CLOUD_MODES]
    if cloud is None or not rows:
        return []
    settings = (
        f"Edge → Triton (`{Path(cloud['model_dir']).name}`, torch on Triton via PyTriton, same machine): threshold "
        f"{cloud['threshold']:.4f} for {cloud['fraction']:.0%} of the texts to the cloud, cloud deadline "
        f"{cloud['timeout_ms']:g} ms, {cloud['inflight']} cloud calls in flight at most; Triton max batch "
        f"{cloud['triton_max_batch_size']}, queue delay {cloud['triton_queue_delay_us']} us when batching."
    )
    header = ("| mode | Triton batching | cloud share | EDGE_CLOUD_FAILED | cloud p50 ms | cloud p99 ms "
              "| Triton requests | Triton model calls | texts/model call | queue us/request | compute us/call |")
    lines = ["", settings, "", header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        t = row["triton"]
        share = "–" if row["cloud_share"] is None else f"{row['cloud_share']:.1%}"
        lines.append(
            f"| {row['mode']} | {'dynamic' if t['dynamic_batching'] else 'off'} | {share} "
            f"| {row['routes']['EDGE_CLOUD_FAILED']} | {_cell(row['cloud_latency_ms_p50'], 2)} "
            f"| {_cell(row['cloud_latency_ms_p99'], 2)} | {t['requests']} | {t['model_calls']} "
            f"| {_cell(t['mean_batch'], 2)} | {_cell(t['queue_us_per_request'])} | {_cell(t['compute_us_per_call'])} |"
        )
    return lines
