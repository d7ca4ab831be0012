"""``edgekit convert``: teacher → distilled student → artifacts per format → gated, calibrated bundles.

Steps: load and check data and teacher; distil; prune the vocabulary; export every variant of
every target; load each artifact with the *runtime* backend (what the device will run) and
measure accuracy, agreement and latency; calibrate; choose per format; gate on accuracy; write
bundles and the report. Everything is built in a temporary directory and moved into place at
the end, so a failed or interrupted run leaves no half bundle.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.config import ConvertConfig
from edgekit.data import load_dataset, load_splits
from edgekit.errors import AccuracyGateError, ModelError
from edgekit.manifest import Calibration, Manifest, atomic_write_text, sha256_file
from edgekit.metrics import classification_metrics, softmax
from edgekit.timing import StageTimer

__all__ = ["Candidate", "ConvertResult", "choose_lengths", "convert"]

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
    risk_coverage: list[dict] = field(default_factory=list)
    status: str = "rejected"  # written | rejected | not-selected
    reason: str = ""

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


def convert(config: ConvertConfig, echo: Callable[[str], None] = print) -> ConvertResult:
    targets = _targets(config)
    from edgekit.converters.evaluate import label_ids, load_classifier_dir

    train, val, test = load_splits(
        config.train, config.validation, config.test, text_field=config.text_field, label_field=config.label_field
    )
    unlabeled = load_dataset(config.unlabeled, text_field=config.text_field, label_field=None) if config.unlabeled else None
    teacher, teacher_tok, labels = load_classifier_dir(config.model_dir)
    extra = sorted(set(train.labels) - set(labels))
    if extra:
        raise ModelError(
            f"{config.train}: labels {', '.join(map(repr, extra[:5]))} are not labels of the model in "
            f"{config.model_dir} ({len(labels)} labels: {', '.join(labels[:5])}, ...)"
        )
    y_val, y_test = label_ids(val, labels), label_ids(test, labels)
    lengths = [len(ids) for ids in teacher_tok(list(train.texts))["input_ids"]]
    max_length, buckets, p99 = choose_lengths(lengths, config.max_length, config.buckets)
    echo(f"data: {len(train)} train / {len(val)} validation / {len(test)} test texts, {len(labels)} labels; "
         f"99th-percentile length {p99} tokens → max_length {max_length}, buckets {list(buckets)}")

    timer = StageTimer(echo)
    teacher_files = [p for p in Path(config.model_dir).iterdir() if p.suffix in (".safetensors", ".bin")]
    teacher_sha = {p.name: sha256_file(p) for p in teacher_files}
    with timer.stage("teacher scoring (validation, test)") as note:
        t_val = _teacher_logits(teacher, teacher_tok, val.texts, max_length, teacher_sha, config, note)
        t_test = _teacher_logits(teacher, teacher_tok, test.texts, max_length, teacher_sha, config, note)
    teacher_val_pred, teacher_test_pred = t_val.argmax(-1), t_test.argmax(-1)
    teacher_row = {
        "artifact": "teacher", "format": "torch", "precision": "fp32", "variant": "fp32",
        "size_bytes": sum(p.stat().st_size for p in teacher_files),
        **classification_metrics(t_test, y_test, teacher_pred=teacher_test_pred),
        "threshold": None, "cloud_rate": 0.0, "cascade_accuracy": None, "status": "teacher",
    }
    teacher_row["cascade_accuracy"] = teacher_row["accuracy"]
    echo(f"teacher: test accuracy {teacher_row['accuracy']:.4f}, size {teacher_row['size_bytes'] / 1e6:.1f} MB")

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgekit-convert-", dir=out) as tmp:
        work = Path(tmp)
        student_dir, student_info = _make_student(config, teacher, teacher_tok, labels, train, val, unlabeled,
                                                  work, max_length, echo, timer=timer, teacher_sha=teacher_sha,
                                                  t_val=t_val)
        del teacher  # the student is trained: the teacher's weights are not needed any more
        candidates = _export_all(config, targets, student_dir, train, val, test, labels, max_length, buckets,
                                 y_val, y_test, teacher_val_pred, teacher_test_pred, work, echo, timer=timer)
        failures = _select(candidates, teacher_row["accuracy"], config)
        provenance = {
            "teacher": str(Path(config.model_dir).resolve()),
            "teacher_sha256": teacher_sha,
            "data": {"train": train.fingerprint(), "validation": val.fingerprint(), "test": test.fingerprint()},
            "student": student_info,
            "edgekit": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        from edgekit.converters.report import write_report

        rows = [teacher_row] + [_row(c) for c in candidates]
        bundles = [_write_bundle(c, out, labels, max_length, provenance, teacher_row)
                   for c in candidates if c.status == "written"]
        stages = {name: {"seconds": sec, "notes": sorted(set(timer.notes.get(name, [])))}
                  for name, sec in timer.seconds.items()}
        write_report(out, rows, candidates, teacher_row, student_info, stages)
        atomic_write_text(out / "convert-config.yaml", config.to_yaml())
    echo(timer.summary())
    if failures and config.allow_accuracy_drop:
        echo("warning: written although below the accuracy gate (--allow-accuracy-drop): " + "; ".join(failures))
    elif failures:
        raise AccuracyGateError(
            "accuracy gate failed: " + "; ".join(failures)
            + f" (teacher {teacher_row['accuracy']:.4f}, allowed drop {config.max_accuracy_drop} points)",
            hint="see report.md; --allow-accuracy-drop writes them anyway",
        )
    return ConvertResult(out, bundles, rows, teacher_row)


def _teacher_logits(teacher, tokenizer, texts, max_length, teacher_sha, config, note, pooled=False):
    from edgekit.converters.teacher_cache import teacher_outputs

    out = teacher_outputs(teacher, tokenizer, list(texts), max_length=max_length, weights_sha256=teacher_sha,
                          pooled=pooled, use_cache=config.teacher_cache)
    note("cached" if out.cached else "computed")
    return (out.logits, out.pooled) if pooled else out.logits


def _make_student(config, teacher, teacher_tok, labels, train, val, unlabeled, work, max_length, echo, *,
                  timer, teacher_sha, t_val):
    """Choose the start (probes), prune its vocabulary, distil; save the student into ``work``."""
    from edgekit.converters.calibrate import fit_temperature
    from edgekit.converters.distill import (
        TransferSet,
        choose_start,
        distill,
        student_candidates,
        transfer_texts,
    )
    from edgekit.converters.evaluate import label_ids

    dconfig = _distill_config(config, max_length)
    y_train, y_val = label_ids(train, labels), label_ids(val, labels)
    texts, targets = transfer_texts(train.texts, y_train.tolist(), augment_copies=config.augment,
                                    unlabeled=list(unlabeled.texts) if unlabeled else [], seed=config.seed)
    with timer.stage("teacher scoring (transfer set)") as note:
        scored = _teacher_logits(teacher, teacher_tok, texts, max_length, teacher_sha, config, note,
                                 pooled=config.hidden_weight > 0)
    t_logits, t_pooled = scored if config.hidden_weight > 0 else (scored, None)
    teacher_T = fit_temperature(t_val, y_val) if config.calibrate_teacher else 1.0
    echo(f"transfer set: {len(texts)} texts ({len(train)} labelled); teacher temperature on validation "
         f"{teacher_T:.3f}{' (used to scale its targets)' if config.calibrate_teacher else ''}")
    with timer.stage("student start (probes)"):
        echo("probing student starts (frozen encoder + linear probe) ...")
        start = choose_start(student_candidates(dconfig, teacher, teacher_tok, labels), train.texts, y_train,
                             val.texts, y_val, max_length=max_length, echo=echo)
    chosen = start.chosen
    echo(f"student start: {chosen.name} ({start.reason})")
    info = {"source": chosen.name, "teacher_layers": chosen.layers if chosen.name.startswith("teacher") else None,
            "layers": chosen.layers, "pooling": chosen.model.pooling, "probed": start.probed,
            "choice_reason": start.reason, "probe_validation_accuracy": chosen.probe_accuracy,
            "teacher_temperature": teacher_T}
    model, tokenizer = chosen.model, chosen.tokenizer
    if config.prune_vocab:
        with timer.stage("vocabulary pruning"):
            model, tokenizer, info["vocab_pruning"] = _prune(model, tokenizer, texts + list(val.texts), val,
                                                             work / "student-pruned", max_length, echo)
    with timer.stage("distillation"):
        echo("distilling the student ...")
        result = distill(model, tokenizer, TransferSet(texts, targets, t_logits, t_pooled), val.texts, y_val,
                         dconfig, teacher_temperature=teacher_T)
    info.update(parameters=sum(p.numel() for p in result.model.parameters()),
                validation_accuracy=result.validation_accuracy, best_epoch=result.best_epoch,
                epochs_planned=result.epochs_planned, history=result.history)
    echo(f"student: {info['parameters'] / 1e6:.1f}M parameters, validation accuracy {result.validation_accuracy:.4f} "
         f"(best epoch {result.best_epoch} of {sum(1 for h in result.history if h['epoch'])} run, "
         f"{result.epochs_planned} planned; epoch 0 is the frozen start with its probe head, "
         f"{chosen.probe_accuracy:.4f})")
    student_dir = work / "student"
    result.model.save_pretrained(student_dir, safe_serialization=True)
    result.tokenizer.save_pretrained(student_dir)
    return student_dir, info


def _distill_config(config: ConvertConfig, max_length: int):
    from edgekit.converters.distill import DistillConfig

    student = config.student
    if student is not None and str(student) == "teacher-layers":
        student = None
    return DistillConfig(
        student=student, layers=config.student_layers, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, head_learning_rate=config.head_learning_rate,
        temperature=config.distill_temperature, alpha=config.alpha, calibrate_teacher=config.calibrate_teacher,
        hidden_weight=config.hidden_weight, augment=config.augment, max_length=max_length, seed=config.seed,
        progress=config.progress,
    )


def _prune(model, tokenizer, corpus, val, pruned_dir, max_length, echo):
    """Prune the start's vocabulary before training; check it answers validation as before."""
    from edgekit.converters.training import predict_logits
    from edgekit.converters.vocab import prune_vocabulary
    from transformers import AutoTokenizer

    before = predict_logits(model, tokenizer, val.texts, max_length=max_length).argmax(-1)
    pruned = prune_vocabulary(model, tokenizer, corpus, pruned_dir)
    tokenizer = AutoTokenizer.from_pretrained(pruned_dir, use_fast=True)
    after = predict_logits(model, tokenizer, val.texts, max_length=max_length).argmax(-1)
    agreement = float((after == before).mean())
    echo(f"vocabulary pruned {pruned.old_size} → {pruned.new_size} tokens "
         f"({pruned.bytes_saved / 1e6:.1f} MB fp32 saved), agreement with the unpruned start {agreement:.4f}")
    return model, tokenizer, {"tokens_before": pruned.old_size, "tokens_after": pruned.new_size,
                              "bytes_saved_fp32": pruned.bytes_saved, "agreement_with_unpruned": agreement}


def _export_all(config, targets, student_dir, train, val, test, labels, max_length, buckets,
                y_val, y_test, teacher_val_pred, teacher_test_pred, work, echo, *, timer) -> list[Candidate]:
    from edgekit.converters.calibrate import calibrate, cascade_at, risk_coverage
    from edgekit.converters.classifier import pooling_of
    from edgekit.converters.exporters import get_exporter
    from edgekit.converters.exporters.inputs import export_inputs_for
    from edgekit.converters.measure import batched_logits, latency_ms
    from edgekit.runtime.model import load_bundle_model
    from tqdm.auto import tqdm

    rng = np.random.default_rng(config.seed)
    calib_texts = [train.texts[i] for i in rng.permutation(len(train))[:300]]
    inputs = export_inputs_for(student_dir, max_length=max_length, buckets=buckets, calibration_texts=calib_texts)
    # one exporter per format: the TFLite one converts fp32 once and quantizes every variant from it
    exporters = {fmt: get_exporter(fmt) for fmt in targets}
    plan = [(fmt, v) for fmt in targets for v in (config.variants.get(fmt) or exporters[fmt].variants())]
    latency_texts = list(test.texts[: config.latency_texts])
    pooling = pooling_of(student_dir) or "cls"
    candidates = []
    for fmt, variant in tqdm(plan, desc="export", disable=None if config.progress else True):
        with timer.stage(f"export {fmt}/{variant}"):
            art = exporters[fmt].export(inputs, variant, work / "artifacts" / fmt / variant)
        with timer.stage(f"measure {fmt}/{variant}"):
            shutil.copy(student_dir / "tokenizer.json", art.directory / "tokenizer.json")
            Manifest(format=fmt, precision=art.precision, labels=labels, model_files=art.model_files,
                     max_length=max_length, buckets=art.buckets, pooling=pooling).save(art.directory)
            model = load_bundle_model(art.directory, threads=1)
            try:
                v_logits, t_logits = batched_logits(model, val.texts), batched_logits(model, test.texts)
                speed = latency_ms(model, latency_texts)
            finally:
                model.close()
            cal = calibrate(v_logits, y_val, teacher_val_pred, tolerance=config.cascade_tolerance / 100,
                            max_cloud_rate=config.max_cloud_rate)
            probs = softmax(t_logits, cal.temperature)
            scores, pred = probs.max(-1), probs.argmax(-1)
            cloud_rate, cascade = cascade_at(cal.threshold, scores, pred, teacher_test_pred, y_test)
            c = Candidate(fmt, variant, art.precision, art.directory, art.model_files, art.buckets, art.details,
                          _dir_size(art.directory, art.model_files), calibration=cal,
                          risk_coverage=risk_coverage(scores, pred, teacher_test_pred, y_test))
            c.metrics = {**classification_metrics(t_logits, y_test, teacher_pred=teacher_test_pred), **speed,
                         "threshold": cal.threshold, "temperature": cal.temperature, "cloud_rate": cloud_rate,
                         "cascade_accuracy": cascade, "ece_before": cal.ece_before, "ece_after": cal.ece_after}
        echo(f"  {fmt}/{variant}: accuracy {c.metrics['accuracy']:.4f}, agreement {c.metrics['agreement']:.4f}, "
             f"{c.size_bytes / 1e6:.1f} MB, {speed['latency_ms_p50']:.2f} ms/text; cascade {cascade:.4f} "
             f"at {cloud_rate:.1%} cloud")
        candidates.append(c)
    return candidates


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
                best = max(group, key=lambda c: c.metrics["accuracy"])
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
        )
        manifest.save(tmp)
        manifest.verify(tmp)
    return final
