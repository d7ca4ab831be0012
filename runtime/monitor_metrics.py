"""Prometheus metrics of the drift monitor (:mod:`edgekit.monitoring`), next to the data plane's.

Registered in the data plane's :class:`~prometheus_client.CollectorRegistry` by
:func:`register_monitor_metrics`:

* ``edgekit_confidence``: histogram of the edge's calibrated top probability, every text;
* ``edgekit_predicted_label_total{label}``: texts by the edge's predicted label;
* ``edgekit_cloud_agreement_total{label,agreed}``: texts the cloud answered, by the edge's label
  and whether the cloud's label was the same (``agreed="true"|"false"``);
* ``edgekit_drift_score{signal}``: PSI of the window against the bundle's reference
  (signal: confidence, label, length);
* ``edgekit_drift_alert{signal}``: 1 while that signal is in a drift episode;
* ``edgekit_drift_window_texts``: texts in the sliding window;
* ``edgekit_reference_cloud_rate``: the cloud rate the reference expects at the bundle's
  threshold, so that an alert rule can compare the live cloud rate with it (it is per bundle:
  a constant in the rule would be wrong after the next conversion).

The drift gauges are set when the monitor makes a verdict (every ``check_every`` texts, inside
:meth:`MonitorMetrics.observe`), not computed at scrape time by a custom collector, because
(1) the monitor has to judge on the request path anyway, to log an episode when nobody scrapes,
(2) under ``serve --workers N`` prometheus_client's multiprocess mode exports only what metric
objects wrote to their files, so a custom collector in a worker would never be seen, and (3) it
is one code path for both modes. A gauge is at most ``check_every`` texts behind the window.
Under multiprocess mode each worker judges its own window: the parent reports the highest
score and alert (``livemax``) and the sum of the windows' texts (``livesum``).

Cost of :meth:`MonitorMetrics.observe` per call, the monitor included (benchmarks/monitoring/
observe_cost.py, same conditions as in :class:`~edgekit.monitoring.DriftMonitor`): 5-7 us for a
request of one text, about 2 us per text in a batch of 32; the histogram's ``observe`` and the
label counter's ``inc`` (a lock each) are most of the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgekit.monitoring import SIGNALS, DriftMonitor, DriftState, text_length
from edgekit.runtime.types import Route

__all__ = ["AnsweredText", "CONFIDENCE_BUCKETS", "MonitorMetrics", "register_monitor_metrics"]

# finer near 1, where a calibrated model answers most texts (the cloud threshold usually lies there too)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)


class AnsweredText(Protocol):
    """What :meth:`MonitorMetrics.observe_predictions` reads of a prediction: the answer (``label``,
    ``route``) and the edge's own answer (``edge_label``, ``edge_score``)."""

    label: str
    route: Route
    edge_label: str
    edge_score: float


class MonitorMetrics:
    """The monitor's metrics in one registry; :meth:`observe` feeds the monitor and the metrics."""

    def __init__(self, registry: CollectorRegistry, monitor: DriftMonitor) -> None:
        self.confidence = Histogram(
            "edgekit_confidence", "The edge model's calibrated top probability, every text answered.",
            buckets=CONFIDENCE_BUCKETS, registry=registry,
        )
        self.predicted = Counter(
            "edgekit_predicted_label", "Texts by the edge model's predicted label.", ["label"], registry=registry
        )
        self.agreement = Counter(
            "edgekit_cloud_agreement", "Texts the cloud answered, by the edge's label and whether the cloud agreed.",
            ["label", "agreed"], registry=registry,
        )
        self.score = Gauge(
            "edgekit_drift_score", "Population stability index of the sliding window against the bundle's reference.",
            ["signal"], registry=registry, multiprocess_mode="livemax",
        )
        self.alert = Gauge(
            "edgekit_drift_alert", "1 while the signal is in a drift episode (score above the threshold).",
            ["signal"], registry=registry, multiprocess_mode="livemax",
        )
        self.window_texts = Gauge(
            "edgekit_drift_window_texts", "Texts in the drift monitor's sliding window.",
            registry=registry, multiprocess_mode="livesum",
        )
        self.reference_cloud_rate = Gauge(
            "edgekit_reference_cloud_rate", "Cloud rate the bundle's reference expects at its threshold.",
            registry=registry, multiprocess_mode="livemax",
        )
        self._score = {signal: self.score.labels(signal) for signal in SIGNALS}
        self._alert = {signal: self.alert.labels(signal) for signal in SIGNALS}
        self.watch(monitor)

    def watch(self, monitor: DriftMonitor) -> None:
        """Feed ``monitor`` from now on (a hot reload brings a new bundle, with its own reference).

        The labelled children every text touches are resolved here, once: ``labels()`` validates
        and hashes its arguments under a lock on every call.
        """
        labels = monitor.reference.labels
        self._predicted = {label: self.predicted.labels(label) for label in labels}
        self._agreed = {label: (self.agreement.labels(label, "false"), self.agreement.labels(label, "true"))
                        for label in labels}
        self._observe_confidence = self.confidence.observe
        self.reference_cloud_rate.set(monitor.reference.expected_cloud_rate)
        self.monitor = monitor
        self._show(monitor.state())

    # The signature of DriftMonitor.observe on purpose: this feeds the monitor, then the metrics.
    def observe(
        self,
        confidences: Sequence[float],
        labels: Sequence[str],
        lengths: Sequence[int],
        routes: Sequence[str],
        cloud_labels: Sequence[str | None] | None = None,
    ) -> None:
        """One answered batch (the arguments of :meth:`DriftMonitor.observe`)."""
        monitor = self.monitor
        state = monitor.observe(confidences, labels, lengths, routes, cloud_labels)  # validates first
        observe, predicted = self._observe_confidence, self._predicted
        for confidence, label in zip(confidences, labels):
            observe(confidence)
            predicted[label].inc()
        if cloud_labels is not None:
            agreed = self._agreed
            for label, cloud in zip(labels, cloud_labels):
                if cloud is not None:
                    agreed[label][cloud == label].inc()
        if state is not None:
            self._show(state)

    def observe_predictions(self, texts: Sequence[str], predictions: Sequence[AnsweredText]) -> None:
        """One answered request: its texts and the data plane's predictions (one per text)."""
        cloud = Route.CLOUD
        self.observe(
            [p.edge_score for p in predictions],
            [p.edge_label for p in predictions],
            [text_length(t) for t in texts],
            [p.route.value for p in predictions],
            [p.label if p.route is cloud else None for p in predictions],
        )

    def _show(self, state: DriftState) -> None:
        for signal, score in state.scores.items():
            self._score[signal].set(score)
            self._alert[signal].set(1.0 if state.drifting[signal] else 0.0)
        self.window_texts.set(state.window_texts)


def register_monitor_metrics(registry: CollectorRegistry, monitor: DriftMonitor) -> MonitorMetrics:
    """Register the monitor's metrics in ``registry`` (the data plane's) and feed them from ``monitor``."""
    return MonitorMetrics(registry, monitor)
