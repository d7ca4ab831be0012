"""What ``edgekit monitor`` shows, computed from two scrapes of an edge server's ``/metrics``.

:func:`read_metrics` fetches one Prometheus text exposition (``edgekit serve --metrics-port``)
and parses it with ``prometheus_client``'s parser into a :class:`Scrape`;
:func:`build_snapshot` turns the previous and the current scrape into a :class:`MonitorSnapshot`
(pure: no I/O, no clock). Rates are counter increases over the interval between the two scrapes,
a counter that went down (a restarted server) counting from zero as Prometheus' ``rate()`` does.
Histograms (confidence, latency, batch size) cover the interval's observations, or everything
since the server started when the interval saw none (``Distribution.scope`` says which).

Anything the server does not export (a bundle without a reference exports no drift, a server
without ``--record`` no records) is None in the snapshot, never an error.

The metrics read (runtime/dataplane.py, runtime/monitor_metrics.py, runtime/recorder.py):
``edgekit_requests_total{status}``, ``edgekit_predictions_total{route}``,
``edgekit_prediction_latency_seconds``, ``edgekit_batch_size``, ``edgekit_queued_texts``,
``edgekit_cloud_calls_total{outcome}``, ``edgekit_cloud_skipped_total{reason}``,
``edgekit_cloud_breaker_open``, ``edgekit_confidence``, ``edgekit_cloud_agreement_total{label,agreed}``,
``edgekit_drift_score{signal}``, ``edgekit_drift_alert{signal}``, ``edgekit_drift_window_texts``,
``edgekit_reference_cloud_rate``, ``edgekit_records_written_total``, ``edgekit_records_dropped_total{reason}``.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgekit.runtime.types import ModelInfo, Route
from prometheus_client.parser import text_string_to_metric_families

from edgekit.errors import EdgekitError
from edgekit.monitoring import SIGNALS

__all__ = [
    "CloudView",
    "Distribution",
    "DriftView",
    "ErrorView",
    "LabelAgreement",
    "ModelView",
    "MonitorSnapshot",
    "RecordsView",
    "Scrape",
    "TrafficView",
    "build_snapshot",
    "histogram_quantile",
    "read_metrics",
]

Labels = frozenset[tuple[str, str]]
Series = dict[Labels, float]

# routed to the cloud: answered by it or asked and failed (benchmarks/monitoring/alerts.yml counts the same)
_CLOUD_ROUTES = (Route.CLOUD.value, Route.EDGE_CLOUD_FAILED.value)
_CONFIDENCE_QUANTILES = (0.1, 0.5, 0.9)
_LATENCY_QUANTILES = (0.5, 0.95, 0.99)
_BATCH_QUANTILES = (0.5,)


# -- one scrape -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """One exposition: each sample's value by sample name (``x_total``, ``x_bucket``...) and labels."""

    samples: Mapping[str, Series]
    url: str = ""
    taken_at: float = 0.0  # time.time() when it was read

    @classmethod
    def parse(cls, text: str, *, url: str = "", taken_at: float = 0.0) -> Scrape:
        samples: dict[str, Series] = {}
        try:
            for family in text_string_to_metric_families(text):
                # a family declared without samples (a labelled counter nothing has counted yet) is
                # exported, with nothing in it: {} rather than None (not exported)
                samples.setdefault(family.name + ("_total" if family.type == "counter" else ""), {})
                for sample in family.samples:
                    samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = float(sample.value)
        except ValueError as exc:
            where = f" at {url}" if url else ""
            raise EdgekitError(f"not a Prometheus text exposition{where}: {exc}") from exc
        return cls(samples, url, taken_at)

    def series(self, name: str) -> Series | None:
        """Every sample called ``name``, or None when the server does not export it."""
        return self.samples.get(name)


def read_metrics(url: str, *, timeout_s: float, taken_at: float = 0.0, tls: ssl.SSLContext | None = None) -> Scrape:
    """GET ``url`` (no proxy: a direct look at the server, as Prometheus scrapes) and parse it;
    EdgekitError naming the URL when it cannot be read. ``tls``: how to check an https:// server
    (and the client certificate it may ask for); default, the system's CAs."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise EdgekitError(f"cannot read metrics from {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise EdgekitError(f"cannot read metrics from {url}: {exc.reason}") from exc
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise EdgekitError(f"cannot read metrics from {url}: {exc}") from exc
    return Scrape.parse(text, url=url, taken_at=taken_at)


# -- what is shown ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficView:
    """Requests (RPCs) and texts (one request carries one or more); ``*_per_s`` over the interval."""

    requests_per_s: float | None
    requests_per_s_by_status: dict[str, float] | None
    texts_per_s: float | None
    texts_per_s_by_route: dict[str, float] | None
    route_share: dict[str, float] | None  # of the interval's texts; None when it had none
    requests_total: float | None
    texts_total_by_route: dict[str, float] | None


@dataclass(frozen=True)
class CloudView:
    """The share of texts routed to the cloud (CLOUD or EDGE_CLOUD_FAILED) and what the reference expects."""

    rate: float | None  # over the interval's texts
    rate_total: float | None  # since the server started
    expected: float | None  # edgekit_reference_cloud_rate: validation's share below the bundle's threshold
    calls_per_s_by_outcome: dict[str, float] | None
    breaker_open: bool | None


@dataclass(frozen=True)
class Distribution:
    """A histogram's observations: quantiles interpolated within buckets (as PromQL's
    ``histogram_quantile``), and the count per bucket (``le``: its upper bound, as exported)."""

    scope: str  # "interval" | "total" (the interval saw no observation)
    count: float
    mean: float | None
    quantiles: dict[str, float | None]  # "p50" -> value
    buckets: tuple[tuple[str, float], ...]  # (le, observations in that bucket alone)


@dataclass(frozen=True)
class DriftView:
    """Per signal (confidence, label, length) the PSI of the server's window and whether it alerts."""

    scores: dict[str, float | None]
    alerts: dict[str, bool | None]
    window_texts: float | None
    threshold: float | None  # from GetModelInfo's drift snapshot (--server), else None
    window: float | None  # the window's size, from the same snapshot

    @property
    def alerting(self) -> tuple[str, ...]:
        return tuple(signal for signal, alert in self.alerts.items() if alert)


@dataclass(frozen=True)
class LabelAgreement:
    """Texts the cloud answered whose edge label was ``label``, and how many it answered alike."""

    label: str
    agreed: float
    answered: float
    rate: float


@dataclass(frozen=True)
class ErrorView:
    """Failed requests, failed or skipped cloud calls (per second over the interval), records lost (total)."""

    requests_per_s_by_status: dict[str, float] | None  # every status but ok
    requests_total_by_status: dict[str, float] | None
    cloud_failures_per_s: dict[str, float] | None  # cloud call outcomes but ok
    cloud_skipped_per_s: dict[str, float] | None
    records_dropped_total: dict[str, float] | None


@dataclass(frozen=True)
class RecordsView:
    written_per_s: float | None
    written_total: float | None


@dataclass(frozen=True)
class ModelView:
    """The served model as GetModelInfo describes it (``edgekit monitor --server``)."""

    name: str
    version: str
    format: str
    precision: str
    backend: str
    threshold: float
    drift: dict[str, Any] | None  # the summary's drift snapshot, when the server sends one

    @classmethod
    def from_info(cls, info: ModelInfo) -> ModelView:
        drift = info.summary.get("drift") if isinstance(info.summary, Mapping) else None
        return cls(info.name, info.version, info.format, info.precision, info.backend, info.threshold,
                   dict(drift) if isinstance(drift, Mapping) else None)


@dataclass(frozen=True)
class MonitorSnapshot:
    """Everything ``edgekit monitor`` shows for one interval; None wherever the server exports nothing."""

    url: str
    taken_at: float
    interval_s: float | None  # None: a first scrape (totals only, no rates)
    traffic: TrafficView
    cloud: CloudView
    confidence: Distribution | None
    latency_ms: Distribution | None
    batch_size: Distribution | None
    queued_texts: float | None
    drift: DriftView
    lowest_agreement: tuple[LabelAgreement, ...] | None
    errors: ErrorView
    records: RecordsView
    model: ModelView | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``edgekit monitor --json``): floats rounded to 6 digits, NaN and infinities as null."""
        data = _clean(dataclasses.asdict(self))
        data["drift"]["alerting"] = list(self.drift.alerting)
        return data


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# -- from two scrapes to a snapshot -----------------------------------------------------------


def build_snapshot(
    previous: Scrape | None,
    current: Scrape,
    interval_s: float | None,
    *,
    model: ModelInfo | None = None,
    lowest: int = 5,
) -> MonitorSnapshot:
    """What happened between ``previous`` and ``current``, read ``interval_s`` seconds apart
    (``previous`` None: a first scrape, totals only). ``model``: GetModelInfo's answer, if asked;
    ``lowest``: how many labels of lowest cloud agreement to keep."""
    if previous is not None and not (interval_s is not None and interval_s > 0):
        raise ValueError(f"two scrapes need a positive interval between them, got {interval_s}")
    d = _Delta(previous, current, interval_s)
    view = ModelView.from_info(model) if model is not None else None
    return MonitorSnapshot(
        url=current.url,
        taken_at=current.taken_at,
        interval_s=interval_s if previous is not None else None,
        traffic=_traffic(d),
        cloud=_cloud(d),
        confidence=_distribution(d, "edgekit_confidence", _CONFIDENCE_QUANTILES),
        latency_ms=_distribution(d, "edgekit_prediction_latency_seconds", _LATENCY_QUANTILES, scale=1000.0),
        batch_size=_distribution(d, "edgekit_batch_size", _BATCH_QUANTILES),
        queued_texts=_gauge(current, "edgekit_queued_texts"),
        drift=_drift(current, view),
        lowest_agreement=_lowest_agreement(current, lowest),
        errors=_errors(d),
        records=RecordsView(written_per_s=_total(d.rate("edgekit_records_written_total")),
                            written_total=_total(current.series("edgekit_records_written_total"))),
        model=view,
    )


class _Delta:
    """Counter increases between two scrapes (a decrease is a restart: the increase is the new value)."""

    def __init__(self, previous: Scrape | None, current: Scrape, interval_s: float | None) -> None:
        self.previous, self.current, self.interval_s = previous, current, interval_s

    def increase(self, name: str) -> Series | None:
        now = self.current.series(name)
        if self.previous is None or now is None:
            return None
        before = self.previous.series(name) or {}
        out = {}
        for labels, value in now.items():
            old = before.get(labels)  # None: a series born since (counted from zero)
            out[labels] = value - old if old is not None and old <= value else value
        return out

    def rate(self, name: str) -> Series | None:
        increase = self.increase(name)
        if increase is None or self.interval_s is None:
            return None
        return {labels: value / self.interval_s for labels, value in increase.items()}


def _by(series: Series | None, label: str, *, fill: Sequence[str] = ()) -> dict[str, float] | None:
    """Sum ``series`` by the value of ``label`` (``fill``: values shown as 0 when absent)."""
    if series is None:
        return None
    out = dict.fromkeys(fill, 0.0)
    for labels, value in series.items():
        key = dict(labels).get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def _max_by(series: Series | None, label: str) -> dict[str, float]:
    """The highest value of ``series`` per value of ``label`` (gauges: a score is not summed)."""
    out: dict[str, float] = {}
    for labels, value in (series or {}).items():
        key = dict(labels).get(label, "")
        out[key] = max(out.get(key, value), value)
    return out


def _total(series: Series | None) -> float | None:
    return None if series is None else float(sum(series.values()))


def _gauge(scrape: Scrape, name: str) -> float | None:
    series = scrape.series(name)
    return None if not series else max(series.values())


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


_ROUTES = tuple(route.value for route in Route)


def _traffic(d: _Delta) -> TrafficView:
    by_route = _by(d.rate("edgekit_predictions_total"), "route", fill=_ROUTES)
    texts_per_s = None if by_route is None else sum(by_route.values())
    share = None
    if by_route is not None and texts_per_s:
        share = {route: value / texts_per_s for route, value in by_route.items()}
    by_status = _by(d.rate("edgekit_requests_total"), "status")
    return TrafficView(
        requests_per_s=None if by_status is None else sum(by_status.values()),
        requests_per_s_by_status=by_status,
        texts_per_s=texts_per_s,
        texts_per_s_by_route=by_route,
        route_share=share,
        requests_total=_total(d.current.series("edgekit_requests_total")),
        texts_total_by_route=_by(d.current.series("edgekit_predictions_total"), "route", fill=_ROUTES),
    )


def _cloud_rate(by_route: dict[str, float] | None) -> float | None:
    if by_route is None:
        return None
    return _share(sum(by_route.get(route, 0.0) for route in _CLOUD_ROUTES), sum(by_route.values()))


def _cloud(d: _Delta) -> CloudView:
    breaker = _gauge(d.current, "edgekit_cloud_breaker_open")
    return CloudView(
        rate=_cloud_rate(_by(d.increase("edgekit_predictions_total"), "route")),
        rate_total=_cloud_rate(_by(d.current.series("edgekit_predictions_total"), "route")),
        expected=_gauge(d.current, "edgekit_reference_cloud_rate"),
        calls_per_s_by_outcome=_by(d.rate("edgekit_cloud_calls_total"), "outcome"),
        breaker_open=None if breaker is None else breaker > 0,
    )


def _buckets(series: Series | None) -> list[tuple[float, str, float]]:
    """Cumulative bucket counts summed over every other label: (upper bound, le, count), ascending."""
    out: dict[str, float] = {}
    for labels, value in (series or {}).items():
        le = dict(labels).get("le")
        if le is not None:
            out[le] = out.get(le, 0.0) + value
    rows = []
    for le, count in out.items():
        try:
            rows.append((float(le), le, count))
        except ValueError:  # not a bound: not a bucket of ours
            continue
    return sorted(rows, key=lambda row: row[0])


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative buckets ``(upper bound, count)`` (ascending, the last +Inf),
    interpolated linearly within its bucket as PromQL does; None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count <= below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _distribution(d: _Delta, name: str, quantiles: Sequence[float], *, scale: float = 1.0) -> Distribution | None:
    totals = d.current.series(f"{name}_bucket")
    if totals is None:
        return None
    scope, rows, sums = "interval", _buckets(d.increase(f"{name}_bucket")), d.increase(f"{name}_sum")
    if not rows or rows[-1][2] <= 0:  # no previous scrape, or nothing observed since
        scope, rows, sums = "total", _buckets(totals), d.current.series(f"{name}_sum")
    cumulative = [(upper, count) for upper, _, count in rows]
    count = cumulative[-1][1] if cumulative else 0.0
    total = _total(sums)
    per_bucket = tuple((le, c - (rows[i - 1][2] if i else 0.0)) for i, (_, le, c) in enumerate(rows))
    return Distribution(
        scope=scope,
        count=count,
        mean=None if total is None or count <= 0 else total * scale / count,
        quantiles={f"p{round(q * 100)}": _scaled(histogram_quantile(q, cumulative), scale) for q in quantiles},
        buckets=per_bucket,
    )


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def _drift(current: Scrape, model: ModelView | None) -> DriftView:
    scores = _max_by(current.series("edgekit_drift_score"), "signal")
    alerts = _max_by(current.series("edgekit_drift_alert"), "signal")
    signals = [*SIGNALS, *sorted((set(scores) | set(alerts)) - set(SIGNALS))]
    settings = model.drift if model is not None and model.drift is not None else {}
    threshold, window = settings.get("threshold"), settings.get("window")
    return DriftView(
        scores={signal: scores.get(signal) for signal in signals},
        alerts={signal: (alerts[signal] > 0 if signal in alerts else None) for signal in signals},
        window_texts=_gauge(current, "edgekit_drift_window_texts"),
        threshold=float(threshold) if isinstance(threshold, (int, float)) else None,
        window=float(window) if isinstance(window, (int, float)) else None,
    )


def _lowest_agreement(current: Scrape, lowest: int) -> tuple[LabelAgreement, ...] | None:
    series = current.series("edgekit_cloud_agreement_total")
    if series is None:
        return None
    counts: dict[str, list[float]] = {}
    for labels, value in series.items():
        tags = dict(labels)
        agreed_answered = counts.setdefault(tags.get("label", ""), [0.0, 0.0])
        agreed_answered[1] += value
        if tags.get("agreed") == "true":
            agreed_answered[0] += value
    rows = [LabelAgreement(label, agreed, answered, agreed / answered)
            for label, (agreed, answered) in counts.items() if answered > 0]
    rows.sort(key=lambda row: (row.rate, -row.answered, row.label))
    return tuple(rows[:lowest])


def _errors(d: _Delta) -> ErrorView:
    def without(values: dict[str, float] | None, ok: str) -> dict[str, float] | None:
        return None if values is None else {k: v for k, v in values.items() if k != ok}

    return ErrorView(
        requests_per_s_by_status=without(_by(d.rate("edgekit_requests_total"), "status"), "ok"),
        requests_total_by_status=without(_by(d.current.series("edgekit_requests_total"), "status"), "ok"),
        cloud_failures_per_s=without(_by(d.rate("edgekit_cloud_calls_total"), "outcome"), "ok"),
        cloud_skipped_per_s=_by(d.rate("edgekit_cloud_skipped_total"), "reason"),
        records_dropped_total=_by(d.current.series("edgekit_records_dropped_total"), "reason"),
    )
