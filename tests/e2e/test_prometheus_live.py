"""A real Prometheus scrapes a real ``edgekit serve`` and evaluates benchmarks/monitoring/alerts.yml
(issue 15, point 2).

tests/unit/test_monitoring_config.py checks the dashboard and the rules against the names of a
/metrics scrape; this runs what an operator runs. Three processes: ``edgekit serve`` of the
converted ONNX int8 bundle (drift on, a window of 100 texts), whose cloud is a second ``edgekit
serve`` of the fp32 bundle (the edgekit protocol, same labels; it starts in seconds where
``serve-cloud`` would import torch), and the ``prometheus`` binary with a config that scrapes the
edge's metrics port every second and evaluates the rules every second. Traffic: texts routed to
the cloud, texts kept at the edge, an invalid request; then the cloud is stopped, so cloud calls
fail and the circuit breaker opens; then 100 copies of one text nothing like validation, so the
drift window drifts. Prometheus's HTTP API must then show the target up, every rule group loaded
and evaluated without error, a series for every metric the dashboard and the rules name, every
dashboard query evaluating to data, and EdgekitDrift (label signal) and EdgekitCloudBreakerOpen
active (pending: their ``for`` is minutes) with summaries whose templates expanded.

Skipped without the ``prometheus`` binary (Debian: ``apt-get install prometheus``, 2.42); .ci/run
installs it and fails if this was skipped. About 20 s once the bundles exist.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, needs

PROMETHEUS = shutil.which("prometheus")
MONITORING = REPO / "benchmarks" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\bedgekit_[a-zA-Z0-9_]+\b")
# Grafana's variables, as Grafana would fill them for "All" servers over a short range
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "1m"}
DRIFT_WINDOW = 100
ODD_TEXT = "zq " * 60  # no word of the shop's vocabulary, longer than any validation text

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: apt-get install prometheus)"),
    needs("torch", "transformers", "onnxruntime", "grpc", "prometheus_client"),
]


class _Process:
    """A subprocess whose output goes to a file, started once a line matching ``ready`` shows."""

    def __init__(self, argv: list[str], log: Path, ready: str, *, timeout_s: float = 120) -> None:
        self.log, self._out = log, log.open("w")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout_s
        while not (match := re.search(ready, self.text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{argv[:3]} did not start:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        self.match = match

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def _free_port() -> int:
    with socket.socket() as s:  # Prometheus cannot report a port it picked itself: pick one for it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:  # a bad query is a 400 with the same JSON envelope
        return json.load(exc)


def _wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"Prometheus never showed {what} within {timeout_s:.0f} s")
        time.sleep(0.25)
    return result


def _queries() -> tuple[list[tuple[str, str]], list[str]]:
    """(where, PromQL) of every dashboard panel target; the rules' expressions and the dashboard's
    variable queries (Grafana's label_values, not PromQL), read for the metric names they use."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]
    rules = [r["expr"] for g in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"] for r in g["rules"]]
    return panels, rules + variables


@pytest.fixture
def stack(converted, tmp_path):
    """(edge address, its metrics target, Prometheus base URL, the cloud process); all stopped after."""
    bundles = {b.name: b for b in converted.bundles}
    started: list[_Process] = []
    serving = r"serving [^\n]* on (\S+)"
    try:
        cloud = _Process([sys.executable, "-m", "edgekit", "serve", str(bundles["onnx-fp32"]), "--port", "0",
                          "--threads", "1", "--no-drift"], tmp_path / "cloud.log", serving)
        started.append(cloud)
        edge = _Process([sys.executable, "-m", "edgekit", "serve", str(bundles["onnx-int8"]), "--port", "0",
                         "--threads", "1", "--metrics-port", "0", "--cloud", cloud.match.group(1),
                         "--drift-window", str(DRIFT_WINDOW)],
                        tmp_path / "edge.log", serving + r"\n(?:.*\n)*?metrics on http://(\S+)/metrics")
        started.append(edge)
        target = edge.match.group(2)
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "edgekit", "static_configs": [{"targets": [target]}]}],
        }))
        port = _free_port()
        prometheus = _Process([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              tmp_path / "prometheus.log", r"Server is ready to receive web requests", timeout_s=60)
        started.append(prometheus)
        yield edge.match.group(1), target, f"http://127.0.0.1:{port}", cloud
    finally:
        for process in reversed(started):
            process.stop()


def test_prometheus_scrapes_the_server_loads_the_rules_and_sees_every_series(stack, small_splits):
    from edgekit.runtime.client import EdgeClient

    from edgekit.data import load_dataset
    from edgekit.errors import InvalidInput

    address, target, prometheus, cloud = stack

    def api(path: str, **params: str) -> dict[str, Any]:
        return _get(f"{prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}")

    def target_up() -> dict | None:
        found = [t for t in api("targets")["data"]["activeTargets"] if t["labels"]["instance"] == target]
        return found[0] if found and found[0]["health"] == "up" else None

    up = _wait_for(f"the target {target} up", target_up, 15)
    assert up["lastError"] == "" and up["labels"]["job"] == "edgekit", up

    texts = list(load_dataset(small_splits["test"]).texts[:40])
    with EdgeClient(address, timeout_s=30) as client:
        for i in range(0, len(texts), 4):  # threshold 1: every text to the cloud (route CLOUD, agreement counted)
            client.classify(texts[i:i + 4], threshold=1.0)
        client.classify(texts[:8], allow_cloud=False)  # route EDGE
        with pytest.raises(InvalidInput):
            client.classify([""])  # status invalid_input
        cloud.stop()  # cloud calls fail: route EDGE_CLOUD_FAILED; five in a row open the breaker, then skipped
        for text in texts[:8]:
            assert client.classify([text], threshold=1.0)[0].route.value == "EDGE_CLOUD_FAILED"
        for _ in range(DRIFT_WINDOW // 10):  # a full window of one odd text: the label signal drifts
            client.classify([ODD_TEXT] * 10, allow_cloud=False)

    def alerts_active() -> dict[str, list[dict]] | None:
        active: dict[str, list[dict]] = {}
        for alert in api("alerts")["data"]["alerts"]:
            active.setdefault(alert["labels"]["alertname"], []).append(alert)
        drift = {a["labels"].get("signal") for a in active.get("EdgekitDrift", [])}
        return active if "label" in drift and "EdgekitCloudBreakerOpen" in active else None

    active = _wait_for("EdgekitDrift{signal=label} and EdgekitCloudBreakerOpen active", alerts_active)
    for alert in [a for alerts in active.values() for a in alerts]:
        assert alert["state"] in {"pending", "firing"}, alert
        assert alert["labels"]["instance"] == target and alert["labels"]["severity"], alert
        for text in alert["annotations"].values():
            assert "error expanding template" not in text and "<no value>" not in text, alert
        assert alert["annotations"]["summary"].startswith(f"{target}: "), alert

    panels, others = _queries()
    # counters' _total, histograms' _bucket/_sum/_count: the names as Prometheus stores them
    names = sorted({name for _, query in panels for name in METRIC.findall(query)}
                   | {name for query in others for name in METRIC.findall(query)})

    def dashboard_problems() -> list[str]:
        """Series the files name that Prometheus lacks; dashboard queries that fail or show no data
        ("No data" on a server that works looks like a broken scrape). rate() needs two scrapes."""
        found = [f"no series {name}" for name in names
                 if not api("query", query=f'{name}{{instance="{target}"}}')["data"]["result"]]
        for where, query in panels:
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            answer = api("query", query=query)
            if answer["status"] != "success":
                found.append(f"{where}: {answer.get('error')}")
            elif not answer["data"]["result"]:
                found.append(f"{where}: no data for {query}")
        return found

    deadline = time.monotonic() + 15
    while (problems := dashboard_problems()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not problems, "\n".join(problems)
    instances = api("label/instance/values", **{"match[]": "edgekit_requests_total"})["data"]
    assert target in instances  # the dashboard's $instance variable: label_values(edgekit_requests_total, instance)

    # every rule evaluated again on all that data (an error such as many-to-many matching shows only then)
    def evaluations() -> dict[str, str]:
        return {r["name"]: r["lastEvaluation"] for g in api("rules")["data"]["groups"] for r in g["rules"]}

    before = evaluations()
    _wait_for("every rule evaluated again", lambda: all(evaluations()[n] != t for n, t in before.items()), 15)
    rules_file = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    groups = api("rules")["data"]["groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in rules_file["groups"]]
    for group, expected in zip(groups, rules_file["groups"]):
        assert [r["name"] for r in group["rules"]] == [r["alert"] for r in expected["rules"]], group["name"]
        assert group["file"] == str(ALERTS) and group["interval"] == 1, group
        for rule in group["rules"]:
            assert rule["health"] == "ok" and not rule.get("lastError"), rule
