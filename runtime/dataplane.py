"""The transport-neutral core of the server: validate, batch, cascade, measure.

Both gRPC services (edgekit.v1 and OIP v2) translate their messages and call
:meth:`DataPlane.classify`; a future HTTP front end would do the same. Limits are checked
here, once, so every transport refuses the same requests with the same reasons.

Metrics live in a :class:`~prometheus_client.CollectorRegistry` per data plane, not the
process-global one, so tests (or a process serving two models) can build several:

* ``edgekit_requests_total{backend,status}``: requests by outcome (ok, invalid_input,
  overloaded, deadline_exceeded, cloud_unavailable, error);
* ``edgekit_queued_texts``: texts admitted and not yet answered (``Limits.max_queue`` bounds it);
* ``edgekit_predictions_total{route,backend}`` and
  ``edgekit_prediction_latency_seconds{route,backend}``: texts and their latency by who
  answered; the cloud rate is ``rate(predictions{route="CLOUD"}) / rate(predictions)``;
* ``edgekit_batch_size``: texts per edge model call (micro-batching at work);
* ``edgekit_cloud_calls_total{outcome}`` (ok, error, timeout) and
  ``edgekit_cloud_skipped_total{reason}`` (breaker_open, saturated, no_time_left);
* ``edgekit_cloud_breaker_open``: 1 while the circuit breaker keeps the cloud paused;
* with a bundle that carries a reference (``MonitorSettings.drift``): the live confidence,
  labels, cloud agreement and drift scores of :mod:`edgekit.runtime.monitor_metrics`;
* with ``MonitorSettings.record`` (``--record DIR``): ``edgekit_records_*`` of
  :mod:`edgekit.runtime.recorder`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgekit.errors import CloudUnavailable, ConfigError, DeadlineExceeded, InvalidInput, ModelError, Overloaded
from edgekit.monitoring import DriftMonitor, DriftSettings
from edgekit.runtime.batching import BatchedModel, BatchSettings
from edgekit.runtime.cascade import Cascade, CascadeSettings, CircuitBreaker
from edgekit.runtime.deferred import defer
from edgekit.runtime.monitor_metrics import MonitorMetrics, register_monitor_metrics
from edgekit.runtime.recorder import Recorder, RecorderSettings
from edgekit.runtime.types import ClassifyOptions, LogitModel, ModelInfo, Prediction, Route

if TYPE_CHECKING:  # pragma: no cover - the cloud clients need grpc; the data plane does not
    from edgekit.runtime.cloud import CloudClient

__all__ = ["DataPlane", "Limits", "MonitorSettings", "WARMUP_TEXTS", "make_options"]

log = logging.getLogger(__name__)

# Short shopper questions: enough for a backend to allocate its buffers and pick kernels.
WARMUP_TEXTS = ("where is my order?", "I want to cancel my purchase", "how do I get a refund for a broken item")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_SKIPPED = frozenset({"breaker_open", "saturated", "no_time_left"})
# edgekit_requests_total{status}: what each refused or failed request counts as
_FAILURES = (
    (InvalidInput, "invalid_input"),
    (Overloaded, "overloaded"),
    (DeadlineExceeded, "deadline_exceeded"),
    (CloudUnavailable, "cloud_unavailable"),
)


@dataclass(frozen=True)
class Limits:
    """What one request may carry (beyond: InvalidInput), and how much work the server admits at
    once (``max_queue`` texts admitted and not yet answered; beyond: Overloaded, at once).

    The default queue holds 256 texts: about a quarter of a second of work for a 3-layer int8
    student at batch 8 on one core (benchmarks/server_overhead.py), so a burst is absorbed and a
    flood is refused instead of growing every caller's latency without limit.
    """

    max_texts: int = 64
    max_chars: int = 2000
    max_queue: int = 256

    def __post_init__(self) -> None:
        if self.max_texts < 1 or self.max_chars < 1:
            raise ConfigError(f"limits must be at least 1, got max_texts={self.max_texts} max_chars={self.max_chars}")
        if self.max_queue < self.max_texts:
            raise ConfigError(f"max_queue (--max-queue) is {self.max_queue} texts; it must hold at least one full "
                              f"request ({self.max_texts} texts)")


@dataclass(frozen=True)
class MonitorSettings:
    """What the data plane watches besides its request metrics."""

    drift: DriftSettings | None = DriftSettings()  # None: no drift monitoring (also off for bundles without a reference)
    record: RecorderSettings | None = None  # --record DIR: what the cloud answered, for convert --feedback


# Requests repeat a handful of option sets (most send none): a cached one costs less than a checked
# frozen dataclass built per request (issue 12). Refusals raise, so they are not cached.
@functools.lru_cache(maxsize=256)
def make_options(top_k: int = 1, allow_cloud: bool = True, threshold: float | None = None) -> ClassifyOptions:
    """ClassifyOptions from a request's fields; a bad value is the client's fault (InvalidInput)."""
    try:
        return ClassifyOptions(top_k=top_k, allow_cloud=allow_cloud, threshold=threshold)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


class _Metrics:
    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.backend = backend
        self.requests = Counter(
            "edgekit_requests", "Classify requests by outcome.", ["backend", "status"], registry=registry
        )
        self.predictions = Counter(
            "edgekit_predictions", "Texts answered, by route.", ["route", "backend"], registry=registry
        )
        self.latency = Histogram(
            "edgekit_prediction_latency_seconds",
            "Time spent on each text inside the server, by route.",
            ["route", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queued = Gauge(
            "edgekit_queued_texts", "Texts admitted and not yet answered (refused beyond --max-queue).",
            registry=registry, multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "edgekit_batch_size", "Texts per edge model call.", buckets=_BATCH_BUCKETS, registry=registry
        )
        # Triton's nv_inference_compute_infer_duration_us: its rate is the engine's busy fraction
        # (1 = saturated: more load only queues), the figure that tells batching or --workers apart
        self.model_busy = Counter(
            "edgekit_model_busy_seconds", "Seconds the edge model spent in engine calls (summed over "
            "--workers); its rate is the share of time the model was busy.", registry=registry,
        )
        self.cloud_calls = Counter("edgekit_cloud_calls", "Cloud calls by outcome.", ["outcome"], registry=registry)
        self.cloud_skipped = Counter(
            "edgekit_cloud_skipped", "Cloud calls not made although needed.", ["reason"], registry=registry
        )
        # under `serve --workers N` (prometheus_client's multiprocess mode) the parent reports the
        # highest value among live workers: 1 while any worker's breaker is open
        self.breaker_open = Gauge(
            "edgekit_cloud_breaker_open", "1 while the circuit breaker pauses cloud calls.", registry=registry,
            multiprocess_mode="livemax",
        )
        self._breaker: CircuitBreaker | None = None
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # read once, not per request
        # The labelled children every request touches, resolved once: `labels()` validates and
        # hashes its arguments under a lock, and was a fifth of the request path's Python time.
        self.use_backend(backend)

    def use_backend(self, backend: str) -> None:
        """Label what follows with ``backend`` (a hot reload may serve a bundle of another format)."""
        self.backend = backend
        self._ok = self.requests.labels(backend, "ok")
        self._by_route = {
            route: (self.predictions.labels(route.value, backend), self.latency.labels(route.value, backend))
            for route in Route
        }

    def watch(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        if not self.multiprocess:
            self.breaker_open.set_function(lambda: float(breaker.state == "open"))
        # in multiprocess mode a callback gauge cannot be shared: cloud_outcome sets it instead

    def watch_queue(self, queued: Callable[[], int]) -> None:
        if not self.multiprocess:
            self.queued.set_function(lambda: float(queued()))  # read at scrape time: free per request

    def queue_changed(self, queued: int) -> None:
        """Multiprocess mode only (a callback gauge cannot be shared across processes): the caller checks."""
        self.queued.set(queued)

    def cloud_outcome(self, outcome: str) -> None:
        if outcome in _SKIPPED:
            self.cloud_skipped.labels(outcome).inc()
        else:
            self.cloud_calls.labels(outcome).inc()
        if self._breaker is not None and self.multiprocess:
            self.breaker_open.set(float(self._breaker.state == "open"))

    def request_done(self, predictions: Sequence[Prediction]) -> None:
        self._ok.inc()
        for p in predictions:
            count, latency = self._by_route[p.route]
            count.inc()
            latency.observe(p.latency_ms / 1000.0)

    def request_failed(self, exc: BaseException) -> None:
        status = next((name for kind, name in _FAILURES if isinstance(exc, kind)), "error")
        self.requests.labels(self.backend, status).inc()


class _Settle:
    """A collector that yields nothing: registered first, it makes a scrape wait for the
    bookkeeping of the requests already answered (see :meth:`DataPlane.settle`)."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def collect(self) -> list:
        self._dataplane.settle()
        return []


class DataPlane:
    """Validated, batched, cascaded classification of one model, with metrics and readiness.

    The data plane owns what it is given: :meth:`close` closes the batcher, the cloud
    client and the model.
    """

    def __init__(
        self,
        model: LogitModel,
        *,
        cloud: CloudClient | None = None,
        cascade: CascadeSettings = CascadeSettings(),
        batching: BatchSettings = BatchSettings(),
        limits: Limits = Limits(),
        registry: CollectorRegistry | None = None,
        warmup_texts: Sequence[str] = WARMUP_TEXTS,
        monitor: MonitorSettings = MonitorSettings(),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._admission = threading.Lock()  # guards _queued, _unsettled, _current and every generation's inflight
        self._settled = threading.Condition(self._admission)  # an answered request is released and unsettled at once
        self._unsettled = 0  # answered requests whose bookkeeping has not run yet
        self.registry.register(_Settle(self))  # first: a scrape waits for it, then reads the rest
        self.limits = limits
        self._cloud = cloud
        self._cascade_settings = cascade
        self._batching = batching
        self._warmup_texts = tuple(warmup_texts)
        self._metrics = _Metrics(self.registry, model.info.backend)
        self._recorder = Recorder(monitor.record, registry=self.registry) if monitor.record is not None else None
        self._drift_settings = monitor.drift
        self._drift: MonitorMetrics | None = None  # registered with the first model that has a reference
        self._drift_on = False  # does the model served now have a reference?
        self._watch_drift(model)
        self._current = self._generation(model, None)
        self._metrics.watch(self._current.cascade.breaker)
        self._ready = threading.Event()
        self._swap = threading.Lock()  # one model swap at a time
        self._queued = 0  # texts admitted and not yet answered
        self._metrics.watch_queue(lambda: self._queued)

    def _generation(self, model: LogitModel, previous: Cascade | None) -> _Generation:
        batched = BatchedModel(model, self._batching, on_batch=self._observe_batch, on_run=self._observe_run)
        if previous is None:
            cascade = Cascade(batched, self._cloud, self._cascade_settings, on_cloud=self._metrics.cloud_outcome,
                              recorder=self._recorder)
        else:
            cascade = previous.with_edge(batched)  # same cloud, breaker and in-flight cap
        return _Generation(model, batched, cascade)

    def _watch_drift(self, model: LogitModel) -> None:
        """Compare the traffic with ``model``'s reference from now on (a fresh window per model)."""
        reference = model.info.reference
        self._drift_on = self._drift_settings is not None and reference is not None
        if not self._drift_on:
            return
        monitor = DriftMonitor(reference, self._drift_settings)
        if self._drift is None:
            self._drift = register_monitor_metrics(self.registry, monitor)
        else:
            self._drift.watch(monitor)

    @property
    def ready(self) -> bool:
        """True once :meth:`warm_up` has run the model."""
        return self._ready.is_set()

    def warm_up(self) -> None:
        """Run the edge model once on a few texts (no cloud, no metrics), then report ready.

        The first inference of a backend allocates and picks kernels; paying for it here
        keeps it off the first shopper's latency.
        """
        model = self._current.model
        if self._warmup_texts:
            model.logits(self._warmup_texts)
        self._ready.set()
        log.info("event=ready model=%s version=%s backend=%s", model.info.name, model.info.version, model.info.backend)

    def model_info(self) -> ModelInfo:
        """The served model's info, with the threshold this server actually applies."""
        current = self._current
        info = dataclasses.replace(current.model.info, threshold=current.cascade.threshold)
        if self._drift_on:
            self.settle()
            info = dataclasses.replace(info, summary={**info.summary, "drift": self._drift.monitor.snapshot()})
        return info

    def swap_model(self, model: LogitModel) -> ModelInfo:
        """Serve ``model`` from now on, without dropping a request (hot reload).

        The new model must answer the same labels; it is warmed up before the swap. Requests
        already admitted finish on the old model, which is closed once the last of them is
        answered; requests admitted after the swap run on the new one. If the new model is
        refused (ModelError, with the reason), it is closed and the old one keeps serving.
        """
        with self._swap:
            old = self._current
            try:
                _check_compatible(old.model.info, model.info)
                if self._warmup_texts:
                    try:
                        model.logits(self._warmup_texts)
                    except Exception as exc:
                        raise ModelError(f"the new model failed its warm-up: {exc!r}") from exc
            except BaseException:
                model.close()
                raise
            new = self._generation(model, old.cascade)
            with self._admission:
                self._current = new
                old.retired = True
                idle = old.inflight == 0
            self._metrics.use_backend(model.info.backend)
            self._watch_drift(model)
            if idle:
                old.close()
        log.info("event=model_swapped model=%s version=%s previous_version=%s backend=%s",
                 model.info.name, model.info.version, old.model.info.version, model.info.backend)
        return self.model_info()

    def validate(self, texts: object) -> None:
        """Refuse what the limits do not allow, naming the offending text's index."""
        # a list (what both servicers pass) skips the Sequence ABC check, slow on every request
        if type(texts) is not list and (isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence)):
            raise InvalidInput(f"texts must be a list of strings, got {type(texts).__name__}")
        if not texts:
            raise InvalidInput("no texts: send at least one")
        if len(texts) > self.limits.max_texts:
            raise InvalidInput(f"{len(texts)} texts in one request; at most {self.limits.max_texts} are allowed")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"texts[{i}] must be a string, got {type(text).__name__}")
            if not text.strip():
                raise InvalidInput(f"texts[{i}] is empty or whitespace only")
            if len(text) > self.limits.max_chars:
                raise InvalidInput(
                    f"texts[{i}] has {len(text)} characters; at most {self.limits.max_chars} are allowed"
                )

    # The same signature as Cascade.classify on purpose (the servicers call this one, the data plane
    # calls the cascade's with the same arguments); the bodies differ: this one validates, admits and counts.
    def classify(
        self,
        texts: Sequence[str],
        options: ClassifyOptions = ClassifyOptions(),
        *,
        time_remaining_s: float | None = None,
    ) -> list[Prediction]:
        """Validate, then answer every text (see :mod:`edgekit.runtime.cascade` for the routing)."""
        try:
            self.validate(texts)
            generation = self._admit(len(texts))
            answered = False
            try:
                predictions = generation.cascade.classify(texts, options, time_remaining_s=time_remaining_s)
                answered = True
            finally:
                self._release(len(texts), generation, answered)
        except Exception as exc:
            self._metrics.request_failed(exc)
            raise
        # after the response (runtime.deferred): off the latency of the call that is answered now
        defer(self._count, texts, predictions, self._drift if self._drift_on else None)
        return predictions

    def _observe_batch(self, size: int) -> None:
        defer(self._metrics.batch_size.observe, size)  # the batch's leader observes it after its response

    def _observe_run(self, seconds: float) -> None:
        defer(self._metrics.model_busy.inc, seconds)

    def _count(self, texts: Sequence[str], predictions: list[Prediction], drift: MonitorMetrics | None) -> None:
        """A request's metrics and its texts in the drift window (deferred by :meth:`classify`)."""
        try:
            self._metrics.request_done(predictions)
            if drift is not None:
                try:
                    drift.observe_predictions(texts, predictions)
                except Exception:  # watching must never cost a shopper an answer
                    log.exception("event=drift_observe_failed")
        finally:
            with self._settled:
                self._unsettled -= 1
                if not self._unsettled:
                    self._settled.notify_all()

    def settle(self, timeout_s: float = 1.0) -> None:
        """Wait until the metrics and the drift window count every request answered so far
        (their bookkeeping runs just after each response): for readers that compare them with
        what callers received (/metrics, GetModelInfo, :meth:`request_counts`)."""
        with self._settled:
            if not self._settled.wait_for(lambda: not self._unsettled, timeout_s):
                log.warning("event=settle_timeout unsettled=%d", self._unsettled)

    def request_counts(self) -> dict[str, int]:
        """Requests that reached the data plane so far, by outcome (``edgekit_requests_total``)."""
        self.settle()
        counts: dict[str, int] = {}
        for metric in self._metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    counts[status] = counts.get(status, 0) + int(sample.value)
        return counts

    def count_refusal(self, reason: str) -> None:
        """Count a request the transport refused before it reached :meth:`classify` (overload)."""
        self._metrics.request_failed(Overloaded(reason))

    def _admit(self, n: int) -> _Generation:
        """Count ``n`` texts in (on the model now served), or refuse the request at once if the
        queue cannot take them."""
        with self._admission:
            if self._queued + n > self.limits.max_queue:
                raise Overloaded(
                    f"the server is at capacity: {self._queued} texts queued, at most {self.limits.max_queue} "
                    "(--max-queue); retry with backoff"
                )
            self._queued += n
            generation = self._current
            generation.inflight += 1
            if self._metrics.multiprocess:  # else a callback gauge reads _queued at scrape time
                self._metrics.queue_changed(self._queued)
        return generation

    def _release(self, n: int, generation: _Generation, answered: bool = False) -> None:
        with self._admission:
            self._unsettled += answered  # its bookkeeping (_count) is deferred: settle() waits for it
            self._queued -= n
            generation.inflight -= 1
            last = generation.retired and generation.inflight == 0
            if self._metrics.multiprocess:  # else a callback gauge reads _queued at scrape time
                self._metrics.queue_changed(self._queued)
        if last:  # the last request on a swapped-out model: nobody uses it any more
            generation.close()

    def close(self) -> None:
        """Finish queued batches, then close the model and the cloud client."""
        self._current.close()
        if self._cloud is not None:
            self._cloud.close()
        if self._recorder is not None:  # after the last request: every record it made is in the file
            self._recorder.close()


class _Generation:
    """One model being served: the model, its batcher and cascade, and its requests in flight."""

    __slots__ = ("batched", "cascade", "inflight", "model", "retired")

    def __init__(self, model: LogitModel, batched: BatchedModel, cascade: Cascade) -> None:
        self.model = model
        self.batched = batched
        self.cascade = cascade
        self.inflight = 0  # requests admitted on it and not yet answered (DataPlane._admission)
        self.retired = False  # swapped out: closed when inflight reaches 0

    def close(self) -> None:
        self.batched.close()
        self.model.close()


def _check_compatible(served: ModelInfo, new: ModelInfo) -> None:
    """A hot-swapped model must answer the labels clients (and the cloud model) already use."""
    if set(new.labels) != set(served.labels):
        added = sorted(set(new.labels) - set(served.labels))
        removed = sorted(set(served.labels) - set(new.labels))
        raise ModelError(
            f"the new model's labels differ from the served model's (added {added}, removed {removed}); "
            "a different label set needs a restart"
        )
