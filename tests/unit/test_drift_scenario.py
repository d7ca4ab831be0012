"""benchmarks/drift.py (issue 15's drift scenario): the held-out split is deterministic and disjoint,
the replayed traffic holds exactly what each phase promises, and the verdict is read right."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from edgekit.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "drift.py"


@pytest.fixture(scope="module")
def drift():
    spec = importlib.util.spec_from_file_location("benchmarks_drift", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


LABELS = [f"intent_{i:02d}" for i in range(77)]


def _rows(labels, per_label, tag):
    return [{"text": f"{tag} {label} {k}", "label": label} for label in labels for k in range(per_label)]


def test_held_out_is_deterministic_sorted_and_a_subset(drift):
    first = drift.choose_held_out(LABELS, 8, seed=0)
    assert first == drift.choose_held_out(list(reversed(LABELS)), 8, seed=0)  # order of the input does not matter
    assert first == sorted(first) and len(set(first)) == 8 and set(first) <= set(LABELS)
    assert drift.choose_held_out(LABELS, 8, seed=1) != first
    # the ranking is by label, so a larger count extends the smaller one
    assert set(first) <= set(drift.choose_held_out(LABELS, 12, seed=0))


def test_held_out_pinned_value(drift):
    """sha256 ranking, not Python's random: the same intents on every machine and version."""
    import hashlib

    expected = sorted(sorted(LABELS, key=lambda label: hashlib.sha256(f"0:{label}".encode()).hexdigest())[:8])
    assert drift.choose_held_out(LABELS, 8, seed=0) == expected


def test_named_held_out_and_refusals(drift):
    assert drift.choose_held_out(LABELS, 8, named=["intent_05", "intent_01", "intent_05"]) == ["intent_01", "intent_05"]
    with pytest.raises(ConfigError, match="not a label"):
        drift.choose_held_out(LABELS, 8, named=["no_such_intent"])
    with pytest.raises(ConfigError, match="keep at least two"):
        drift.choose_held_out(LABELS[:3], 2)


def test_split_rows_is_a_disjoint_partition(drift):
    rows = _rows(LABELS, 3, "t")
    held = drift.choose_held_out(LABELS, 8)
    kept, out = drift.split_rows(rows, held)
    assert len(kept) + len(out) == len(rows)
    assert {r["label"] for r in out} == set(held)
    assert not {r["label"] for r in kept} & set(held)
    assert kept == [r for r in rows if r in kept]  # original order kept


def test_traffic_phases_and_share(drift):
    held = drift.choose_held_out(LABELS, 8)
    kept_test, held_test = drift.split_rows(_rows(LABELS, 40, "test"), held)
    traffic, reused = drift.build_traffic(kept_test, held_test, 2000, 1000, 0.3, seed=0)
    phase1 = [r for r in traffic if r.phase == 1]
    phase2 = [r for r in traffic if r.phase == 2]
    assert len(phase1) == 2000 and len(phase2) == 1000 and traffic[:2000] == phase1
    assert not any(r.held_out or r.label in held for r in phase1)
    assert sum(r.held_out for r in phase2) == 300
    assert all(r.held_out == (r.label in held) for r in phase2)
    # spread evenly: every prefix of phase 2 holds its share, to within one text
    for n in range(1, 1001):
        assert abs(sum(r.held_out for r in phase2[:n]) - 0.3 * n) <= 1
    # kept test texts are not repeated while the pool lasts (69 x 40 = 2760 >= 2700)
    kept_sent = [r.text for r in traffic if not r.held_out]
    assert len(set(kept_sent)) == len(kept_sent) and reused == {"kept_reused": 0, "held_out_reused": 0}
    assert drift.build_traffic(kept_test, held_test, 2000, 1000, 0.3, seed=0)[0] == traffic
    assert drift.build_traffic(kept_test, held_test, 2000, 1000, 0.3, seed=1)[0] != traffic


def test_traffic_reuses_an_exhausted_pool_and_counts_it(drift):
    traffic, reused = drift.build_traffic(_rows(["a", "b"], 5, "k"), _rows(["c"], 2, "h"), 8, 10, 1.0)
    assert [r.held_out for r in traffic] == [False] * 8 + [True] * 10
    assert reused == {"kept_reused": 0, "held_out_reused": 8}
    assert {r.text for r in traffic[8:]} == {"h c 0", "h c 1"}


def test_drift_started_line_and_first_alert(drift):
    line = ("09:41:02 WARNING edgekit.monitoring: event=drift_started signal=label psi=0.312 threshold=0.25 "
            "window_texts=1000")
    assert drift.parse_drift_started(line) == {"signal": "label", "psi": 0.312}
    assert drift.parse_drift_started("09:41:02 INFO edgekit.monitoring: event=drift_ended signal=label") is None
    timeline = [
        {"phase": 1, "in_phase": 50, "alert": {"label": False}},
        {"phase": 2, "in_phase": 50, "alert": {"label": False, "confidence": False}},
        {"phase": 2, "in_phase": 100, "alert": {"label": False, "confidence": True}},
        {"phase": 2, "in_phase": 150, "alert": {"label": True, "confidence": True}},
    ]
    assert drift.first_alert(timeline, 2) is timeline[2]
    assert drift.first_alert(timeline, 1) is None
