"""The benchmark run: accuracy, cascade, latency (interleaved), cold start and memory of every subject.

Latency is measured **interleaved in short runs**: every subject answers ``run_length``
consecutive calls (10 by default), then the next subject takes over, the order rotating per run,
so that a noisy, shared machine slows all of them alike and the ratios between rows hold even
when absolute figures drift. Within a run a model answers back to back, the steady state that
MLPerf's SingleStream scenario, onnxruntime's perf test and Optimum's benchmark measure; the first
call of each run follows another subject (the 438 MB teacher evicts a small model's weights from
the caches) and is reported apart, as ``latency_ms_p50_after_switch``. ``run_length=1`` makes every
call such a call.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit.bench.subjects import Subject, bundle_subjects, optimum_baseline, teacher_subject
from edgekit.converters.measure import batched_logits  # numpy only: no convert extra needed
from edgekit.data import label_ids, load_dataset
from edgekit.errors import ConfigError, DataError
from edgekit.manifest import sha256_file
from edgekit.metrics import cascade_at, classification_metrics, expected_calibration_error, softmax

__all__ = ["BenchConfig", "run_bench"]

log = logging.getLogger(__name__)

REFERENCE_NAME = "reference.json"  # the teacher's answers, for runs without the teacher (a Pi)
CLOUD_BUDGET = 0.10  # the cascade point the results also report: at most 10% cloud calls


@dataclass(frozen=True)
class BenchConfig:
    bundles: Path
    test: Path
    out: Path
    teacher: Path | None = None
    reference: Path | None = None  # reference.json of an earlier run with the teacher
    baseline: bool = True  # the Optimum baseline row (needs --teacher and the convert extra)
    threads: tuple[int, ...] = (1,)
    batch: tuple[int, ...] = (1,)
    latency_texts: int = 200
    warmup: int = 5
    run_length: int = 10  # consecutive calls per subject before the next takes over
    probe: bool = True  # cold start + peak RSS in a separate process per artifact
    backend: str = "auto"
    text_field: str = "text"
    label_field: str = "label"
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.threads or min(self.threads) < 1:
            raise ConfigError("--threads takes positive thread counts, e.g. 1,2")
        if not self.batch or min(self.batch) < 1:
            raise ConfigError("--batch takes positive batch sizes, e.g. 1,8")
        if self.run_length < 1:
            raise ConfigError("--run-length must be at least 1")
        if self.latency_texts < 1:
            raise ConfigError("--latency-texts must be at least 1")
        if self.teacher is not None and self.reference is not None:
            raise ConfigError("give --teacher or --reference, not both")


@dataclass
class _Measured:
    subject: Subject
    pred: np.ndarray
    probs: np.ndarray
    metrics: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)  # (threads, batch) -> list of ms per call
    after_switch: dict = field(default_factory=dict)  # (threads, batch) -> ms of each run's first call
    probe: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)


def _progress(total: int, enabled: bool, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the runtime extra; a bare install just has no bar
        return None
    return tqdm(total=total, desc=desc, unit="call", disable=not enabled, leave=False)


def _subjects(config: BenchConfig, bundles: list[Subject], max_length: int, notes: list[str]) -> list[Subject]:
    labels = bundles[0].labels
    for s in bundles[1:]:
        if s.labels != labels:
            raise ConfigError(f"{s.path}: its labels differ from {bundles[0].path}'s; bench bundles of one model")
    subjects = []
    if config.teacher is not None:
        teacher = teacher_subject(config.teacher, max_length)
        if teacher.labels != labels:
            raise ConfigError(f"{config.teacher}: the teacher's labels differ from the bundles'")
        subjects.append(teacher)
        if config.baseline:
            subjects.append(optimum_baseline(config.teacher, config.out, labels, max_length))
    else:
        notes.append("No --teacher: the teacher and Optimum baseline rows are left out.")
    return subjects + bundles


def _teacher_reference(config: BenchConfig, test_sha: str, labels: list[str], n_texts: int) -> np.ndarray | None:
    if config.reference is None:
        return None
    try:
        ref = json.loads(Path(config.reference).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config.reference}: cannot read the reference ({exc})") from exc
    if ref.get("test_sha256") != test_sha:
        raise DataError(f"{config.reference} was made on another test file than {config.test}")
    answers = ref.get("teacher_labels") or []
    if len(answers) != n_texts:
        raise DataError(f"{config.reference} holds {len(answers)} answers for {n_texts} test texts")
    return label_ids(answers, labels, where=f"{config.reference} (a reference of another model?)",
                     whose="the bundles'")


def latency_sample(texts: list[str], n: int) -> list[str]:
    """``n`` texts spread evenly over the test set: test files are often sorted by label
    (banking77's first 200 texts cover 5 of its 77 intents), and text length varies by intent."""
    if n >= len(texts):
        return list(texts)
    return [texts[(i * len(texts)) // n] for i in range(n)]


def _interleaved_latency(measured: list[_Measured], models: dict, texts: list[str], threads: int, batch: int,
                         warmup: int, run_length: int, bar) -> None:
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    for m in measured:
        for chunk in chunks[:warmup]:
            models[m.subject.artifact].logits(chunk)
    times = {m.subject.artifact: [] for m in measured}
    firsts = {m.subject.artifact: [] for m in measured}
    n = len(measured)
    runs = [chunks[i : i + run_length] for i in range(0, len(chunks), run_length)]
    for k, run in enumerate(runs):
        for j in range(n):
            m = measured[(k + j) % n]  # rotate who goes first: no row always follows the same one
            model = models[m.subject.artifact]
            for chunk in run:
                start = time.perf_counter()
                model.logits(chunk)
                times[m.subject.artifact].append((time.perf_counter() - start) * 1000)
                if bar is not None:
                    bar.update(1)
            firsts[m.subject.artifact].append(times[m.subject.artifact][-len(run)])
    for m in measured:
        m.latency[(threads, batch)] = times[m.subject.artifact]
        m.after_switch[(threads, batch)] = firsts[m.subject.artifact]


def _cascade_curve(scores, pred, teacher_pred, y) -> list[dict]:
    """Cascade accuracy at every cloud rate the scores allow (thresholds between scores change nothing)."""
    points = []
    for t in np.unique(np.concatenate([[0.0], scores, [np.nextafter(scores.max(), 2.0)]])):
        rate, acc = cascade_at(float(t), scores, pred, teacher_pred, y)
        points.append({"threshold": float(t), "cloud_rate": rate, "cascade_accuracy": acc})
    return points


def _budget_point(scores, pred, teacher_pred, y, budget: float) -> dict:
    """The cascade with the edge answering its most confident (1 - budget) share: no labels used to place it."""
    k = int(np.floor(budget * len(scores)))
    threshold = float(np.sort(scores)[k]) if k < len(scores) else float(np.nextafter(scores.max(), 2.0))
    rate, acc = cascade_at(threshold, scores, pred, teacher_pred, y)
    return {"threshold": threshold, "cloud_rate": rate, "cascade_accuracy": acc}


def run_bench(config: BenchConfig, echo=print) -> dict:
    data = load_dataset(config.test, text_field=config.text_field, label_field=config.label_field)
    texts = list(data.texts)
    test_sha = sha256_file(config.test)
    notes: list[str] = []
    bundles = bundle_subjects(config.bundles, config.backend)
    max_length = max(b.max_length for b in bundles)
    subjects = _subjects(config, bundles, max_length, notes)
    labels = subjects[-1].labels
    y = label_ids(data.labels, labels, where=str(config.test), whose="the bundles'")
    teacher_ref = _teacher_reference(config, test_sha, labels, len(texts))  # checked before any measuring
    latency_texts = latency_sample(texts, config.latency_texts)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {config.out}: cannot create the results directory ({exc.strerror or exc})") from exc
    echo(f"bench: {len(subjects)} artifacts, {len(texts)} test texts, latency on {len(latency_texts)} texts "
         f"at threads {list(config.threads)} x batch {list(config.batch)}")
    measured, first_models = _accuracy(subjects, config.threads[0], texts)
    teacher = next((m for m in measured if m.subject.kind == "teacher"), None)
    teacher_pred = teacher.pred if teacher is not None else teacher_ref
    if teacher_pred is None:
        notes.append("No teacher answers (--teacher or --reference): agreement and cascade columns are empty.")
    _score(measured, y, teacher_pred)
    _latency(config, measured, first_models, latency_texts)
    if config.probe:
        _probe_all(config, measured, texts[0], max_length)
    result = _result(config, measured, teacher_pred is not None, test_sha, len(texts), len(latency_texts), notes)
    if teacher is not None:
        reference = {"test_sha256": test_sha, "teacher_labels": [labels[i] for i in teacher.pred]}
        (config.out / REFERENCE_NAME).write_text(json.dumps(reference) + "\n", encoding="utf-8")
    return result


def _accuracy(subjects: list[Subject], threads: int, texts: list[str]) -> tuple[list[_Measured], dict]:
    """Every subject loaded first (a bundle that cannot load fails before minutes of measuring), then
    its answers on every test text; the loaded models are returned for the first latency pass."""
    measured: list[_Measured] = []
    models = {}
    try:
        for s in subjects:
            models[s.artifact] = s.load(threads)
            s.backend = s.backend or getattr(models[s.artifact], "info").backend
        for s in subjects:
            # the converter's own batches (64 texts sorted by length): dynamic int8 quantizes activations
            # per call over the padded batch, so an int8 model's answers depend a little on which texts
            # share a call
            probs = softmax(batched_logits(models[s.artifact], texts, by_length=True), s.temperature)
            measured.append(_Measured(s, probs.argmax(-1), probs))
    except BaseException:
        for model in models.values():
            model.close()
        raise
    return measured, models


def _score(measured: list[_Measured], y: np.ndarray, teacher_pred: np.ndarray | None) -> None:
    for m in measured:
        m.metrics = classification_metrics(np.log(m.probs + 1e-12), y, teacher_pred=teacher_pred)
        m.metrics["ece"] = expected_calibration_error(m.probs, y)
        if m.subject.kind == "edgekit" and teacher_pred is not None:
            scores = m.probs.max(-1)
            rate, acc = cascade_at(m.subject.threshold, scores, m.pred, teacher_pred, y)
            m.metrics.update(cloud_rate=rate, cloud_calls_per_1000=rate * 1000, cascade_accuracy=acc)
            m.metrics["cascade_at_budget"] = _budget_point(scores, m.pred, teacher_pred, y, CLOUD_BUDGET)
            m.curve = _cascade_curve(scores, m.pred, teacher_pred, y)


def _latency(config: BenchConfig, measured: list[_Measured], first_models: dict, latency_texts: list[str]) -> None:
    """Latency per thread count and batch size, interleaved across subjects (the first models reused)."""
    calls = sum(len(range(0, len(latency_texts), b)) for b in config.batch) * len(measured) * len(config.threads)
    bar = _progress(calls, config.progress, "bench")
    try:
        for t_index, threads in enumerate(config.threads):
            models = first_models if t_index == 0 else {m.subject.artifact: m.subject.load(threads) for m in measured}
            try:
                for batch in config.batch:
                    _interleaved_latency(measured, models, latency_texts, threads, batch, config.warmup,
                                         config.run_length, bar)
            finally:
                for model in models.values():
                    model.close()
    finally:
        if bar is not None:
            bar.close()


def _probe_all(config: BenchConfig, measured: list[_Measured], text: str, max_length: int) -> None:
    """Cold start and peak memory, one fresh process per artifact."""
    from edgekit.bench.probe import probe

    for m in measured:
        # the engine the latency rows used (a bundle's default or --backend; torch for the teacher)
        m.probe = probe(m.subject.path, text, threads=config.threads[0], max_length=max_length,
                        backend=m.subject.backend)


def _row(m: _Measured, threads: int, batch: int, times: list[float], n_texts: int) -> dict:
    s = m.subject
    arr = np.asarray(times)
    row = {
        "artifact": s.artifact,
        "kind": s.kind,
        "format": s.format,
        "precision": s.precision,
        "backend": s.backend,
        "size_bytes": s.size_bytes,
        "accuracy": m.metrics["accuracy"],
        "macro_f1": m.metrics["macro_f1"],
        "agreement": m.metrics.get("agreement"),
        "ece": m.metrics["ece"],
        "threads": threads,
        "batch": batch,
        "latency_ms_p50": float(np.percentile(arr, 50)),
        "latency_ms_p95": float(np.percentile(arr, 95)),
        "latency_ms_p99": float(np.percentile(arr, 99)),
        # the first call of each run, right after another subject (caches cold)
        "latency_ms_p50_after_switch": (float(np.percentile(m.after_switch[(threads, batch)], 50))
                                        if m.after_switch.get((threads, batch)) else None),
        # every call list covers the n_texts timed texts once (the last batch may be short)
        "throughput_per_s": float(n_texts / (arr.sum() / 1000)),
        "calls": len(arr),
        "cold_start_ms": m.probe.get("cold_start_ms"),
        "load_ms": m.probe.get("load_ms"),
        "peak_rss_mb": m.probe.get("peak_rss_mb"),
    }
    if s.kind == "edgekit":
        budget = m.metrics.get("cascade_at_budget") or {}
        row.update(
            threshold=s.threshold,
            temperature=s.temperature,
            cloud_rate=m.metrics.get("cloud_rate"),
            cloud_calls_per_1000=m.metrics.get("cloud_calls_per_1000"),
            cascade_accuracy=m.metrics.get("cascade_accuracy"),
            cascade_accuracy_at_10pct_cloud=budget.get("cascade_accuracy"),
            cloud_rate_at_10pct_budget=budget.get("cloud_rate"),
        )
    return row


def _result(config: BenchConfig, measured: list[_Measured], has_teacher: bool, test_sha: str, n_texts: int,
            n_latency: int, notes: list[str]) -> dict:
    from edgekit.device import device_record, library_versions

    rows = [
        _row(m, threads, batch, m.latency[(threads, batch)], n_latency)
        for threads in config.threads
        for batch in config.batch
        for m in measured
    ]
    device = device_record()
    device["libraries"] = library_versions()
    return {
        "schema_version": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "config": {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                   for k, v in asdict(config).items()},
        "test": {"path": str(config.test), "sha256": test_sha, "texts": n_texts, "latency_texts": n_latency},
        "rows": rows,
        "cascade_curves": {m.subject.artifact: m.curve for m in measured if m.curve},
        "notes": notes,
        "has_teacher_answers": has_teacher,
    }
