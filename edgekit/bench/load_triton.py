"""The edge → Triton rows of the load benchmark (:func:`edgekit.bench.load.run_load` with a
:class:`TritonCloud`): cloud latency and throughput under concurrent load, Triton's dynamic
batching on and off, side by side in one run.

Each row starts the cloud model on NVIDIA Triton (``edgekit serve-cloud --engine triton`` from the
cloud venv, with Triton's metrics port), puts an edge server in front of it as ``edgekit serve
--cloud-protocol kserve-v2`` builds one (the label check at start-up included) with a threshold that
sends a chosen share of the texts to the cloud, drives it with the load benchmark's clients, and
stops both. Besides the usual figures a row holds the routes the clients got, the latency of the
requests Triton answered (route CLOUD), and Triton's own counters over the measured time:
requests (``nv_inference_request_success``), texts (``nv_inference_count``) and model calls
(``nv_inference_exec_count``: texts over calls is the mean batch Triton ran), queue and compute time.
"""

from __future__ import annotations

import math
import numbers
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.bench.servers import ServerProcess, cloud_edgekit, triton_cloud_argv, triton_stats
from edgekit.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.batching import BatchSettings
    from edgekit.runtime.model import BundleModel

__all__ = ["TritonCloud", "threshold_for", "triton_row"]

ROUTES = ("EDGE", "CLOUD", "EDGE_CLOUD_FAILED")
_GRACE_S = 2.0  # for stopping the edge server after its phase


def _whole(value: object, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TritonCloud:
    """The cloud model in ``model_dir`` (a fine-tuned Hugging Face directory) served by ``edgekit
    serve-cloud --engine triton`` from ``venv`` (a venv with ``edgekit[cloud]``), with Triton's
    ``max_batch_size`` and ``queue_delay_us`` (the dynamic batcher's; the second row runs without it).
    The edge sends ``fraction`` of the texts to the cloud (a threshold chosen from the bundle's own
    scores on them: 1.0 sends every text not scored 1.0), gives each call ``timeout_ms`` and allows
    ``inflight`` cloud calls at once (None: one per client; ``edgekit serve`` allows 4, which turns
    the other clients' cloud calls into EDGE_CLOUD_FAILED at once). ConfigError on bad values."""

    model_dir: Path
    venv: Path
    fraction: float = 1.0
    timeout_ms: float = 5000.0
    inflight: int | None = None
    max_batch_size: int = 64
    queue_delay_us: int = 500
    model_name: str = "cloud"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", Path(self.model_dir))
        object.__setattr__(self, "venv", Path(self.venv))
        if not _real(self.fraction) or not 0 <= self.fraction <= 1:
            raise ConfigError(f"cloud fraction must lie in [0, 1], got {self.fraction!r}")
        if not _real(self.timeout_ms) or self.timeout_ms <= 0:
            raise ConfigError(f"cloud timeout_ms must be a finite number > 0, got {self.timeout_ms!r}")
        if self.inflight is not None and not _whole(self.inflight, 1):
            raise ConfigError(f"cloud inflight must be a whole number >= 1 (or None), got {self.inflight!r}")
        if not _whole(self.max_batch_size, 1):
            raise ConfigError(f"Triton max_batch_size must be a whole number >= 1, got {self.max_batch_size!r}")
        if not _whole(self.queue_delay_us, 0):
            raise ConfigError(f"Triton queue_delay_us must be a whole number >= 0, got {self.queue_delay_us!r}")
        for name, plain in (("fraction", float), ("timeout_ms", float), ("max_batch_size", int),
                            ("queue_delay_us", int)):  # plain numbers in the JSON
            object.__setattr__(self, name, plain(getattr(self, name)))

    def check(self) -> Path:
        """The cloud venv's ``edgekit``; ConfigError (before anything loads) if the venv or the model is wrong."""
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"{self.model_dir} is not a fine-tuned model directory (no config.json)",
                              hint="the cloud model: what `edgekit finetune` (or `edgekit demo`, cached) wrote")
        return cloud_edgekit(self.venv)

    def record(self, clients: int, threshold: float | None) -> dict[str, Any]:
        """The settings, as the result's JSON holds them."""
        return {"engine": "triton", "model_dir": str(self.model_dir), "venv": str(self.venv),
                "fraction": self.fraction, "threshold": threshold, "timeout_ms": self.timeout_ms,
                "inflight": self.inflight or clients, "triton_max_batch_size": self.max_batch_size,
                "triton_queue_delay_us": self.queue_delay_us}


def threshold_for(model: BundleModel, texts: Sequence[str], fraction: float) -> float:
    """A threshold below which ``fraction`` of ``texts`` score (the bundle's calibrated top
    probability, one text per call as the clients send them); 1.0 for a fraction of 1."""
    from edgekit.runtime.cascade import edge_answers

    if fraction >= 1.0:
        return 1.0
    info = model.info
    scores = sorted(edge_answers(model.logits([text]), info.temperature, info.labels, 1)[1][0] for text in texts)
    k = round(fraction * len(scores))
    if k <= 0:
        return 0.0
    if k >= len(scores):
        return 1.0
    return (scores[k - 1] + scores[k]) / 2.0


Drive = Callable[..., dict[str, Any]]  # edgekit.bench.load's driver: (calls, texts, seconds, *, warm) -> row


@dataclass(frozen=True)
class _Load:
    """What one row is driven with (the load benchmark's settings)."""

    texts: Sequence[str]
    clients: int
    seconds: float
    batching: BatchSettings  # the edge server's
    threshold: float
    drive: Drive


def triton_row(cloud: TritonCloud, edgekit: Path, load_model: Callable[[], BundleModel], *, dynamic_batching: bool,
               texts: Sequence[str], clients: int, seconds: float, batching: BatchSettings, threshold: float,
               drive: Drive) -> dict[str, Any]:
    """One row: Triton started (its log in a temporary directory, shown if it fails), ``load_model()``
    served in front of it, ``clients`` callers for ``seconds``, Triton's counters over that time."""
    argv = triton_cloud_argv(edgekit, cloud.model_dir, cloud.model_name, dynamic_batching=dynamic_batching,
                             max_batch_size=cloud.max_batch_size, queue_delay_us=cloud.queue_delay_us, metrics=True)
    load = _Load(texts, clients, seconds, batching, threshold, drive)
    with tempfile.TemporaryDirectory(prefix="edgekit-load-triton-") as logs, \
            ServerProcess(argv, Path(logs) / "triton.log", name="Triton") as triton:
        row = _edge_in_front(load_model(), triton, cloud, load)
    row["triton"] = {"dynamic_batching": dynamic_batching, "max_batch_size": cloud.max_batch_size,
                     "queue_delay_us": cloud.queue_delay_us if dynamic_batching else None, **row["triton"]}
    return row


def _edge_in_front(model: BundleModel, triton: ServerProcess, cloud: TritonCloud, load: _Load) -> dict[str, Any]:
    """Serve ``model`` with ``triton`` as its kserve-v2 cloud (the server owns both from then on), drive it."""
    from edgekit.runtime.cascade import CascadeSettings
    from edgekit.runtime.cloud import KServeV2CloudClient
    from edgekit.runtime.server import ServerSettings, build_server

    client = KServeV2CloudClient(triton.address, cloud.model_name)
    try:  # the start-up check of edgekit serve
        client.expect_labels(model.info.labels, timeout_s=max(cloud.timeout_ms / 1000, 5.0))
    except BaseException:
        client.close()
        model.close()
        raise
    cascade = CascadeSettings(threshold=load.threshold, cloud_timeout_ms=cloud.timeout_ms,
                              max_cloud_inflight=cloud.inflight or load.clients)
    server = build_server(model, ServerSettings(cascade=cascade, batching=load.batching), cloud=client)
    try:
        return _drive_through(server, triton, cloud, load)
    finally:
        server.stop(grace_s=_GRACE_S)


def _drive_through(server: Any, triton: ServerProcess, cloud: TritonCloud, load: _Load) -> dict[str, Any]:
    """The clients against ``server``: the load row, plus routes, cloud latency and Triton's counters."""
    from edgekit.runtime.client import EdgeClient

    registry = server.dataplane.registry

    def edge_calls() -> tuple[float, float]:  # (model calls, texts) of the edge model so far
        return (registry.get_sample_value("edgekit_batch_size_count") or 0.0,
                registry.get_sample_value("edgekit_batch_size_sum") or 0.0)

    def call(text: str, client: EdgeClient, seen: list[tuple[str, float]]) -> None:
        t0 = time.perf_counter()
        route = client.classify([text])[0].route.value
        seen.append((route, (time.perf_counter() - t0) * 1000.0))

    clients = [EdgeClient(server.address, timeout_s=cloud.timeout_ms / 1000 + 30) for _ in range(load.clients)]
    seen: list[list[tuple[str, float]]] = [[] for _ in clients]  # (route, ms) of each call, per client
    try:
        clients[0].classify(list(load.texts[:4]), threshold=1.0)  # the cloud channel's first calls (and Triton's)
        triton_before, edge_before = triton_stats(triton.metrics_url, cloud.model_name), edge_calls()
        row = load.drive([lambda text, c=c, s=s: call(text, c, s) for c, s in zip(clients, seen)],
                         load.texts, load.seconds, warm=[c.health for c in clients])
        answered = sum(route == "CLOUD" for s in seen for route, _ in s)
        triton_after = _triton_settled(triton.metrics_url, cloud.model_name, triton_before["requests"] + answered)
        edge_after = edge_calls()
    finally:
        for c in clients:
            c.close()
    calls, texts = edge_after[0] - edge_before[0], edge_after[1] - edge_before[1]
    row.update(mean_batch_size=round(texts / calls, 2) if calls else None,
               max_batch_size=load.batching.max_batch_size, max_wait_ms=load.batching.max_wait_ms)
    pairs = [pair for s in seen for pair in s]
    routes = Counter(route for route, _ in pairs)
    row["routes"] = {route: routes.get(route, 0) for route in ROUTES}
    row["cloud_share"] = round(routes.get("CLOUD", 0) / len(pairs), 4) if pairs else None
    row.update(_cloud_latency([ms for route, ms in pairs if route == "CLOUD"]))
    row["triton"] = _triton_delta(triton_before, triton_after)
    return row


def _triton_settled(metrics_url: str, model_name: str, requests: float, wait_s: float = 2.0) -> dict[str, float]:
    """Triton's counters once they count ``requests`` requests (or after ``wait_s``): Triton counts a
    request after it has sent the answer, so a read right after the last answer can miss it."""
    deadline = time.monotonic() + wait_s
    while True:
        stats = triton_stats(metrics_url, model_name)
        if stats["requests"] >= requests or time.monotonic() >= deadline:
            return stats
        time.sleep(0.02)


def _cloud_latency(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 / p99 of the requests Triton answered (route CLOUD), as the clients saw them."""
    import numpy as np

    if not latencies_ms:
        return {"cloud_latency_ms_p50": None, "cloud_latency_ms_p99": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    return {"cloud_latency_ms_p50": round(float(np.percentile(values, 50)), 3),
            "cloud_latency_ms_p99": round(float(np.percentile(values, 99)), 3)}


def _triton_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Triton's counters over the measured time: requests, texts, model calls (its batches), means."""
    d = {key: after[key] - before[key] for key in after}
    requests, executions = int(d["requests"]), int(d["executions"])
    return {
        "requests": requests,
        "texts": int(d["inferences"]),
        "model_calls": executions,
        "mean_batch": round(d["inferences"] / executions, 2) if executions else None,
        "queue_us_per_request": round(d["queue_us"] / requests, 1) if requests else None,
        "compute_us_per_call": round(d["compute_us"] / executions, 1) if executions else None,
        "request_us_per_request": round(d["request_us"] / requests, 1) if requests else None,
    }
