"""Drift monitoring: the PSI, the validation reference, the sliding window, drift episodes, thread
safety, and the Prometheus metrics fed from the monitor."""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edgekit.errors import ConfigError, ManifestError
from edgekit.monitoring import (
    EPSILON,
    SIGNALS,
    DriftMonitor,
    DriftSettings,
    Reference,
    build_reference,
    psi,
    psi_noise_floor,
)
from edgekit.runtime.monitor_metrics import register_monitor_metrics
from edgekit.runtime.types import Route

LABELS = ("track_order", "cancel_order", "get_refund")


def one_hot(rows: list[tuple[int, float]], n_labels: int = 3) -> np.ndarray:
    """Probabilities with the given (argmax, top probability) per row; the rest spread evenly."""
    probs = np.empty((len(rows), n_labels))
    for i, (j, top) in enumerate(rows):
        probs[i] = (1.0 - top) / (n_labels - 1)
        probs[i, j] = top
    return probs


def uniform_reference(n: int = 300, confidence: float = 0.95, length: int = 20) -> Reference:
    """Labels evenly spread, one confidence, one length: only the label signal can move."""
    probs = one_hot([(i % 3, confidence) for i in range(n)])
    return build_reference(probs, LABELS, [length] * n, threshold=0.6)


def feed(monitor: DriftMonitor, labels: list[str], confidence: float = 0.95, length: int = 20, batch: int = 1):
    for start in range(0, len(labels), batch):
        chunk = labels[start:start + batch]
        monitor.observe([confidence] * len(chunk), chunk, [length] * len(chunk), ["EDGE"] * len(chunk))


# -- PSI ---------------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero_and_of_disjoint_ones_is_large():
    assert psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0, abs=1e-12)
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)  # counts or shares: the same
    disjoint = psi([50, 50, 0, 0], [0, 0, 50, 50])
    assert disjoint > 10  # each side's mass sits where the other has only EPSILON
    assert disjoint == pytest.approx(2 * (1 - EPSILON) * math.log(0.5 / EPSILON), rel=1e-3)


def test_psi_matches_the_formula_on_a_known_shift():
    # (0.9 - 0.5) ln(0.9/0.5) + (0.1 - 0.5) ln(0.1/0.5)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5.0))
    assert 0.1 < psi([0.5, 0.5], [0.68, 0.32]) < 0.25  # a moderate shift by the usual reading


def test_psi_of_an_empty_side_is_zero_and_mismatched_bins_are_refused():
    assert psi([1, 2], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2], [1, 2, 3])


def test_the_noise_floor_predicts_the_psi_of_two_samples_of_one_distribution():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(20) * 5)
    n, m = 1000, 3000
    observed = np.mean([psi(rng.multinomial(m, p), rng.multinomial(n, p)) for _ in range(300)])
    assert observed == pytest.approx(psi_noise_floor(20, n, m), rel=0.2)


# -- the reference ------------------------------------------------------------------------------


def test_build_reference_bins_confidence_labels_and_lengths():
    probs = one_hot([(0, 0.96), (1, 0.5), (0, 1.0), (2, 0.34), (0, 0.05 + 0.9)])
    ref = build_reference(probs, LABELS, ["a" * 5, "a" * 10, "a" * 10, "a" * 40, "a" * 80], threshold=0.6,
                          confidence_bins=20, length_bins=2)
    assert ref.label_counts == (3, 1, 1)
    conf = [0] * 20
    for c in (0.96, 0.5, 1.0, 0.34, 0.95):
        conf[min(int(c * 20), 19)] += 1
    assert ref.confidence_counts == tuple(conf)
    assert ref.confidence_edges[[0, 1, -1]].tolist() == [0.0, 0.05, 1.0]
    assert ref.length_edges == (11,)  # the median, 10 characters, stays in the lower bin
    assert ref.length_counts == (3, 2)
    assert ref.expected_cloud_rate == pytest.approx(2 / 5)  # 0.5 and 0.34 are below 0.6
    assert ref.n_texts == 5
    assert build_reference(probs, LABELS, [5, 10, 10, 40, 80], 0.6, length_bins=2) == ref  # lengths or texts


def test_build_reference_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="shape"):
        build_reference(np.ones((2, 4)) / 4, LABELS, ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="1 texts for 2 rows"):
        build_reference(np.ones((2, 3)) / 3, LABELS, ["a"], 0.5)


def test_reference_round_trips_through_json():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    texts = ["x" * int(k) for k in rng.integers(3, 90, 200)]
    ref = build_reference(probs, LABELS, texts, threshold=0.7)
    again = Reference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again == ref
    assert again.to_dict() == ref.to_dict()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"colour": "red"}, "unknown fields: colour"),
        ({"label_counts": None}, "label_counts must be a list"),
        ({"label_counts": [1, 2]}, "2 label counts for 3 labels"),
        ({"length_counts": [100, 100, 100]}, "expected one more count than cut points"),
        ({"length_edges": [30, 20], "length_counts": [100, 100, 100]}, "increasing positive integers"),
        ({"confidence_counts": [1] * 19 + [-1]}, "non-negative integers"),
        ({"threshold": 1.5}, r"threshold must lie in \[0, 1\]"),
        ({"schema": 2}, "schema 2 is not supported"),
    ],
)
def test_an_invalid_reference_is_refused_with_a_reason(change, reason):
    data = uniform_reference().to_dict()
    data.update(change)
    with pytest.raises(ManifestError, match=reason):
        Reference.from_dict(data)


def test_a_reference_without_a_field_names_it():
    data = uniform_reference().to_dict()
    del data["length_edges"]
    with pytest.raises(ManifestError, match="missing: length_edges"):
        Reference.from_dict(data)


# -- the monitor --------------------------------------------------------------------------------


def test_traffic_like_validation_scores_zero_on_every_signal():
    """The monitor bins exactly as build_reference did: the validation texts themselves score 0."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(500, 3)) * 4
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[:3] = one_hot([(0, 1.0), (1, 0.95), (2, 0.5)])  # bin edges exactly
    lengths = rng.integers(1, 200, 500).tolist()
    ref = build_reference(probs, LABELS, lengths, threshold=0.8)
    monitor = DriftMonitor(ref, DriftSettings(window=500))
    monitor.observe(probs.max(axis=1).tolist(), [LABELS[j] for j in probs.argmax(axis=1)], lengths, ["EDGE"] * 500)
    assert monitor.scores() == dict.fromkeys(SIGNALS, 0.0)
    state = monitor.state()
    assert state.judged and not any(state.drifting.values())
    assert state.window_cloud_rate == pytest.approx(ref.expected_cloud_rate)


def test_the_window_slides_old_traffic_leaves():
    ref = uniform_reference()
    monitor = DriftMonitor(ref, DriftSettings(window=100))
    feed(monitor, ["track_order"] * 100, batch=7)
    assert monitor.scores()["label"] == pytest.approx(psi(ref.label_counts, [100, 0, 0]))
    feed(monitor, ["get_refund"] * 60, batch=9)
    assert monitor.scores()["label"] == pytest.approx(psi(ref.label_counts, [40, 0, 60]))
    feed(monitor, ["get_refund"] * 40)
    assert monitor.scores()["label"] == pytest.approx(psi(ref.label_counts, [0, 0, 100]))  # nothing old is left
    assert monitor.state().window_texts == 100


def test_a_drift_episode_logs_one_warning_and_its_end_one_info_line(caplog):
    caplog.set_level(logging.INFO, logger="edgekit.monitoring")
    monitor = DriftMonitor(uniform_reference(), DriftSettings(window=60, check_every=1))
    feed(monitor, list(LABELS) * 20)  # like the reference: no episode
    feed(monitor, ["track_order"] * 300)  # 300 requests of drifted traffic
    state = monitor.state()
    assert state.drifting == {"confidence": False, "label": True, "length": False}
    started = [r for r in caplog.records if "event=drift_started" in r.getMessage()]
    assert len(started) == 1 and started[0].levelno == logging.WARNING
    assert "signal=label" in started[0].getMessage()

    feed(monitor, list(LABELS) * 40)  # back to normal
    ended = [r for r in caplog.records if "event=drift_ended" in r.getMessage()]
    assert len(ended) == 1 and ended[0].levelno == logging.INFO
    assert not monitor.state().drifting["label"]

    feed(monitor, ["get_refund"] * 200)  # a second episode: a second warning
    assert len([r for r in caplog.records if "event=drift_started" in r.getMessage()]) == 2


def test_no_verdict_before_the_window_holds_min_texts(caplog):
    monitor = DriftMonitor(uniform_reference(), DriftSettings(window=100, min_texts=80, check_every=1))
    feed(monitor, ["track_order"] * 79)
    state = monitor.state()
    assert state.scores["label"] > 1 and not state.judged and not state.drifting["label"]
    assert "drift_started" not in caplog.text
    feed(monitor, ["track_order"])
    assert monitor.state().drifting["label"]


def test_hysteresis_keeps_an_episode_open_between_clear_below_and_the_threshold():
    ref = uniform_reference(3000)
    monitor = DriftMonitor(ref, DriftSettings(window=300, threshold=0.25, clear_below=0.05, check_every=1))
    feed(monitor, ["track_order"] * 300)
    assert monitor.state().drifting["label"]
    mild = ["track_order"] * 150 + ["cancel_order"] * 75 + ["get_refund"] * 75  # PSI about 0.14
    feed(monitor, mild)
    assert 0.05 < monitor.scores()["label"] < 0.25
    assert monitor.state().drifting["label"]


def test_observe_returns_a_state_every_check_every_texts():
    monitor = DriftMonitor(uniform_reference(), DriftSettings(window=100, check_every=10))
    results = [monitor.observe([0.95] * 3, ["get_refund"] * 3, [20] * 3, ["EDGE"] * 3) for _ in range(8)]
    assert [r is not None for r in results] == [False, False, False, True, False, False, False, True]
    assert results[3].window_texts == 12


def test_cloud_agreement_is_counted_per_edge_label_where_the_cloud_answered():
    monitor = DriftMonitor(uniform_reference())
    monitor.observe(
        [0.4, 0.4, 0.4, 0.99], ["track_order", "track_order", "get_refund", "get_refund"], [20] * 4,
        ["CLOUD", "CLOUD", "CLOUD", "EDGE"], ["track_order", "cancel_order", "get_refund", None],
    )
    assert monitor.agreement() == {"track_order": (1, 2), "cancel_order": (0, 0), "get_refund": (1, 1)}
    snapshot = monitor.snapshot()
    assert snapshot["agreement"] == {"track_order": {"agreed": 1, "answered": 2},
                                     "get_refund": {"agreed": 1, "answered": 1}}
    assert snapshot["routes"] == {"CLOUD": 3, "EDGE": 1}
    assert snapshot["window_cloud_rate"] == pytest.approx(0.75)
    json.dumps(snapshot)  # JSON-able for GetModelInfo


def test_observe_refuses_unknown_labels_and_ragged_batches():
    monitor = DriftMonitor(uniform_reference())
    with pytest.raises(ValueError, match="'buy_shoes' is not one of the reference's labels"):
        monitor.observe([0.9], ["buy_shoes"], [10], ["EDGE"])
    with pytest.raises(ValueError, match="one confidence, label, length, route"):
        monitor.observe([0.9, 0.8], ["get_refund"], [10], ["EDGE"])
    assert monitor.state().window_texts == 0  # a refused batch leaves nothing behind


def test_several_threads_observing_leave_exact_counts():
    """Each thread sends its own label, so a slot of the ring written twice (or a lost count)
    changes the label mix; without the lock this test fails (checked by removing it)."""
    ref = uniform_reference()
    threads, calls = 8, 3000
    monitor = DriftMonitor(ref, DriftSettings(window=threads * calls * 3, check_every=7))

    def send(label: str) -> None:
        for _ in range(calls):
            monitor.observe([0.95, 0.5, 0.3], [label] * 3, [20] * 3, ["EDGE", "CLOUD", "CLOUD"],
                            [None, label, "get_refund"])

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave as often as the interpreter allows
    try:
        workers = [threading.Thread(target=send, args=(LABELS[t % 3],)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(switch)
    senders = [sum(1 for t in range(threads) if t % 3 == j) for j in range(3)]  # 3, 3 and 2 threads
    state = monitor.state()
    assert state.window_texts == threads * calls * 3
    assert monitor.scores()["label"] == pytest.approx(psi(ref.label_counts, [3 * calls * k for k in senders]),
                                                      rel=1e-12)
    assert monitor.agreement() == {
        "track_order": (calls * senders[0], 2 * calls * senders[0]),
        "cancel_order": (calls * senders[1], 2 * calls * senders[1]),
        "get_refund": (2 * calls * senders[2], 2 * calls * senders[2]),
    }
    assert monitor.snapshot()["routes"] == {"EDGE": threads * calls, "CLOUD": 2 * threads * calls}
    assert state.window_cloud_rate == pytest.approx(2 / 3)


def test_a_small_window_for_many_labels_is_warned_about(caplog):
    probs = np.eye(77)[np.arange(770) % 77]
    ref = build_reference(probs, [f"intent_{i}" for i in range(77)], [20] * 770, threshold=0.5)
    DriftMonitor(ref, DriftSettings(window=200))  # noise floor 76 x (1/200 + 1/770) = 0.48
    assert "event=drift_window_small signal=label" in caplog.text
    caplog.clear()
    DriftMonitor(ref, DriftSettings(window=3000))  # 76 x (1/3000 + 1/770) = 0.12
    assert "drift_window_small" not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"window": 0}, "window must be at least 1"),
        ({"threshold": 0}, "threshold must be positive"),
        ({"window": 10, "min_texts": 11}, r"min_texts must lie in \[1, window=10\]"),
        ({"check_every": 0}, "check_every must be at least 1"),
        ({"threshold": 0.2, "clear_below": 0.3}, "clear_below must lie in"),
    ],
)
def test_bad_drift_settings_are_config_errors(kwargs, reason):
    with pytest.raises(ConfigError, match=reason):
        DriftSettings(**kwargs)


def test_drift_settings_defaults():
    settings = DriftSettings()
    assert (settings.window, settings.threshold, settings.min_texts, settings.check_every) == (1000, 0.25, 1000, 50)
    assert settings.clear_below == pytest.approx(0.2)


# -- Prometheus metrics -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answered:
    """What the data plane's predictions carry (edge_label: the field the wiring adds)."""

    label: str
    route: Route
    edge_label: str
    edge_score: float


def test_metrics_follow_the_monitor():
    registry = CollectorRegistry()
    monitor = DriftMonitor(uniform_reference(), DriftSettings(window=20, check_every=5))
    metrics = register_monitor_metrics(registry, monitor)

    def value(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    assert value("edgekit_reference_cloud_rate") == 0.0
    assert value("edgekit_drift_alert", signal="label") == 0.0
    texts = ["where is it", "I changed my mind", "money back"]
    answers = [
        Answered("track_order", Route.EDGE, "track_order", 0.97),
        Answered("cancel_order", Route.CLOUD, "track_order", 0.4),
        Answered("get_refund", Route.CLOUD, "get_refund", 0.45),
    ]
    for _ in range(8):
        metrics.observe_predictions(texts, answers)
    assert value("edgekit_confidence_count") == 24
    assert value("edgekit_confidence_bucket", le="0.5") == 16
    assert value("edgekit_predicted_label_total", label="track_order") == 16
    assert value("edgekit_cloud_agreement_total", label="track_order", agreed="false") == 8
    assert value("edgekit_cloud_agreement_total", label="get_refund", agreed="true") == 8
    assert value("edgekit_drift_window_texts") == 20
    assert value("edgekit_drift_score", signal="label") == pytest.approx(monitor.scores()["label"], abs=0.2)
    assert value("edgekit_drift_score", signal="confidence") > 0.25
    assert value("edgekit_drift_alert", signal="confidence") == 1.0

    fresh = DriftMonitor(uniform_reference(confidence=0.45), DriftSettings(window=20))
    metrics.watch(fresh)  # a hot reload: the new bundle's reference, an empty window
    assert value("edgekit_reference_cloud_rate") == 1.0
    assert value("edgekit_drift_window_texts") == 0
    assert value("edgekit_drift_alert", signal="confidence") == 0.0
    assert value("edgekit_predicted_label_total", label="track_order") == 16  # counters keep counting


@pytest.mark.parametrize("module", ["edgekit.monitoring", "edgekit.runtime.monitor_metrics"])
def test_all_is_sorted_and_real(module):
    mod = importlib.import_module(module)
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name), name
