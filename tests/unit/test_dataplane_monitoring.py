"""The data plane watches drift against the bundle's reference and records what the cloud answered
(issue 15's wiring: DataPlane + Cascade + MonitorSettings)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from prometheus_client import generate_latest

from edgekit.metrics import softmax
from edgekit.monitoring import DriftSettings, build_reference
from edgekit.runtime.dataplane import DataPlane, MonitorSettings
from edgekit.runtime.recorder import RecorderSettings, read_records
from edgekit.runtime.types import Route
from tests.fakes import CONFIDENT, UNSURE, FakeCloud, KeywordModel

NORMAL = CONFIDENT * 40  # what validation looked like: clear questions the edge answers itself


def _edge_with_reference() -> KeywordModel:
    model = KeywordModel()
    probs = softmax(model.logits(NORMAL), model.info.temperature)
    reference = build_reference(probs, list(model.info.labels), NORMAL, model.info.threshold)
    model.info = dataclasses.replace(model.info, reference=reference)
    return model


def _metric(registry, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(name + ("{" + wanted if wanted else " ")) or (not wanted and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not exported")


def test_cloud_answers_are_recorded_with_the_edges_own_top_k(tmp_path):
    cloud = FakeCloud(answer=lambda text: (UNSURE[text], 0.97))
    plane = DataPlane(_edge_with_reference(), cloud=cloud,
                      monitor=MonitorSettings(record=RecorderSettings(directory=tmp_path / "records")))
    try:
        texts = [*UNSURE, CONFIDENT[0]]
        predictions = plane.classify(texts)
    finally:
        plane.close()
    assert [p.route for p in predictions] == [Route.CLOUD, Route.CLOUD, Route.EDGE]
    assert all(p.edge_label for p in predictions)  # the edge's label survives a cloud answer
    records = list(read_records(tmp_path / "records"))
    assert [r["cloud_label"] for r in records] == [UNSURE[t] for t in UNSURE]  # only what the cloud answered
    assert [r["text"] for r in records] == list(UNSURE)
    for record, prediction in zip(records, predictions):
        assert record["edge_top_k"][0][0] == prediction.edge_label
        assert len(record["edge_top_k"]) == 3  # every label of the fake (top-5 capped by the labels)


def test_nothing_is_recorded_unless_asked(tmp_path):
    plane = DataPlane(_edge_with_reference(), cloud=FakeCloud(answer=lambda text: (UNSURE[text], 0.97)))
    try:
        plane.classify(list(UNSURE))
    finally:
        plane.close()
    assert "edgekit_records" not in generate_latest(plane.registry).decode()


def test_drift_alert_fires_when_the_traffic_changes_and_shows_in_model_info(caplog):
    plane = DataPlane(_edge_with_reference(), monitor=MonitorSettings(drift=DriftSettings(window=60, threshold=0.25)))
    try:
        for _ in range(20):
            plane.classify(CONFIDENT)  # like validation
        assert _metric(plane.registry, "edgekit_drift_alert", signal="label") == 0
        assert not plane.model_info().summary["drift"]["drifting"]["label"]
        with caplog.at_level("WARNING"):
            for _ in range(40):
                plane.classify(["where is my parcel", "track it"])  # one intent only, longer texts
        assert _metric(plane.registry, "edgekit_drift_alert", signal="label") == 1
        assert plane.model_info().summary["drift"]["drifting"]["label"]
        started = [r.getMessage() for r in caplog.records if "drift_started" in r.getMessage()]
        assert sum("signal=label" in m for m in started) == 1  # one line per episode, not one per request
        assert _metric(plane.registry, "edgekit_predicted_label_total", label="track_order") >= 80
    finally:
        plane.close()


def test_a_model_without_reference_gets_no_drift_metrics():
    plane = DataPlane(KeywordModel())
    try:
        plane.classify(CONFIDENT)
        assert "edgekit_drift" not in generate_latest(plane.registry).decode()
        assert "drift" not in plane.model_info().summary
    finally:
        plane.close()


def test_the_reference_travels_in_the_manifest(tmp_path):
    from edgekit.manifest import Manifest
    from edgekit.monitoring import Reference

    model = _edge_with_reference()
    manifest = Manifest(format="onnx", precision="fp32", labels=list(model.info.labels), model_files=["m.onnx"],
                        max_length=32, reference=model.info.reference.to_dict())
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "tokenizer.json").write_text("{}")
    manifest.save(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert Reference.from_dict(loaded.reference) == model.info.reference
    assert json.loads((tmp_path / "manifest.json").read_text())["reference"]["labels"] == list(model.info.labels)


def test_record_options_without_record_are_refused(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli
    from edgekit.errors import ConfigError

    for args, reason in (
        (["--record-max-bytes", "5"], "--record-max-bytes applies to --record DIR only"),
        (["--record", str(tmp_path / "r"), "--redact", "email", "--no-redact"], "contradict"),
        (["--no-drift", "--drift-window", "10"], "--drift-window applies to drift watching"),
    ):
        result = CliRunner().invoke(cli, ["serve", str(tmp_path), *args])
        # refused before anything loads (edgekit's main() prints it as one line with exit code 2)
        assert isinstance(result.exception, ConfigError), result.output
        assert reason in str(result.exception) and ConfigError.exit_code == 2
