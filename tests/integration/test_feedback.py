"""``edgekit convert --feedback DIR`` (issue 15, point 4): what the cloud answered in service, back
into the transfer set, and the report comparing the new bundle with the one in service.

Records are written by the real :class:`edgekit.runtime.recorder.Recorder`, as ``serve --record``
writes them. The transfer-set test stops convert right at distillation (fast); one real conversion
on the tiny classifier checks the report section end to end through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgekit.errors import ConfigError
from tests.conftest import convert_config, needs

convert_extra = needs("torch", "transformers", "accelerate", "onnxruntime", "onnx")
ANSWER = dict(edge_top_k=[("order_status", 0.41), ("refund_status", 0.22)], model_name="shop")


def record(directory: Path, rows, *, version: str = "v1", redact: bool = True) -> Path:
    """Write ``rows`` of (text, cloud label, cloud score) as ``edgekit serve --record`` does."""
    from edgekit.runtime.recorder import Recorder, RecorderSettings

    settings = RecorderSettings(directory=directory, **({} if redact else {"redact": frozenset()}))
    with Recorder(settings) as recorder:
        for text, label, score in rows:
            assert recorder.record(text, cloud_label=label, cloud_score=score, model_version=version, **ANSWER)
    return directory


# -- reading the records ---------------------------------------------------------------------------


def test_reads_what_the_recorder_wrote_and_tolerates_a_torn_tail(tmp_path):
    from edgekit.converters.feedback import read_feedback

    directory = record(tmp_path / "rec", [("where is my order 1234567", "order_status", 0.9),
                                          ("store hours?", "store_hours", 0.6)])
    (path,) = directory.glob("records-*.jsonl")
    with open(path, "ab") as f:
        f.write(b'{"text": "half a li')  # a crash mid-write: never acknowledged, skipped
    answers = read_feedback(directory)
    assert [(a.text, a.label, a.score, a.version) for a in answers] == [
        ("where is my order <NUMBER>", "order_status", 0.9, "v1"), ("store hours?", "store_hours", 0.6, "v1")]


@pytest.mark.parametrize("case, message", [
    ("missing", "no such directory"),
    ("file", "not a directory"),
    ("empty", "no record files"),
    ("only-torn", "hold no whole record"),
    ("garbage", "is not a record"),
    ("no-score", "cloud_score None is not a number"),
    ("no-label", "no cloud_label"),
])
def test_a_bad_feedback_dir_is_one_clear_config_error(tmp_path, case, message):
    from edgekit.converters.feedback import read_feedback

    directory = tmp_path / "rec"
    name = "records-20260101T000000Z-1-1.jsonl"
    good = json.dumps({"text": "hi", "cloud_label": "a", "cloud_score": 0.5})
    if case == "file":
        directory.write_text("x")
    elif case != "missing":
        directory.mkdir()
    lines = {"empty": None, "only-torn": '{"text": "h', "garbage": good + "\n{not json\n" + good + "\n",
             "no-score": json.dumps({"id": "r1", "text": "hi", "cloud_label": "a"}) + "\n",
             "no-label": json.dumps({"text": "hi", "cloud_score": 0.5}) + "\n"}.get(case)
    if lines is not None:
        (directory / name).write_text(lines)
    elif case == "empty":
        (directory / "notes.jsonl").write_text(good + "\n")  # not a record file name
    with pytest.raises(ConfigError, match=message) as info:
        read_feedback(directory)
    assert "\n" not in str(info.value) and str(directory) in str(info.value)


@convert_extra
def test_the_cli_refuses_a_bad_feedback_dir_in_one_line(tmp_path, capsys):
    from edgekit.cli import main

    args = ["convert", str(tmp_path / "model"), "--train", "t.jsonl", "--validation", "v.jsonl", "--test", "e.jsonl",
            "--targets", "onnx", "--out", str(tmp_path / "out")]
    for extra, expected in ((["--feedback", str(tmp_path / "nope")], f"--feedback {tmp_path / 'nope'}: no such"),
                            (["--feedback-weight", "2"], "--feedback-weight applies with --feedback DIR only")):
        with pytest.raises(SystemExit) as exit_info:
            main(args + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and err[0].startswith("Error: ") and expected in err[0], err
        assert len(err) == 1 or err[1].startswith("Hint: ")
        assert not (tmp_path / "out").exists()


# -- soft targets, deduplication, weights ----------------------------------------------------------


def test_soft_target_keeps_the_cloud_score_and_spreads_the_rest():
    from edgekit.converters.feedback import soft_target

    t = soft_target(2, 0.7, 4)
    assert t.sum() == pytest.approx(1) and t[2] == pytest.approx(0.7) and np.allclose(np.delete(t, 2), 0.1)
    assert soft_target(0, 0.1, 4)[0] == pytest.approx(0.25)  # the top answer has at least 1 / labels
    assert np.isfinite(np.log(soft_target(1, 1.0, 3))).all()  # a certain answer keeps some mass elsewhere


def _answers(rows):
    from edgekit.converters.feedback import CloudAnswer

    return [CloudAnswer(text, label, score, version) for text, label, score, version in rows]


def test_build_feedback_deduplicates_filters_and_weights():
    from edgekit.converters.feedback import build_feedback

    said = []
    answers = _answers([
        ("Where is my ORDER", "b", 0.8, "v1"), ("where is  my order", "b", 0.6, "v1"),  # one text, targets averaged
        ("a training text", "a", 0.9, "v1"), ("A test text", "a", 0.9, "v1"),  # left out
        ("new intent", "zzz", 0.9, "v2"), ("another new one", "zzz", 0.5, "v2"),  # label unknown: skipped
        ("my card <NUMBER> is blocked", "c", 0.5, "v2"),  # redacted: kept as recorded
    ])
    fb = build_feedback(answers, ["a", "b", "c"], directory=Path("rec"), weight=2.5,
                        training=["A training text"], held_out=["a test text"], seed=0, echo=said.append)
    assert fb.texts == ["Where is my ORDER", "my card <NUMBER> is blocked"]
    assert np.allclose(fb.targets[0], [0.15, 0.7, 0.15]) and np.allclose(fb.targets[1], [0.25, 0.25, 0.5])
    assert fb.counts == {"read": 7, "unknown_label": 2, "in_training": 1, "in_held_out": 1, "duplicates": 1, "used": 2}
    assert fb.versions == {"v1": 4, "v2": 3} and fb.unknown_labels == ["zzz"]
    assert len(said) == 1 and "skipped 2 of 7 records" in said[0] and "'zzz' (2)" in said[0]
    # weight 2.5: each text twice, and a seeded half of them a third time
    assert all(fb.copies.count(t) in (2, 3) for t in fb.texts) and len(fb.copies) in (4, 5, 6)
    once = build_feedback(answers, ["a", "b", "c"], directory=Path("rec"), training=["A training text"],
                          held_out=["a test text"], echo=said.append)
    assert once.copies == fb.texts  # the default weight, 1: each text once
    with pytest.raises(ConfigError, match="none of the 2 records can be used"):
        build_feedback(answers[4:6], ["a", "b", "c"], directory=Path("rec"))


def test_cloud_rate_for_accuracy_is_the_lowest_reachable_rate():
    from edgekit.converters.feedback import cloud_rate_for_accuracy
    from edgekit.metrics import cascade_at

    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 2)  # ties: a threshold cannot split them
    y = rng.integers(0, 3, 200)
    edge = np.where(rng.random(200) < scores, y, (y + 1) % 3)  # right more often when sure
    cloud = np.where(rng.random(200) < 0.9, y, (y + 2) % 3)
    for target in (0.5, 0.8, 0.85, 0.9):
        got = cloud_rate_for_accuracy(target, scores, edge, cloud, y)
        points = [cascade_at(t, scores, edge, cloud, y) for t in np.unique(np.concatenate([scores, [0.0, 1.01]]))]
        reachable = [rate for rate, acc in points if acc >= target - 1e-12]
        assert got == (min(reachable) if reachable else None), target


# -- the transfer set -------------------------------------------------------------------------------

class _Stop(Exception):
    pass


@convert_extra
def test_recorded_texts_reach_the_transfer_set_deduplicated_and_weighted(tmp_path, tiny_classifier, small_splits,
                                                                        monkeypatch):
    import edgekit.converters.training.distill as distill_module
    from edgekit.converters.feedback import FeedbackSettings, soft_target
    from edgekit.converters.pipeline import convert
    from edgekit.data import load_dataset

    train = load_dataset(small_splits["train"])
    config = json.loads((tiny_classifier / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    new = [f"hello, {train.texts[i]} thanks" for i in range(3)]
    directory = record(tmp_path / "rec", [
        (new[0], train.labels[0], 0.9), (new[0].upper(), train.labels[0], 0.7),  # the same text twice
        (new[1], train.labels[1], 0.8), (new[2], "not_a_label", 0.9),
        (train.texts[5], train.labels[5], 0.9),  # a training text: its gold label is there already
    ], redact=False)
    seen = {}

    def capture(student, tokenizer, transfer, *args, **kwargs):
        seen["transfer"] = transfer
        raise _Stop

    monkeypatch.setattr(distill_module, "distill", capture)
    said = []
    options = convert_config(tiny_classifier, small_splits, tmp_path / "out", epochs=1, augment=True,
                             prune_vocab=False)
    with pytest.raises(_Stop):
        convert(options, echo=said.append, feedback=FeedbackSettings(directory, weight=2.0))
    transfer = seen["transfer"]
    assert transfer.texts[: len(train)] == list(train.texts)  # labelled texts first, then KD-only
    assert [transfer.texts.count(t) for t in new] == [2, 2, 0]  # deduplicated, weight 2, unknown label skipped
    assert transfer.texts.count(train.texts[5]) == 1  # not added again
    rows = [i for i, t in enumerate(transfer.texts) if t in new]
    assert all(transfer.targets[i] == -100 for i in rows)  # KD-only
    for i in rows:  # the cloud's answers, not the teacher's: log soft targets (averaged over duplicates)
        label = train.labels[new.index(transfer.texts[i])]
        target = (soft_target(labels.index(label), 0.9, len(labels)) + soft_target(labels.index(label), 0.7,
                  len(labels))) / 2 if transfer.texts[i] == new[0] else soft_target(labels.index(label), 0.8,
                                                                                    len(labels))
        assert np.allclose(np.exp(transfer.teacher_logits[i]), target, atol=1e-6)
    assert len(transfer.texts) == 2 * len(train) + 4  # train, its perturbed copies, the weighted records
    assert any("skipped 1 of 5 records" in s and "'not_a_label'" in s for s in said)
    assert any(s.startswith("feedback: 5 records") and "2 texts used" in s and "4 enter the transfer set" in s
               for s in said)


# -- the report --------------------------------------------------------------------------------------


@convert_extra
def test_report_compares_the_new_bundle_with_the_one_in_service(tmp_path, tiny_classifier, small_splits):
    """A real convert through the CLI: --feedback with the baseline bundle that 'made' the records."""
    from click.testing import CliRunner

    from edgekit.cli.convert import command
    from edgekit.converters.pipeline import convert
    from edgekit.data import load_dataset
    from edgekit.manifest import Manifest

    cheap = dict(epochs=1, variants={"onnx": ["fp32"]}, augment=False, prune_vocab=False)
    baseline = convert(convert_config(tiny_classifier, small_splits, tmp_path / "v1", **cheap),
                       echo=lambda s: None).bundles[0]
    version = Manifest.load(baseline).version
    train = load_dataset(small_splits["train"])
    unique = dict(zip((t.lower() for t in train.texts), zip(train.texts, train.labels)))
    directory = record(tmp_path / "rec", [(f"um, {t}?", y, 0.8) for t, y in list(unique.values())[:30]],
                       version=version)
    out = tmp_path / "v2"
    args = [str(tiny_classifier), "--train", str(small_splits["train"]), "--validation", str(small_splits["validation"]),
            "--test", str(small_splits["test"]), "--targets", "onnx", "--variant", "onnx:fp32", "--epochs", "1",
            "--lr", "3e-3", "--batch-size", "16", "--student", "teacher-layers", "--student-layers", "1",
            "--no-augment", "--no-prune-vocab", "--max-accuracy-drop", "100", "--no-progress",
            "--feedback", str(directory), "--feedback-weight", "1.5", "--feedback-baseline", str(baseline),
            "--out", str(out)]
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    fb = json.loads((out / "report.json").read_text())["feedback"]
    assert fb["records"] == {"read": 30, "unknown_label": 0, "in_training": 0, "in_held_out": 0, "duplicates": 0,
                             "used": 30}
    assert fb["weight"] == 1.5 and 30 < fb["transfer_texts"] < 60 and fb["versions"] == {version: 30}
    assert fb["baseline"]["version"] == version and fb["baseline"]["records_it_asked"] == 30
    assert 0 <= fb["teacher_agreement_with_cloud"] <= 1 and fb["recorded_texts"] == 30
    assert [r["bundle"] for r in fb["comparison"]] == ["baseline", "onnx-fp32"]
    for row in fb["comparison"]:
        for key in ("agreement_with_cloud", "cloud_rate", "cascade_agreement"):
            assert 0 <= row["recorded"][key] <= 1, key
        for key in ("accuracy", "cloud_rate", "cascade_accuracy"):
            assert 0 <= row["test"][key] <= 1, key
    new_test = fb["comparison"][1]["test"]
    assert "cloud_rate_at_baseline_cascade" in new_test and "cloud_rate_at_baseline_cascade" in fb["comparison"][1]["recorded"]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert new_test["cloud_rate"] == pytest.approx(rows[1]["cloud_rate"])  # the report row's figure, same texts
    md = (out / "report.md").read_text()
    assert "## Feedback: what the cloud answered in service" in md and "| baseline |" in md and "| onnx-fp32 |" in md
    written = yaml.safe_load((out / "convert-config.yaml").read_text())  # the run can be repeated from it
    assert (written["feedback"], written["feedback_weight"], written["feedback_baseline"]) == (
        str(directory), 1.5, str(baseline))
    provenance = Manifest.load(out / "onnx-fp32").provenance["feedback"]
    assert provenance["texts"] == 30 and len(provenance["sha256"]) == 64
