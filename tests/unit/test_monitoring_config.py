"""The Grafana dashboard and the Prometheus alert rules under benchmarks/monitoring/ parse, and
name only metrics, labels and label values that a server exports.

What a server exports is read from a live /metrics scrape: the data plane's metrics and the drift
monitor's registered in one registry (as ``edgekit serve`` does), some traffic through the data
plane so that every labelled series the files use exists, and prometheus_client's HTTP exporter
on 127.0.0.1. ``promtool check rules`` runs too where promtool is installed (Debian's
``prometheus`` package has it); the image these tests run on does not have it, so without it the
rules are checked for structure, balanced brackets and the names above.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import yaml
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from edgekit.errors import CloudUnavailable, InvalidInput
from edgekit.monitoring import DriftMonitor, build_reference
from edgekit.runtime.batching import BatchSettings
from edgekit.runtime.cascade import CascadeSettings
from edgekit.runtime.dataplane import DataPlane
from edgekit.runtime.monitor_metrics import register_monitor_metrics
from edgekit.runtime.types import ClassifyOptions
from tests.conftest import REPO
from tests.fakes import CONFIDENT, LABELS, UNSURE, FakeCloud, KeywordModel, cloud_model

MONITORING = REPO / "benchmarks" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
SEVERITIES = {"info", "warning", "critical"}
METRIC = re.compile(r"\b(edgekit_[a-zA-Z0-9_]+)\b(\s*\{([^}]*)\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LITERALS = re.compile(r"^[A-Za-z0-9_.|]+$")  # a value or an alternation of values, no regex syntax


def _cloud_answer(text: str) -> tuple[str, float]:
    if "boom" in text:
        raise CloudUnavailable("the cloud fell over")
    return cloud_model().predict(text)


@pytest.fixture(scope="module")
def exported() -> dict[str, dict[str, set[str]]]:
    """sample name -> label name -> values seen, from a live scrape of a served registry."""
    dp = DataPlane(KeywordModel(), cloud=FakeCloud(_cloud_answer), cascade=CascadeSettings(breaker_failures=1),
                   batching=BatchSettings(max_batch_size=1))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(LABELS)), size=1000)
    register_monitor_metrics(dp.registry, DriftMonitor(build_reference(probs, LABELS, [20] * 1000, 0.6)))
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=dp.registry)
    try:
        dp.classify(CONFIDENT)  # route EDGE
        dp.classify(list(UNSURE))  # route CLOUD, cloud call ok
        dp.classify(["boom, I changed my mind"])  # cloud error: EDGE_CLOUD_FAILED, the breaker opens
        dp.classify(["I changed my mind again"])  # the breaker is open: a skipped cloud call
        dp.classify(["where is my order"], ClassifyOptions(allow_cloud=False))
        with pytest.raises(InvalidInput):
            dp.classify([""])  # invalid_input
        url = f"http://127.0.0.1:{httpd.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode("utf-8")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
        dp.close()
    out: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = out.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return out


def _dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            yield f"variable {variable['name']!r}", variable["definition"]


def _alert_queries(rules: dict) -> Iterator[tuple[str, str]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']!r}", rule["expr"]


def _problems(where: str, query: str, exported: dict[str, dict[str, set[str]]]) -> list[str]:
    """Metrics that no scrape shows, labels they do not carry, label values never exported."""
    found = []
    used: dict[str, set[str]] = {}
    for name, _, matchers in METRIC.findall(query):
        if name not in exported:
            found.append(f"{where}: {name} is not exported")
            continue
        labels = exported[name]
        used[name] = set(labels)
        for label, op, value in MATCHER.findall(matchers):
            if label in TARGET_LABELS:
                continue
            if label not in labels:
                found.append(f"{where}: {name} has no label {label!r} (it has {sorted(labels)})")
            elif LITERALS.match(value):
                unknown = sorted(set(value.split("|")) - labels[label])
                if unknown:
                    found.append(f"{where}: {name}{{{label}{op}...}}: {unknown} never exported "
                                 f"(seen: {sorted(labels[label])})")
    known = set().union(*used.values(), TARGET_LABELS) if used else TARGET_LABELS
    for grouping in GROUPING.findall(query):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in known:
                found.append(f"{where}: groups by {label!r}, which none of its metrics carries")
    if not used:
        found.append(f"{where}: names no edgekit metric")
    return found


def _balanced(query: str) -> bool:
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', '""', query):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack and query.count('"') % 2 == 0


def test_the_dashboard_is_grafana_json_with_unique_panels_that_fit_the_grid():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    queries = list(_dashboard_queries(dashboard))
    assert all(_balanced(q) for _, q in queries), [w for w, q in queries if not _balanced(q)]


def test_the_alert_rules_have_prometheus_rule_file_structure():
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    names = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["expr"], str) and _balanced(rule["expr"]), rule["alert"]
            assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0s")), rule["alert"]
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    # the four the issue asks for: drift, cloud rate over the reference's, cloud agreement, errors
    assert {"EdgekitDrift", "EdgekitCloudRateHigh", "EdgekitCloudAgreementDropping", "EdgekitErrorRate"} <= set(names)


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_label_and_value_used_is_exported(source, exported):
    if source == "dashboard":
        queries = list(_dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))))
    else:
        queries = list(_alert_queries(yaml.safe_load(ALERTS.read_text(encoding="utf-8"))))
    problems = [p for where, query in queries for p in _problems(where, query, exported)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_name_label_or_value(exported):
    assert _problems("q", 'rate(edgekit_request_total[5m])', exported)  # no such metric
    assert _problems("q", 'edgekit_drift_score{signl="label"}', exported)  # no such label
    assert _problems("q", 'edgekit_predictions_total{route="CLOUDY"}', exported)  # no such value
    assert _problems("q", 'sum by (route) (edgekit_drift_alert)', exported)  # groups by a label it lacks
    assert not _problems("q", 'sum by (instance, signal) (edgekit_drift_alert{signal=~"label|length"})', exported)


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus); structure checked above")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
