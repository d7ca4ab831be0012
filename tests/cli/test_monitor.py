"""``edgekit monitor``: the snapshot from two scrapes, ``--json --once`` against real HTTP servers, errors."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edgekit.cli import main
from tests.conftest import needs

pytestmark = needs("prometheus_client")

# Two scrapes 10 s apart of a server with a reference (drift metrics), a cloud and --record.
BEFORE = """\
# TYPE edgekit_requests_total counter
edgekit_requests_total{backend="onnxruntime",status="ok"} 100.0
edgekit_requests_total{backend="onnxruntime",status="overloaded"} 2.0
# TYPE edgekit_predictions_total counter
edgekit_predictions_total{backend="onnxruntime",route="EDGE"} 180.0
edgekit_predictions_total{backend="onnxruntime",route="CLOUD"} 20.0
edgekit_predictions_total{backend="onnxruntime",route="EDGE_CLOUD_FAILED"} 0.0
# TYPE edgekit_queued_texts gauge
edgekit_queued_texts 0.0
# TYPE edgekit_batch_size histogram
edgekit_batch_size_bucket{le="1.0"} 50.0
edgekit_batch_size_bucket{le="2.0"} 100.0
edgekit_batch_size_bucket{le="+Inf"} 100.0
edgekit_batch_size_count 100.0
edgekit_batch_size_sum 200.0
# TYPE edgekit_cloud_calls_total counter
edgekit_cloud_calls_total{outcome="ok"} 20.0
# TYPE edgekit_cloud_skipped_total counter
# TYPE edgekit_cloud_breaker_open gauge
edgekit_cloud_breaker_open 0.0
# TYPE edgekit_confidence histogram
edgekit_confidence_bucket{le="0.5"} 20.0
edgekit_confidence_bucket{le="0.9"} 40.0
edgekit_confidence_bucket{le="1.0"} 200.0
edgekit_confidence_bucket{le="+Inf"} 200.0
edgekit_confidence_count 200.0
edgekit_confidence_sum 170.0
# TYPE edgekit_cloud_agreement_total counter
edgekit_cloud_agreement_total{agreed="true",label="track_order"} 9.0
edgekit_cloud_agreement_total{agreed="false",label="track_order"} 1.0
edgekit_cloud_agreement_total{agreed="true",label="get_refund"} 2.0
edgekit_cloud_agreement_total{agreed="false",label="get_refund"} 8.0
edgekit_cloud_agreement_total{agreed="true",label="cancel_order"} 0.0
edgekit_cloud_agreement_total{agreed="false",label="cancel_order"} 0.0
# TYPE edgekit_drift_score gauge
edgekit_drift_score{signal="confidence"} 0.05
edgekit_drift_score{signal="label"} 0.10
edgekit_drift_score{signal="length"} 0.02
# TYPE edgekit_drift_alert gauge
edgekit_drift_alert{signal="confidence"} 0.0
edgekit_drift_alert{signal="label"} 0.0
edgekit_drift_alert{signal="length"} 0.0
# TYPE edgekit_drift_window_texts gauge
edgekit_drift_window_texts 200.0
# TYPE edgekit_reference_cloud_rate gauge
edgekit_reference_cloud_rate 0.1
# TYPE edgekit_records_written_total counter
edgekit_records_written_total 20.0
# TYPE edgekit_records_dropped_total counter
"""

AFTER = """\
# TYPE edgekit_requests_total counter
edgekit_requests_total{backend="onnxruntime",status="ok"} 150.0
edgekit_requests_total{backend="onnxruntime",status="overloaded"} 2.0
edgekit_requests_total{backend="onnxruntime",status="error"} 3.0
# TYPE edgekit_predictions_total counter
edgekit_predictions_total{backend="onnxruntime",route="EDGE"} 240.0
edgekit_predictions_total{backend="onnxruntime",route="CLOUD"} 50.0
edgekit_predictions_total{backend="onnxruntime",route="EDGE_CLOUD_FAILED"} 10.0
# TYPE edgekit_queued_texts gauge
edgekit_queued_texts 7.0
# TYPE edgekit_batch_size histogram
edgekit_batch_size_bucket{le="1.0"} 50.0
edgekit_batch_size_bucket{le="2.0"} 150.0
edgekit_batch_size_bucket{le="+Inf"} 150.0
edgekit_batch_size_count 150.0
edgekit_batch_size_sum 300.0
# TYPE edgekit_cloud_calls_total counter
edgekit_cloud_calls_total{outcome="ok"} 40.0
edgekit_cloud_calls_total{outcome="timeout"} 5.0
# TYPE edgekit_cloud_skipped_total counter
edgekit_cloud_skipped_total{reason="breaker_open"} 5.0
# TYPE edgekit_cloud_breaker_open gauge
edgekit_cloud_breaker_open 1.0
# TYPE edgekit_confidence histogram
edgekit_confidence_bucket{le="0.5"} 60.0
edgekit_confidence_bucket{le="0.9"} 100.0
edgekit_confidence_bucket{le="1.0"} 300.0
edgekit_confidence_bucket{le="+Inf"} 300.0
edgekit_confidence_count 300.0
edgekit_confidence_sum 230.0
# TYPE edgekit_cloud_agreement_total counter
edgekit_cloud_agreement_total{agreed="true",label="track_order"} 27.0
edgekit_cloud_agreement_total{agreed="false",label="track_order"} 3.0
edgekit_cloud_agreement_total{agreed="true",label="get_refund"} 2.0
edgekit_cloud_agreement_total{agreed="false",label="get_refund"} 18.0
edgekit_cloud_agreement_total{agreed="true",label="cancel_order"} 0.0
edgekit_cloud_agreement_total{agreed="false",label="cancel_order"} 0.0
# TYPE edgekit_drift_score gauge
edgekit_drift_score{signal="confidence"} 0.41
edgekit_drift_score{signal="label"} 0.12
edgekit_drift_score{signal="length"} 0.02
# TYPE edgekit_drift_alert gauge
edgekit_drift_alert{signal="confidence"} 1.0
edgekit_drift_alert{signal="label"} 0.0
edgekit_drift_alert{signal="length"} 0.0
# TYPE edgekit_drift_window_texts gauge
edgekit_drift_window_texts 300.0
# TYPE edgekit_reference_cloud_rate gauge
edgekit_reference_cloud_rate 0.1
# TYPE edgekit_records_written_total counter
edgekit_records_written_total 50.0
# TYPE edgekit_records_dropped_total counter
edgekit_records_dropped_total{reason="error"} 1.0
"""

# A server of a bundle without a reference, without cloud and without --record: the data plane's metrics only.
PLAIN = """\
# TYPE edgekit_requests_total counter
edgekit_requests_total{backend="onnxruntime",status="ok"} 4.0
# TYPE edgekit_predictions_total counter
edgekit_predictions_total{backend="onnxruntime",route="EDGE"} 4.0
edgekit_predictions_total{backend="onnxruntime",route="CLOUD"} 0.0
edgekit_predictions_total{backend="onnxruntime",route="EDGE_CLOUD_FAILED"} 0.0
# TYPE edgekit_queued_texts gauge
edgekit_queued_texts 0.0
# TYPE edgekit_cloud_calls_total counter
"""


def _scrape(text: str, taken_at: float = 0.0):
    from edgekit.runtime.monitor_client import Scrape

    return Scrape.parse(text, url="http://test/metrics", taken_at=taken_at)


def test_rates_routes_and_errors_are_the_counter_increases_over_the_interval():
    from edgekit.runtime.monitor_client import build_snapshot

    s = build_snapshot(_scrape(BEFORE), _scrape(AFTER, 1010.0), 10.0)
    assert s.interval_s == 10.0 and s.taken_at == 1010.0 and s.url == "http://test/metrics"
    t = s.traffic
    assert t.requests_per_s == pytest.approx(5.3)  # 50 ok + 3 error in 10 s
    assert t.requests_per_s_by_status == pytest.approx({"ok": 5.0, "overloaded": 0.0, "error": 0.3})
    assert t.texts_per_s == pytest.approx(10.0)
    assert t.texts_per_s_by_route == pytest.approx({"EDGE": 6.0, "CLOUD": 3.0, "EDGE_CLOUD_FAILED": 1.0})
    assert t.route_share == pytest.approx({"EDGE": 0.6, "CLOUD": 0.3, "EDGE_CLOUD_FAILED": 0.1})
    assert t.requests_total == 155 and t.texts_total_by_route == {"EDGE": 240, "CLOUD": 50, "EDGE_CLOUD_FAILED": 10}
    c = s.cloud
    assert c.rate == pytest.approx(0.4)  # CLOUD and EDGE_CLOUD_FAILED, as the alert rule counts
    assert c.rate_total == pytest.approx(60 / 300) and c.expected == pytest.approx(0.1)
    assert c.calls_per_s_by_outcome == pytest.approx({"ok": 2.0, "timeout": 0.5}) and c.breaker_open is True
    e = s.errors
    assert e.requests_per_s_by_status == pytest.approx({"overloaded": 0.0, "error": 0.3})
    assert e.requests_total_by_status == {"overloaded": 2.0, "error": 3.0}
    assert e.cloud_failures_per_s == pytest.approx({"timeout": 0.5})
    assert e.cloud_skipped_per_s == pytest.approx({"breaker_open": 0.5})
    assert e.records_dropped_total == {"error": 1.0}
    assert s.records.written_per_s == pytest.approx(3.0) and s.records.written_total == 50
    assert s.queued_texts == 7


def test_histograms_cover_the_interval_or_everything_when_it_saw_nothing():
    from edgekit.runtime.monitor_client import build_snapshot

    s = build_snapshot(_scrape(BEFORE), _scrape(AFTER), 10.0)
    conf = s.confidence
    assert conf.scope == "interval" and conf.count == 100 and conf.mean == pytest.approx(0.6)
    assert dict(conf.buckets) == {"0.5": 40, "0.9": 20, "1.0": 40, "+Inf": 0}
    # 100 texts: p10 is the 10th of 40 in (0, 0.5], p50 the 10th of 20 in (0.5, 0.9], p90 the 30th of 40 in (0.9, 1]
    assert conf.quantiles == pytest.approx({"p10": 0.125, "p50": 0.7, "p90": 0.975})
    assert s.batch_size.scope == "interval" and s.batch_size.mean == pytest.approx(2.0)
    assert s.latency_ms is None  # not exported by this server: shown as "–"

    still = build_snapshot(_scrape(AFTER), _scrape(AFTER), 2.0)  # no traffic in the interval
    assert still.confidence.scope == "total" and still.confidence.count == 300
    assert still.traffic.texts_per_s == 0 and still.traffic.route_share is None and still.cloud.rate is None

    first = build_snapshot(None, _scrape(AFTER), None)  # a first scrape: totals, no rates
    assert first.interval_s is None and first.traffic.requests_per_s is None and first.cloud.rate is None
    assert first.confidence.scope == "total" and first.cloud.rate_total == pytest.approx(0.2)


def test_drift_alerts_and_the_labels_the_cloud_disagrees_with():
    from edgekit.runtime.monitor_client import build_snapshot

    s = build_snapshot(_scrape(BEFORE), _scrape(AFTER), 10.0)
    assert s.drift.scores == pytest.approx({"confidence": 0.41, "label": 0.12, "length": 0.02})
    assert s.drift.alerts == {"confidence": True, "label": False, "length": False}
    assert s.drift.alerting == ("confidence",) and s.drift.window_texts == 300
    assert s.drift.threshold is None and s.drift.window is None  # known from GetModelInfo (--server) only
    lowest = s.lowest_agreement
    assert [(a.label, a.agreed, a.answered) for a in lowest] == [("get_refund", 2, 20), ("track_order", 27, 30)]
    assert lowest[0].rate == pytest.approx(0.1)  # cancel_order: never answered by the cloud, not listed
    assert len(build_snapshot(None, _scrape(AFTER), None, lowest=1).lowest_agreement) == 1


def test_a_counter_that_went_down_is_a_restart_counted_from_zero():
    from edgekit.runtime.monitor_client import build_snapshot

    s = build_snapshot(_scrape(AFTER), _scrape(PLAIN), 2.0)
    assert s.traffic.requests_per_s == pytest.approx(2.0) and s.traffic.texts_per_s == pytest.approx(2.0)


def test_missing_metrics_are_none_never_an_error():
    from edgekit.runtime.monitor_client import build_snapshot

    s = build_snapshot(_scrape(PLAIN), _scrape(PLAIN), 2.0)
    assert s.drift.scores == {"confidence": None, "label": None, "length": None}
    assert s.drift.alerts == {"confidence": None, "label": None, "length": None} and s.drift.alerting == ()
    assert s.drift.window_texts is None and s.cloud.expected is None and s.cloud.breaker_open is None
    assert s.confidence is None and s.batch_size is None and s.lowest_agreement is None
    assert s.errors.cloud_failures_per_s == {}  # exported, nothing counted yet
    assert s.errors.cloud_skipped_per_s is None and s.errors.records_dropped_total is None
    assert s.records.written_total is None
    data = s.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["drift"]["scores"]["label"] is None and data["confidence"] is None

    empty = build_snapshot(None, _scrape(""), None)  # not even the data plane's metrics
    assert empty.traffic.requests_total is None and empty.queued_texts is None
    json.dumps(empty.to_dict(), allow_nan=False)


def test_model_info_adds_the_model_and_the_drift_threshold():
    from edgekit.runtime.monitor_client import build_snapshot
    from edgekit.runtime.types import ModelInfo

    info = ModelInfo(name="shop", version="4", format="onnx", precision="int8", backend="onnxruntime",
                     labels=("a", "b"), max_length=32, temperature=1.3, threshold=0.55,
                     summary={"drift": {"threshold": 0.25, "window": 1000, "judged": True}})
    s = build_snapshot(_scrape(BEFORE), _scrape(AFTER), 10.0, model=info)
    assert (s.model.name, s.model.version, s.model.format, s.model.backend) == ("shop", "4", "onnx", "onnxruntime")
    assert s.drift.threshold == 0.25 and s.drift.window == 1000 and s.to_dict()["model"]["drift"]["judged"] is True


def test_garbage_is_not_prometheus_text():
    from edgekit.errors import EdgekitError

    with pytest.raises(EdgekitError, match="not a Prometheus text exposition at http://test/metrics"):
        _scrape("<html><body>It works!</body></html>")


def test_the_live_view_renders_full_and_empty_snapshots():
    pytest.importorskip("rich", reason="the live view needs rich")
    from rich.console import Console

    from edgekit.cli.monitor import _render, _Watcher
    from edgekit.runtime.monitor_client import build_snapshot

    watcher = _Watcher("http://test/metrics", None, timeout_s=1.0, lowest=5)
    console = Console(width=120, record=True, color_system=None)
    console.print(_render(watcher, build_snapshot(_scrape(BEFORE), _scrape(AFTER), 10.0), None))
    full = console.export_text()
    for shown in ("EDGE_CLOUD_FAILED", "40.0%", "DRIFT", "get_refund", "2/20", "OPEN", "requests error"):
        assert shown in full
    console.print(_render(watcher, build_snapshot(None, _scrape(PLAIN), None), "connection refused"))
    plain = console.export_text()
    assert "unreachable: connection refused" in plain and "–" in plain


# -- the command, against real HTTP servers -----------------------------------------------------------


@contextmanager
def _exposition_server(*bodies: str) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering each GET with the next body (the last one repeats)."""
    served = list(bodies)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (served.pop(0) if len(served) > 1 else served[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/metrics"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    out, err = capsys.readouterr()
    return code, out, err


def test_json_once_prints_one_object_of_the_measured_interval(capsys):
    with _exposition_server(BEFORE, AFTER) as url:
        code, out, err = _run(["monitor", "--metrics-url", url, "--json", "--once", "--interval", "0.2"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["url"] == url and 0.2 <= data["interval_s"] < 5
    assert data["traffic"]["texts_total_by_route"] == {"EDGE": 240, "CLOUD": 50, "EDGE_CLOUD_FAILED": 10}
    assert data["traffic"]["route_share"] == {"EDGE": 0.6, "CLOUD": 0.3, "EDGE_CLOUD_FAILED": 0.1}
    assert data["cloud"]["expected"] == 0.1 and data["drift"]["alerting"] == ["confidence"]
    assert data["lowest_agreement"][0] == {"label": "get_refund", "agreed": 2.0, "answered": 20.0, "rate": 0.1}
    assert data["model"] is None


def test_missing_metrics_are_null_in_json(capsys):
    with _exposition_server(PLAIN) as url:
        code, out, err = _run(["monitor", "--metrics-url", url.removeprefix("http://"), "--json", "--once",
                               "--interval", "0.1"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["drift"]["scores"] == {"confidence": None, "label": None, "length": None}
    assert data["cloud"]["expected"] is None and data["confidence"] is None


def test_an_unreachable_url_is_a_one_line_error(capsys):
    with _exposition_server(PLAIN) as url:
        pass  # the port is free again: nothing listens there
    code, out, err = _run(["monitor", "--metrics-url", url, "--json", "--once", "--timeout-s", "2"], capsys)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot read metrics from {url}: "), err
    assert "refused" in lines[0].lower()


def test_a_page_that_is_not_metrics_is_a_one_line_error(capsys):
    with _exposition_server("<html>hello</html>") as url:
        code, _, err = _run(["monitor", "--metrics-url", url, "--once", "--json"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "not a Prometheus text exposition" in err


@needs("grpc")
def test_json_once_against_a_real_edge_server_with_its_model_info(capsys):
    from edgekit.runtime.client import EdgeClient
    from tests.fakes import CONFIDENT, KeywordModel, serving

    with serving(KeywordModel(), metrics_port=0) as server, EdgeClient(server.address) as client:
        client.classify(CONFIDENT)
        code, out, err = _run(["monitor", "--metrics-url", f"127.0.0.1:{server.metrics_port}/metrics",
                               "--server", server.address, "--json", "--once", "--interval", "0.1"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["model"]["name"] == "fake-edge" and data["model"]["version"] == "3"
    assert data["traffic"]["requests_total"] == 1 and data["traffic"]["texts_total_by_route"]["EDGE"] == 3
    assert data["batch_size"]["count"] >= 1 and data["latency_ms"]["quantiles"]["p50"] is not None
    assert data["queued_texts"] == 0 and data["cloud"]["breaker_open"] is False


@needs("grpc")
def test_an_unreachable_server_is_a_one_line_error_in_json_mode(capsys):
    with _exposition_server(PLAIN) as url:
        code, out, err = _run(["monitor", "--metrics-url", url, "--server", "127.0.0.1:1", "--json", "--once",
                               "--timeout-s", "1"], capsys)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: edgekit server at 127.0.0.1:1: UNAVAILABLE"), err


def test_the_live_view_keeps_retrying_an_unreachable_url_until_ctrl_c(monkeypatch, capsys):
    pytest.importorskip("rich", reason="the live view needs rich")
    import time

    with _exposition_server(PLAIN) as url:
        pass  # nothing listens there any more
    sleeps = []

    def sleep(seconds: float) -> None:  # the operator presses Ctrl-C during the third wait
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    code, out, err = _run(["monitor", "--metrics-url", url, "--interval", "0.5", "--timeout-s", "1"], capsys)
    assert code == 0, err  # Ctrl-C is how a watch ends
    assert len(sleeps) == 3 and "unreachable" in out and "Error" not in err


def test_the_snapshot_module_exports_a_sorted_all():
    from edgekit.runtime import monitor_client

    assert list(monitor_client.__all__) == sorted(monitor_client.__all__)
    assert all(hasattr(monitor_client, name) for name in monitor_client.__all__)


def test_once_without_json_prints_the_view_once(capsys):
    pytest.importorskip("rich", reason="the view needs rich")
    with _exposition_server(BEFORE, AFTER) as url:
        code, out, err = _run(["monitor", "--metrics-url", url, "--once", "--interval", "0.1"], capsys)
    assert code == 0, err
    assert "traffic" in out and "DRIFT" in out and "get_refund" in out
