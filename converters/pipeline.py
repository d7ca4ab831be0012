"""``edgekit convert``: teacher → distilled student → artifacts per format → gated, calibrated bundles.

Steps: load and check data and teacher; distil; prune the vocabulary; export every variant of
every target; load each artifact with the *runtime* backend (what the device will run) and
measure accuracy, agreement and latency; calibrate; choose per format; gate on accuracy; write
bundles and the report. Everything is built in a temporary directory and moved into place at
the end, so a failed or interrupted run leaves no half bundle. With ``feedback`` (``--feedback
DIR``) what the cloud answered in service joins the transfer set and the report compares the new
bundles with the one in service (:mod:`edgekit.converters.feedback`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.config import ConvertConfig
from edgekit.data import Dataset, load_dataset, load_splits
from edgekit.errors import AccuracyGateError, ModelError
from edgekit.manifest import Calibration, Manifest, atomic_write_text, sha256_file
from edgekit.metrics import classification_metrics, softmax
from edgekit.timing import StageTimer

__all__ = ["Candidate", "ConvertResult", "Run", "Splits", "Teacher", "choose_lengths", "convert"]

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    format: str
    variant: str
    precision: str
    directory: Path
    model_files: list[str]
    buckets: list[int]
    details: dict
    size_bytes: int
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: Any = None
    reference: Any = None  # edgekit.monitoring.Reference: normal traffic, on validation
    risk_coverage: list[dict] = field(default_factory=list)
    status: str = "rejected"  # written | rejected | not-selected
    reason: str = ""
    test_answers: Any = None  # edgekit.converters.feedback.Answers on the test split (calibrated)

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"


@dataclass
class ConvertResult:
    out: Path
    bundles: list[Path]
    rows: list[dict]
    teacher: dict


def choose_lengths(lengths: list[int], max_length: int | None, buckets: tuple[int, ...] | None):
    """max_length: the smallest of 32/64/128 covering the 99th percentile; buckets 16, 32, ... up to it."""
    p99 = int(np.percentile(lengths, 99)) if lengths else 16
    if max_length is None:
        max_length = next((n for n in (32, 64, 128) if n >= p99), 128)
    if buckets is None:
        buckets = tuple(n for n in (16, 32, 64, 128, 256, 512) if n < max_length) + (max_length,)
    buckets = tuple(sorted(b for b in buckets if b <= max_length)) or (max_length,)
    return max_length, buckets, p99


def _targets(config: ConvertConfig) -> list[str]:
    """The formats to convert to (every default format when none is given), each checked installable."""
    from edgekit.deps import require
    from edgekit.converters.exporters import load_formats

    formats = load_formats()
    names = config.targets or [n for n in formats if formats.get(n).default_target]
    targets = list(dict.fromkeys(formats.canonical(t) for t in names))
    require("torch", "transformers", "accelerate", extra="convert", what="edgekit convert")
    for target in targets:
        spec = formats.get(target)
        require(*spec.requires, extra=spec.extra, what=f"the {target} target")
    return targets


def _dir_size(directory: Path, files: list[str]) -> int:
    return sum((directory / f).stat().st_size for f in files)


@dataclass
class Splits:
    """The data of one conversion, its label ids and the lengths chosen from it."""

    train: Dataset
    val: Dataset
    test: Dataset
    unlabeled: Dataset | None
    labels: list[str]
    y_val: np.ndarray
    y_test: np.ndarray
    max_length: int
    buckets: tuple[int, ...]


@dataclass
class Teacher:
    """The cloud model and its answers on validation and test (from the cache when present)."""

    model: Any
    tokenizer: Any
    sha256: dict[str, str]  # weight file -> sha256 (provenance, cache key)
    val_logits: np.ndarray
    test_logits: np.ndarray
    row: dict[str, Any]  # its report row

    @property
    def val_pred(self) -> np.ndarray:
        return self.val_logits.argmax(-1)

    @property
    def test_pred(self) -> np.ndarray:
        return self.test_logits.argmax(-1)


@dataclass
class Run:
    """What every stage of one conversion reads: options, data, teacher, scratch directory, output."""

    config: ConvertConfig
    data: Splits
    teacher: Teacher
    work: Path
    echo: Callable[[str], None]
    timer: StageTimer
    feedback: Any = None  # edgekit.converters.feedback.FeedbackSet (--feedback DIR): in data.unlabeled too
    feedback_report: dict[str, Any] | None = None  # its report section, once the bundles are compared

    def teacher_logits(self, texts, note, pooled: bool = False):
        """The teacher's outputs for the transfer set; the recorded texts' rows hold the cloud's answers."""
        def score(some):
            return _score_with_teacher(self.config, self.data, self.teacher, some, note, pooled)

        return score(texts) if self.feedback is None else self.feedback.teacher_outputs(texts, score)


def _score_with_teacher(config: ConvertConfig, data: Splits, teacher: Teacher, texts, note, pooled: bool = False):
    """The teacher's logits (and pooled features) for ``texts``: cached on disk by weights + texts."""
    from edgekit.converters.training.teacher_cache import teacher_outputs

    out = teacher_outputs(teacher.model, teacher.tokenizer, list(texts), max_length=data.max_length,
                          weights_sha256=teacher.sha256, pooled=pooled, use_cache=config.teacher_cache)
    note("cached" if out.cached else "computed")
    return out


def _load_splits(config: ConvertConfig, teacher_tokenizer, labels: list[str], echo) -> Splits:
    from edgekit.converters.evaluate import label_ids

    train, val, test = load_splits(
        config.train, config.validation, config.test, text_field=config.text_field, label_field=config.label_field
    )
    unlabeled = load_dataset(config.unlabeled, text_field=config.text_field, label_field=None) if config.unlabeled else None
    extra = sorted(set(train.labels) - set(labels))
    if extra:
        raise ModelError(
            f"{config.train}: labels {', '.join(map(repr, extra[:5]))} are not labels of the model in "
            f"{config.model_dir} ({len(labels)} labels: {', '.join(labels[:5])}, ...)"
        )
    lengths = [len(ids) for ids in teacher_tokenizer(list(train.texts))["input_ids"]]
    max_length, buckets, p99 = choose_lengths(lengths, config.max_length, config.buckets)
    echo(f"data: {len(train)} train / {len(val)} validation / {len(test)} test texts, {len(labels)} labels; "
         f"99th-percentile length {p99} tokens → max_length {max_length}, buckets {list(buckets)}")
    return Splits(train, val, test, unlabeled, labels, label_ids(val, labels), label_ids(test, labels),
                  max_length, buckets)


def _load_teacher(config: ConvertConfig, echo, timer: StageTimer) -> tuple[Teacher, Splits]:
    from edgekit.converters.evaluate import load_classifier_dir

    model, tokenizer, labels = load_classifier_dir(config.model_dir)
    data = _load_splits(config, tokenizer, labels, echo)
    files = [p for p in Path(config.model_dir).iterdir() if p.suffix in (".safetensors", ".bin")]
    teacher = Teacher(model, tokenizer, {p.name: sha256_file(p) for p in files}, np.zeros(0), np.zeros(0), {})
    with timer.stage("teacher scoring (validation, test)") as note:
        teacher.val_logits = _score_with_teacher(config, data, teacher, data.val.texts, note).logits
        teacher.test_logits = _score_with_teacher(config, data, teacher, data.test.texts, note).logits
    teacher.row = {
        "artifact": "teacher", "format": "torch", "precision": "fp32", "variant": "fp32",
        "size_bytes": sum(p.stat().st_size for p in files),
        **classification_metrics(teacher.test_logits, data.y_test, teacher_pred=teacher.test_pred),
        "threshold": None, "cloud_rate": 0.0, "cascade_accuracy": None, "status": "teacher",
    }
    teacher.row["cascade_accuracy"] = teacher.row["accuracy"]
    echo(f"teacher: test accuracy {teacher.row['accuracy']:.4f}, size {teacher.row['size_bytes'] / 1e6:.1f} MB")
    return teacher, data


def convert(config: ConvertConfig, echo: Callable[[str], None] = print, *, feedback=None) -> ConvertResult:
    """``feedback``: :class:`edgekit.converters.feedback.FeedbackSettings` (``--feedback DIR``); None:
    the config's ``feedback`` options, if any."""
    if feedback is None and config.feedback is not None:
        from edgekit.converters.feedback import FeedbackSettings

        feedback = FeedbackSettings(config.feedback, config.feedback_weight, config.feedback_baseline)
    from edgekit.converters.training.student import make_student

    targets = _targets(config)
    answers = _read_feedback(feedback)  # before anything slow: a bad --feedback DIR fails at once
    timer = StageTimer(echo)
    teacher, data = _load_teacher(config, echo, timer)
    recorded = _add_feedback(config, data, feedback, answers, echo) if feedback is not None else None
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgekit-convert-", dir=out) as tmp:
        run = Run(config, data, teacher, Path(tmp), echo, timer, feedback=recorded)
        student_dir, student_info = make_student(run)
        teacher.model = None  # the student is trained: the teacher's weights are not needed any more
        candidates = _export_all(run, targets, student_dir)
        failures = _select(candidates, teacher.row["accuracy"], config)
        if recorded is not None:
            with timer.stage("feedback comparison"):
                run.feedback_report = _compare_feedback(run, feedback, candidates)
        rows = _write_outputs(run, out, candidates, student_info)
    echo(timer.summary())
    if failures and config.allow_accuracy_drop:
        echo("warning: written although below the accuracy gate (--allow-accuracy-drop): " + "; ".join(failures))
    elif failures:
        raise AccuracyGateError(
            "accuracy gate failed: " + "; ".join(failures)
            + f" (teacher {teacher.row['accuracy']:.4f}, allowed drop {config.max_accuracy_drop} points)",
            hint="see report.md; --allow-accuracy-drop writes them anyway",
        )
    bundles = [out / c.name for c in candidates if c.status == "written"]
    return ConvertResult(out, bundles, rows, teacher.row)


def _read_feedback(feedback) -> list | None:
    """The recorded cloud answers of ``--feedback DIR``, and the baseline bundle checked (ConfigError if bad)."""
    if feedback is None:
        return None
    from edgekit.converters.feedback import check_baseline, read_feedback

    if feedback.baseline is not None:
        check_baseline(feedback.baseline)
    return read_feedback(feedback.directory)


def _add_feedback(config: ConvertConfig, data: Splits, feedback, answers: list, echo):
    """The recorded texts, deduplicated and weighted, added to the transfer set (as KD-only texts)."""
    from edgekit.converters.feedback import build_feedback, check_baseline

    if feedback.baseline is not None:
        check_baseline(feedback.baseline, data.labels)
    recorded = build_feedback(answers, data.labels, directory=feedback.directory, weight=feedback.weight,
                              training=data.train.texts, held_out=data.val.texts + data.test.texts,
                              seed=config.seed, echo=echo)
    c = recorded.counts
    echo(f"feedback: {c['read']} records in {feedback.directory}; {c['used']} texts used ({c['duplicates']} "
         f"duplicates merged, {c['in_training']} training and {c['in_held_out']} validation/test texts left out, "
         f"{c['unknown_label']} with unknown labels skipped); {len(recorded.copies)} enter the transfer set "
         f"(weight {feedback.weight:g}) with the cloud's answers as soft targets")
    user = list(data.unlabeled.texts) if data.unlabeled is not None else []
    source = f"{data.unlabeled.source} + " if data.unlabeled is not None else ""
    data.unlabeled = Dataset(tuple(user + recorded.copies), (), f"{source}feedback {feedback.directory}")
    return recorded


def _compare_feedback(run: Run, feedback, candidates: list[Candidate]) -> dict[str, Any]:
    """The report's feedback section: what was read and used, and the new bundles against the baseline."""
    from edgekit.converters.feedback import bundle_answers, check_baseline, compare_bundles

    recorded, data = run.feedback, run.data
    new = {c.name: (bundle_answers(c.directory, recorded.texts, data.labels, temperature=c.calibration.temperature,
                                   threshold=c.calibration.threshold), c.test_answers)
           for c in candidates if c.status == "written"}
    section = recorded.summary()
    baseline = None
    if feedback.baseline is not None:
        manifest = check_baseline(feedback.baseline, data.labels)
        baseline = (bundle_answers(feedback.baseline, recorded.texts, data.labels),
                    bundle_answers(feedback.baseline, data.test.texts, data.labels))
        asked = recorded.versions.get(manifest.version, 0)
        section["baseline"] = {"bundle": str(Path(feedback.baseline).resolve()), "name": manifest.name,
                               "version": manifest.version, "records_it_asked": asked}
        if not asked:
            run.echo(f"warning: none of the records came from the baseline's version {manifest.version} "
                     f"(records from {', '.join(sorted(recorded.versions))}): is {feedback.baseline} the bundle "
                     "in service?")
    section["recorded_texts"] = len(recorded.texts)
    section["comparison"] = compare_bundles(recorded, new, baseline, teacher_test_pred=run.teacher.test_pred,
                                            y_test=data.y_test)
    return section


def _write_outputs(run: Run, out: Path, candidates: list[Candidate], student_info: dict) -> list[dict]:
    """Bundles, report.json/md and the settings used; returns the report rows."""
    from edgekit.converters.report import write_report

    data, teacher = run.data, run.teacher
    provenance = {
        "teacher": str(Path(run.config.model_dir).resolve()),
        "teacher_sha256": teacher.sha256,
        "data": {"train": data.train.fingerprint(), "validation": data.val.fingerprint(),
                 "test": data.test.fingerprint()},
        "student": student_info,
        **({"feedback": _feedback_provenance(run.feedback)} if run.feedback is not None else {}),
        "edgekit": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    rows = [teacher.row] + [_row(c) for c in candidates]
    for c in candidates:
        if c.status == "written":
            _write_bundle(c, out, data.labels, data.max_length, provenance, teacher.row)
    stages = {name: {"seconds": sec, "notes": sorted(set(run.timer.notes.get(name, [])))}
              for name, sec in run.timer.seconds.items()}
    write_report(out, rows, candidates, teacher.row, student_info, stages, feedback=run.feedback_report)
    atomic_write_text(out / "convert-config.yaml", run.config.to_yaml())
    return rows


def _feedback_provenance(recorded) -> dict[str, Any]:
    """Which records a bundle learned from: where, how many, a hash of the texts and targets used."""
    import hashlib

    digest = hashlib.sha256()
    for text, target in zip(recorded.texts, recorded.targets):
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x00" + np.round(target, 6).tobytes())
    return {"directory": str(recorded.directory.resolve()), "records": recorded.counts["read"],
            "texts": len(recorded.texts), "weight": recorded.weight, "sha256": digest.hexdigest(),
            "versions": recorded.versions}


def _export_all(run: Run, targets: list[str], student_dir: Path) -> list[Candidate]:
    """Every variant of every target, exported and measured through the runtime that will serve it."""
    from edgekit.converters import native_stderr_captured
    from edgekit.converters.classifier import pooling_of
    from edgekit.converters.exporters import get_exporter
    from edgekit.converters.exporters.inputs import export_inputs_for
    from tqdm.auto import tqdm

    config, data = run.config, run.data
    rng = np.random.default_rng(config.seed)
    calib_texts = [data.train.texts[i] for i in rng.permutation(len(data.train))[:300]]
    inputs = export_inputs_for(student_dir, max_length=data.max_length, buckets=data.buckets,
                               calibration_texts=calib_texts)
    # one exporter per format: the TFLite one converts fp32 once and quantizes every variant from it
    exporters = {fmt: get_exporter(fmt) for fmt in targets}
    plan = [(fmt, v) for fmt in targets for v in (config.variants.get(fmt) or exporters[fmt].variants())]
    pooling = pooling_of(student_dir) or "cls"
    candidates = []
    for fmt, variant in tqdm(plan, desc="export", disable=None if config.progress else True):
        with run.timer.stage(f"export {fmt}/{variant}"), native_stderr_captured():
            art = exporters[fmt].export(inputs, variant, run.work / "artifacts" / fmt / variant)
        with run.timer.stage(f"measure {fmt}/{variant}"), native_stderr_captured():
            shutil.copy(student_dir / "tokenizer.json", art.directory / "tokenizer.json")
            Manifest(format=fmt, precision=art.precision, labels=data.labels, model_files=art.model_files,
                     max_length=data.max_length, buckets=art.buckets, pooling=pooling).save(art.directory)
            c = _measure(run, art)
        run.echo(f"  {fmt}/{variant}: accuracy {c.metrics['accuracy']:.4f}, agreement {c.metrics['agreement']:.4f}, "
                 f"{c.size_bytes / 1e6:.1f} MB, {c.metrics['latency_ms_p50']:.2f} ms/text; cascade "
                 f"{c.metrics['cascade_accuracy']:.4f} at {c.metrics['cloud_rate']:.1%} cloud")
        candidates.append(c)
    return candidates


def _measure(run: Run, art) -> Candidate:
    """Accuracy, latency, calibration and cascade of one artifact, loaded by its runtime backend."""
    from edgekit.converters.calibrate import calibrate, cascade_at, risk_coverage
    from edgekit.converters.feedback import Answers
    from edgekit.converters.measure import batched_logits, latency_ms
    from edgekit.monitoring import build_reference
    from edgekit.runtime.model import load_bundle_model

    config, data, teacher = run.config, run.data, run.teacher
    # accuracy with every core and batches of similar length (the slowest part of convert after the
    # distillation); the latency at batch 1 on one thread, as the report states it
    model = load_bundle_model(art.directory, threads=os.cpu_count() or 1)
    try:
        v_logits = batched_logits(model, data.val.texts, by_length=True)
        t_logits = batched_logits(model, data.test.texts, by_length=True)
    finally:
        model.close()
    model = load_bundle_model(art.directory, threads=1, verify=False)
    try:
        speed = latency_ms(model, list(data.test.texts[: config.latency_texts]))
    finally:
        model.close()
    cal = calibrate(v_logits, data.y_val, teacher.val_pred, tolerance=config.cascade_tolerance / 100,
                    max_cloud_rate=config.max_cloud_rate)
    probs = softmax(t_logits, cal.temperature)
    scores, pred = probs.max(-1), probs.argmax(-1)
    cloud_rate, cascade = cascade_at(cal.threshold, scores, pred, teacher.test_pred, data.y_test)
    c = Candidate(art.format, art.variant, art.precision, art.directory, art.model_files, art.buckets, art.details,
                  _dir_size(art.directory, art.model_files), calibration=cal,
                  reference=build_reference(softmax(v_logits, cal.temperature), data.labels, data.val.texts,
                                            cal.threshold),
                  risk_coverage=risk_coverage(scores, pred, teacher.test_pred, data.y_test),
                  test_answers=Answers(scores, pred, cal.threshold))
    c.metrics = {**classification_metrics(t_logits, data.y_test, teacher_pred=teacher.test_pred), **speed,
                 "threshold": cal.threshold, "temperature": cal.temperature, "cloud_rate": cloud_rate,
                 "cascade_accuracy": cascade, "ece_before": cal.ece_before, "ece_after": cal.ece_after}
    return c


NEAR_BEST = 0.003  # accuracy (0.3 points): when no variant passes the gate, variants this close count as equal


def _select(candidates: list[Candidate], teacher_accuracy: float, config: ConvertConfig) -> list[str]:
    """Mark what is written; return the gate failures (empty when everything needed passed)."""
    failures = []
    for c in candidates:
        c.metrics["accuracy_drop_points"] = (teacher_accuracy - c.metrics["accuracy"]) * 100
        c.metrics["passed_gate"] = c.metrics["accuracy_drop_points"] <= config.max_accuracy_drop + 1e-9
        c.status, c.reason = "not-selected", ""
        if not c.metrics["passed_gate"]:
            c.status, c.reason = "rejected", f"{c.metrics['accuracy_drop_points']:.2f} points below the teacher"
    for fmt in dict.fromkeys(c.format for c in candidates):
        for precision in dict.fromkeys(c.precision for c in candidates if c.format == fmt):
            group = [c for c in candidates if c.format == fmt and c.precision == precision]
            passing = [c for c in group if c.metrics["passed_gate"]]
            if passing:  # the fastest that passes; ties to the more accurate
                best = min(passing, key=lambda c: (round(c.metrics["latency_ms_p50"], 2), -c.metrics["accuracy"]))
            else:
                # none passes: the fastest of those within NEAR_BEST of the most accurate (the most
                # accurate alone could be three times slower for 0.03 points)
                top = max(c.metrics["accuracy"] for c in group)
                near = [c for c in group if c.metrics["accuracy"] >= top - NEAR_BEST - 1e-12]
                best = min(near, key=lambda c: (round(c.metrics["latency_ms_p50"], 2), -c.metrics["accuracy"]))
                failures.append(f"{fmt}-{precision} ({best.variant}: {best.reason})")
                if not config.allow_accuracy_drop:
                    continue
                best.reason += " (written: --allow-accuracy-drop)"
            best.status = "written"
        fp32 = next((c for c in candidates if c.format == fmt and c.precision == "fp32" and c.status == "written"), None)
        for c in candidates:
            if fp32 and c.format == fmt and c.status == "written" and c is not fp32:
                if c.metrics["latency_ms_p50"] > fp32.metrics["latency_ms_p50"]:
                    c.reason = (f"slower than fp32 on this CPU ({c.metrics['latency_ms_p50']:.2f} vs "
                                f"{fp32.metrics['latency_ms_p50']:.2f} ms); the fp32 bundle is kept too")
    return failures


def _row(c: Candidate) -> dict:
    keep = ("accuracy", "macro_f1", "agreement", "threshold", "temperature", "cloud_rate", "cascade_accuracy",
            "ece_before", "ece_after", "latency_ms_p50", "latency_ms_p90", "accuracy_drop_points")
    return {"artifact": c.name if c.status == "written" else f"{c.format}-{c.variant}", "format": c.format,
            "precision": c.precision, "variant": c.variant, "size_bytes": c.size_bytes,
            **{k: c.metrics.get(k) for k in keep}, "status": c.status, "reason": c.reason}


def _write_bundle(c: Candidate, out: Path, labels, max_length, provenance, teacher_row) -> Path:
    from edgekit.atomic import building_dir
    from edgekit.device import device_record, library_versions

    final = out / c.name
    with building_dir(final) as tmp:
        for name in [*c.model_files, "tokenizer.json"]:
            shutil.copy2(c.directory / name, tmp / name)
        metrics = {k: v for k, v in c.metrics.items() if isinstance(v, (int, float, bool)) and not
                   (isinstance(v, float) and math.isnan(v))}
        metrics.update(size_bytes=c.size_bytes, variant=c.variant, teacher_accuracy=teacher_row["accuracy"],
                       teacher_size_bytes=teacher_row["size_bytes"], risk_coverage=c.risk_coverage)
        manifest = Manifest(
            format=c.format, precision=c.precision, labels=list(labels), model_files=c.model_files,
            max_length=max_length, buckets=c.buckets, pooling=provenance["student"].get("pooling", "cls"),
            name=f"{Path(provenance['teacher']).name}-{c.name}",
            version=sha256_file(tmp / c.model_files[0])[:12],
            calibration=Calibration(temperature=c.calibration.temperature, threshold=c.calibration.threshold),
            metrics=metrics,
            provenance={**provenance, "export": {"variant": c.variant, **c.details},
                        "calibration_rule": c.calibration.rule, "libraries": library_versions()},
            target=device_record(),
            reference=c.reference.to_dict() if c.reference is not None else {},
        )
        manifest.save(tmp)
        manifest.verify(tmp)
    return final
