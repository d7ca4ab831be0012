"""``edgekit monitor``: watch a running edge server from its Prometheus metrics.

Every ``--interval`` seconds the command reads ``--metrics-url`` (``edgekit serve --metrics-port``),
and with ``--server`` asks GetModelInfo which model answers; :mod:`edgekit.runtime.monitor_client`
turns the last two scrapes into a snapshot, shown here as a live rich view or, with ``--json``, as
one JSON object per interval (its keys: :meth:`MonitorSnapshot.to_dict`). Rates need two scrapes,
so the first JSON object comes one interval after the start (``--once``: that object, then exit).

A server that cannot be read ends ``--json`` and ``--once`` with a one-line error (exit 1); the
live view says "unreachable" and keeps trying. Module-level imports: click and the standard
library only; prometheus_client, grpc and rich load when the command runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli._options import client_options, client_security

if TYPE_CHECKING:  # pragma: no cover
    import ssl
    from pathlib import Path

    from rich.console import RenderableType

    from edgekit.runtime.client import EdgeClient
    from edgekit.runtime.monitor_client import Distribution, MonitorSnapshot, Scrape

__all__ = ["command"]

_DASH = "–"
_LOW_AGREEMENT = 0.2  # as EdgekitCloudDisagreesOnLabel in benchmarks/monitoring/alerts.yml
_BAR_WIDTH = 24


@click.command("monitor")
@click.option("--metrics-url", required=True, metavar="URL",
              help="The server's Prometheus endpoint (edgekit serve --metrics-port), e.g. "
                   "http://127.0.0.1:9100/metrics; without a scheme, https:// with TLS options, else http://.")
@click.option("--server", "target", default=None, metavar="HOST:PORT",
              help="Also ask this edgekit server (gRPC GetModelInfo) which model it serves, and its drift settings.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between two scrapes; rates are over the last interval.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per interval on stdout instead of the live view.")
@click.option("--once", is_flag=True, help="Measure one interval, show it and exit.")
@click.option("--lowest", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many labels of lowest cloud agreement to show.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Deadline of each scrape and GetModelInfo call.")
@client_options
def command(
    metrics_url: str, target: str | None, interval: float, as_json: bool, once: bool, lowest: int,
    timeout_s: float, **security: Any,
) -> None:
    """Watch a running edge server: traffic, routes, cloud rate, confidence, drift, cloud agreement, errors.

    The token and TLS options apply to --server (gRPC); the TLS options also to an https://
    metrics URL (a server with --tls-cert serves its metrics over TLS, and with --tls-client-ca
    asks for the client certificate there too).
    """
    from edgekit.deps import require

    require("prometheus_client", extra="runtime", what="edgekit monitor")
    if target is not None:
        require("grpc", "grpc_health", extra="runtime", what="edgekit monitor --server")
    if not as_json:
        require("rich", extra="runtime", what="edgekit monitor's live view (or use --json)")
    url, tls = _metrics_endpoint(metrics_url, target, **security)
    client = None
    if target is not None:
        from edgekit.runtime.client import EdgeClient

        client = EdgeClient(target, timeout_s=timeout_s, **client_security(**security))
    watcher = _Watcher(url, client, timeout_s=timeout_s, lowest=lowest, tls=tls)
    try:
        if once:
            watcher.poll(strict=True)  # the start of the interval
            time.sleep(interval)
            snapshot = watcher.poll(strict=True)
            if as_json:
                click.echo(json.dumps(snapshot.to_dict(), ensure_ascii=False))
            else:
                from rich.console import Console

                Console().print(_render(watcher, snapshot, None))
        elif as_json:
            _stream_json(watcher, interval)
        else:
            _live(watcher, interval)
    except KeyboardInterrupt:  # Ctrl-C ends a watch: the normal way out, not a failure
        pass
    finally:
        if client is not None:
            client.close()


def _metrics_endpoint(metrics_url: str, target: str | None, *, token_file: Path | None, tls: bool,
                      tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None
                      ) -> tuple[str, ssl.SSLContext | None]:
    """The metrics URL (https:// when it has no scheme and TLS options are given, else http://) and
    how to check it (None: plain http). Options that would apply to nothing are refused."""
    from edgekit.errors import ConfigError
    from edgekit.runtime.security import https_context

    wants_tls = tls or any(x is not None for x in (tls_ca, tls_cert, tls_key))
    url = metrics_url if "://" in metrics_url else f"{'https' if wants_tls else 'http'}://{metrics_url}"
    if target is None and token_file is not None:
        raise ConfigError("--token-file applies to --server (gRPC) only: /metrics takes no token")
    if url.startswith("https://"):
        return url, https_context(tls_ca, tls_cert, tls_key)
    if target is None and wants_tls:
        raise ConfigError(f"the TLS options apply to an https:// metrics URL or to --server; {url} is plain http")
    return url, None


class _Watcher:
    """Reads the metrics (and the model, with --server) and keeps the previous scrape for rates."""

    def __init__(self, url: str, client: EdgeClient | None, *, timeout_s: float, lowest: int,
                 tls: ssl.SSLContext | None = None) -> None:
        self.url, self.client, self.timeout_s, self.lowest, self.tls = url, client, timeout_s, lowest, tls
        self.model_error: str | None = None
        self._previous: tuple[Scrape, float] | None = None

    def poll(self, *, strict: bool) -> MonitorSnapshot:
        """One scrape and its snapshot against the previous one. EdgekitError when the metrics
        cannot be read; a failed GetModelInfo too when ``strict``, else noted in ``model_error``."""
        from edgekit.errors import EdgekitError
        from edgekit.runtime.monitor_client import build_snapshot, read_metrics

        started = time.monotonic()
        current = read_metrics(self.url, timeout_s=self.timeout_s, taken_at=time.time(), tls=self.tls)
        model = None
        if self.client is not None:
            try:
                model, self.model_error = self.client.model_info(), None
            except EdgekitError as exc:
                if strict:
                    raise
                self.model_error = exc.message
        previous, since = self._previous if self._previous is not None else (None, started)
        self._previous = (current, started)
        return build_snapshot(previous, current, started - since if previous is not None else None,
                              model=model, lowest=self.lowest)


def _stream_json(watcher: _Watcher, interval: float) -> None:
    watcher.poll(strict=True)
    deadline = time.monotonic()
    while True:
        deadline += interval
        time.sleep(max(0.0, deadline - time.monotonic()))
        click.echo(json.dumps(watcher.poll(strict=True).to_dict(), ensure_ascii=False))


def _live(watcher: _Watcher, interval: float) -> None:
    from rich.console import Console
    from rich.live import Live

    from edgekit.errors import EdgekitError

    snapshot, error = None, None
    # a console of its own: rich's global one may have been quieted (edgekit.converters does, for NNCF)
    with Live(_render(watcher, None, None), console=Console(), auto_refresh=False) as live:
        deadline = time.monotonic()
        while True:
            try:
                snapshot, error = watcher.poll(strict=False), None
            except EdgekitError as exc:
                error = exc.message  # keep the last snapshot on screen, marked stale
            live.update(_render(watcher, snapshot, error), refresh=True)
            deadline = max(deadline + interval, time.monotonic())
            time.sleep(deadline - time.monotonic())


# -- the rich view ----------------------------------------------------------------------------


def _num(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return _DASH if value is None else f"{value:{spec}}{suffix}"


def _pct(value: float | None) -> str:
    return _DASH if value is None else f"{value:.1%}"


def _render(watcher: _Watcher, snapshot: MonitorSnapshot | None, error: str | None) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    header = Text.assemble(("edgekit monitor ", "bold"), watcher.url)
    if error is not None:
        header.append(f"  unreachable: {error} (retrying)", style="bold red")
    elif snapshot is None:
        header.append("  connecting…", style="dim")
    if snapshot is None:
        return Group(header)
    seen = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))
    header.append(f"  {'last seen' if error else 'at'} {seen}", style="dim" if error else "")
    if snapshot.interval_s is not None:
        header.append(f" over {snapshot.interval_s:.1f}s", style="dim")
    model = snapshot.model
    if model is not None:
        header.append(f"\nmodel {model.name} v{model.version} ({model.format} {model.precision}, {model.backend}, "
                      f"threshold {model.threshold:.3f})")
    elif watcher.model_error is not None:
        header.append(f"\nmodel: {watcher.model_error}", style="red")
    grid = Table.grid(padding=(0, 2))
    grid.add_column()
    grid.add_column()
    grid.add_row(_traffic_panel(snapshot), _cloud_panel(snapshot))
    grid.add_row(_confidence_panel(snapshot.confidence), _drift_panel(snapshot))
    grid.add_row(_agreement_panel(snapshot), _serving_panel(snapshot))
    grid.add_row(_errors_panel(snapshot), "")
    return Group(header, grid)


def _panel(title: str, table: Any) -> Any:
    from rich.panel import Panel

    return Panel(table, title=title, title_align="left", expand=True)


def _table(*columns: str) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_header=any(columns), header_style="dim")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def _traffic_panel(s: MonitorSnapshot) -> Any:
    t = s.traffic
    table = _table("", "/s", "share", "total")
    table.add_row("requests", _num(t.requests_per_s), "", _num(t.requests_total, ".0f"))
    for status, rate in sorted((t.requests_per_s_by_status or {}).items()):
        table.add_row(f"  {status}", _num(rate), "", "")
    table.add_row("texts", _num(t.texts_per_s), "", _num(None if t.texts_total_by_route is None
                                                         else sum(t.texts_total_by_route.values()), ".0f"))
    for route, total in (t.texts_total_by_route or {}).items():
        rate = None if t.texts_per_s_by_route is None else t.texts_per_s_by_route.get(route)
        share = None if t.route_share is None else t.route_share.get(route)
        table.add_row(f"  {route}", _num(rate), _pct(share), _num(total, ".0f"))
    return _panel("traffic", table)


def _cloud_panel(s: MonitorSnapshot) -> Any:
    c = s.cloud
    table = _table("", "")
    high = c.rate is not None and c.expected is not None and c.rate > max(2 * c.expected, 0.05)
    table.add_row("cloud rate (interval)", f"[bold red]{_pct(c.rate)}[/]" if high else _pct(c.rate))
    table.add_row("since start", _pct(c.rate_total))
    table.add_row("reference expects", _pct(c.expected))
    for outcome, rate in sorted((c.calls_per_s_by_outcome or {}).items()):
        table.add_row(f"calls {outcome}", _num(rate, ".2f", "/s"))
    breaker = _DASH if c.breaker_open is None else ("[bold red]OPEN[/]" if c.breaker_open else "closed")
    table.add_row("breaker", breaker)
    return _panel("cloud", table)


def _confidence_panel(d: Distribution | None) -> Any:
    from rich.console import Group

    if d is None:
        return _panel("confidence", _DASH)
    quantiles = "  ".join(f"{name} {_num(value, '.3f')}" for name, value in d.quantiles.items())
    table = _table("≤", "texts", "")
    table.columns[2].justify = "left"
    peak = max((count for _, count in d.buckets), default=0.0) or 1.0
    for le, count in d.buckets:
        if le == "+Inf" and count == 0:
            continue
        table.add_row(le, f"{count:.0f}", "█" * round(_BAR_WIDTH * count / peak))
    scope = "last interval" if d.scope == "interval" else "since start"
    return _panel(f"confidence ({d.count:.0f} texts, {scope})", Group(quantiles, table))


def _drift_panel(s: MonitorSnapshot) -> Any:
    d = s.drift
    table = _table("signal", "PSI", "state")
    for signal, score in d.scores.items():
        alert = d.alerts.get(signal)
        state = _DASH if alert is None else ("[bold red]DRIFT[/]" if alert else "[green]ok[/]")
        table.add_row(signal, _num(score, ".3f"), state)
    window = _num(d.window_texts, ".0f") + ("" if d.window is None else f" / {d.window:.0f}")
    table.add_row("window texts", window, "")
    table.add_row("threshold", _num(d.threshold, ".3f"), "")
    return _panel("drift", table)


def _agreement_panel(s: MonitorSnapshot) -> Any:
    table = _table("edge label", "agreed", "rate")
    rows = s.lowest_agreement
    if not rows:
        table.add_row(_DASH, "", "")
    for row in rows or ():
        rate = f"[bold red]{row.rate:.1%}[/]" if row.rate < _LOW_AGREEMENT else f"{row.rate:.1%}"
        table.add_row(row.label, f"{row.agreed:.0f}/{row.answered:.0f}", rate)
    return _panel("lowest cloud agreement", table)


def _serving_panel(s: MonitorSnapshot) -> Any:
    table = _table("", "")
    table.add_row("queued texts", _num(s.queued_texts, ".0f"))
    b, lat = s.batch_size, s.latency_ms
    table.add_row("batch size mean", _num(None if b is None else b.mean, ".1f"))
    for name, value in (lat.quantiles.items() if lat is not None else (("p50", None),)):
        table.add_row(f"latency {name}", _num(value, ".1f", " ms"))
    records = s.records
    if records.written_total is not None:
        table.add_row("records written", f"{records.written_total:.0f} ({_num(records.written_per_s, '.2f', '/s')})")
    return _panel("serving", table)


def _errors_panel(s: MonitorSnapshot) -> Any:
    e = s.errors
    table = _table("", "/s", "total")
    rows = 0
    for status, total in sorted((e.requests_total_by_status or {}).items()):
        rate = None if e.requests_per_s_by_status is None else e.requests_per_s_by_status.get(status)
        table.add_row(f"requests {status}", _num(rate), f"{total:.0f}")
        rows += 1
    for title, values in (("cloud", e.cloud_failures_per_s), ("cloud skipped", e.cloud_skipped_per_s)):
        for key, rate in sorted(_nonzero(values).items()):
            table.add_row(f"{title} {key}", _num(rate), "")
            rows += 1
    for reason, total in sorted(_nonzero(e.records_dropped_total).items()):
        table.add_row(f"records dropped {reason}", "", f"{total:.0f}")
        rows += 1
    if not rows:
        table.add_row("none" if e.requests_total_by_status is not None else _DASH, "", "")
    return _panel("errors", table)


def _nonzero(values: Mapping[str, float] | None) -> dict[str, float]:
    return {k: v for k, v in (values or {}).items() if v}
