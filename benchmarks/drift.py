"""Drift acceptance of issue 15: a bundle converted without some intents meets them in live traffic.

usage: .venv/bin/python benchmarks/drift.py [--teacher DIR] [--data DIR] [--held-out 8] [--held-out-seed 0]
           [--held-out-label NAME ...] [--bundle-labels kept|all] [--targets onnx] [--epochs N]
           [--convert-args "..."] [--bundle DIR] [--drift-window 1000] [--drift-threshold 0.25]
           [--phase1 2000] [--phase2 1000] [--held-out-share 0.3] [--seed 0] [--out DIR]

1. **Held-out intents**: the ``--held-out`` labels that rank first by sha256("<seed>:<label>")
   (or the ``--held-out-label`` names): deterministic, independent of Python's random module.
2. **Data**: copies of ``DATA/{train,validation,test}.jsonl`` without those intents in ``OUT/data``
   (the shared data is read, never copied into the repository).
3. **Convert**: ``edgekit convert`` on those copies (``--allow-accuracy-drop``: the scenario is
   about drift, the report still states the accuracy). convert accepts training labels that are a
   subset of the teacher's, but every bundle it writes answers all the teacher's labels: the
   held-out intents would stay in the bundle's head, trained only on the teacher's soft targets for
   other texts. ``--bundle-labels kept`` (the default) therefore first cuts the teacher's head to
   the kept labels (``OUT/teacher-kept``: ``config.json`` and ``edgekit_head.safetensors``
   rewritten, every other file linked), so that the bundle cannot name a held-out intent at all;
   ``--bundle-labels all`` converts the teacher as it is. ``--bundle DIR`` serves a bundle
   converted before, after checking that it was converted on exactly these filtered texts.
4. **Serve and replay**: ``edgekit serve BUNDLE --drift-window W --drift-threshold X`` (no cloud),
   one text per request, one request at a time. Phase 1: ``--phase1`` test texts of the kept
   intents; phase 2: ``--phase2`` requests of which ``--held-out-share`` (spread evenly) are texts
   of the held-out intents (from test, then validation and train: convert saw none of them), the
   rest kept test texts not sent before. A pool that runs out is reshuffled and reused (counted).
   The server judges its window every ``check_every`` texts (W / 20, at most 100); ``/metrics`` is
   read after each of those verdicts, GetModelInfo at the end of each phase, and the server's log
   (its WARNING ``event=drift_started`` lines) is kept.

Prints a markdown table (phase, requests, PSI per signal, alert) and the verdict: no alert in
phase 1, and after how many phase-2 requests the alert fired. With ``--out``: drift.json,
drift.md and server.log there (the data, teacher and bundles too; without it a temporary directory
holds them and is deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from edgekit.bench.rows import fingerprint, read_rows, write_rows
from edgekit.cli import run_command
from edgekit.errors import (
    ConfigError,
    ConversionError,
    DataError,
    ManifestError,
    ModelError,
)

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "validation", "test")
HEAD_FILE = "edgekit_head.safetensors"  # edgekit.converters.classifier.HEAD_FILE (not imported: it needs torch)
_DRIFT_STARTED = re.compile(r"event=drift_started signal=(\w+) psi=([\d.]+)")


# -- the split and the traffic (pure) -----------------------------------------------------------


def choose_held_out(labels: Sequence[str], count: int, seed: int = 0, named: Sequence[str] = ()) -> list[str]:
    """The held-out intents, sorted: ``named`` when given (each must be one of ``labels``), else the
    ``count`` labels ranking first by sha256("<seed>:<label>"). At least two labels must stay."""
    known = sorted(set(labels))
    if named:
        unknown = sorted(set(named) - set(known))
        if unknown:
            raise ConfigError(f"--held-out-label {', '.join(unknown)}: not a label of the data "
                              f"({', '.join(known[:5])}, ...)")
        chosen = sorted(set(named))
    else:
        chosen = sorted(sorted(known, key=lambda label: hashlib.sha256(f"{seed}:{label}".encode()).hexdigest())[:count])
    if not chosen or len(known) - len(chosen) < 2:
        raise ConfigError(f"hold out at least one of the {len(known)} labels and keep at least two "
                          f"(asked for {len(chosen)})")
    return chosen


def split_rows(rows: Sequence[dict], held_out: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(rows of kept intents, rows of held-out intents), each in the original order."""
    held = set(held_out)
    return [r for r in rows if r["label"] not in held], [r for r in rows if r["label"] in held]


@dataclass(frozen=True)
class Request:
    phase: int
    text: str
    label: str  # the true intent (not sent)
    held_out: bool


class _Pool:
    """Texts drawn without replacement in a seeded shuffled order; reshuffled when exhausted."""

    def __init__(self, rows: Sequence[dict], rng: random.Random) -> None:
        if not rows:
            raise DataError("no texts to replay for one of the phases")
        self.rows, self.rng, self.order, self.drawn, self.reused = list(rows), rng, [], 0, 0

    def draw(self) -> dict:
        if not self.order:
            self.order = list(range(len(self.rows)))
            self.rng.shuffle(self.order)
            self.order.reverse()  # pop() from the end: the shuffled order, first to last
        self.drawn += 1
        self.reused += self.drawn > len(self.rows)
        return self.rows[self.order.pop()]


def build_traffic(kept_test: Sequence[dict], held_pool: Sequence[dict], phase1: int, phase2: int,
                  share: float, seed: int = 0) -> tuple[list[Request], dict[str, int]]:
    """Phase 1: ``phase1`` kept test texts; phase 2: ``phase2`` requests, ``floor(share * phase2)``
    of them held-out texts at evenly spread positions (request i of phase 2 is held out when
    floor((i + 1) * share) > floor(i * share)), the others kept test texts continuing phase 1's order.
    Returns the requests and how many texts each pool had to reuse."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"--held-out-share must lie in [0, 1], got {share}")
    rng = random.Random(seed)
    kept, held = _Pool(kept_test, rng), _Pool(held_pool, rng) if share > 0 else None
    traffic = [Request(1, r["text"], r["label"], False) for r in (kept.draw() for _ in range(phase1))]
    for i in range(phase2):
        if int((i + 1) * share + 1e-9) > int(i * share + 1e-9):
            r = held.draw()  # type: ignore[union-attr]
            traffic.append(Request(2, r["text"], r["label"], True))
        else:
            r = kept.draw()
            traffic.append(Request(2, r["text"], r["label"], False))
    return traffic, {"kept_reused": kept.reused, "held_out_reused": held.reused if held else 0}


def parse_drift_started(line: str) -> dict[str, Any] | None:
    """The signal and PSI of a server log line ``... event=drift_started signal=S psi=P ...``."""
    match = _DRIFT_STARTED.search(line)
    return {"signal": match.group(1), "psi": float(match.group(2))} if match else None


def first_alert(timeline: Sequence[dict], phase: int) -> dict | None:
    """The first poll of ``phase`` at which any signal's alert gauge was 1."""
    return next((p for p in timeline if p["phase"] == phase and any(p["alert"].values())), None)


# -- files: data, teacher, bundle ---------------------------------------------------------------


def slice_teacher(teacher: Path, kept: Sequence[str], out: Path) -> Path:
    """A copy of the edgekit classifier ``teacher`` that answers only the ``kept`` labels (in the
    teacher's order): config.json and the head rewritten, every other file a symbolic link."""
    import shutil

    from safetensors.numpy import load_file, save_file

    config = json.loads((teacher / "config.json").read_text(encoding="utf-8"))
    if "edgekit_pooling" not in config or not (teacher / HEAD_FILE).is_file():
        raise ModelError(f"{teacher}: --bundle-labels kept needs an edgekit classifier directory (edgekit finetune: "
                         f"config.json with edgekit_pooling and {HEAD_FILE})", hint="--bundle-labels all")
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    missing = sorted(set(kept) - set(labels))
    if missing:
        raise ModelError(f"{teacher}: labels {', '.join(missing[:5])} of the data are not labels of the teacher")
    index = [i for i, label in enumerate(labels) if label in set(kept)]
    head = load_file(str(teacher / HEAD_FILE))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for entry in teacher.iterdir():
        if entry.name not in ("config.json", HEAD_FILE):
            (out / entry.name).symlink_to(entry.resolve())
    names = [labels[i] for i in index]
    config.update(id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
    config.pop("num_labels", None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    note = {"sliced_from": str(teacher.resolve()), "kept": names, "dropped": [n for n in labels if n not in names]}
    (out / "edgekit_slice.json").write_text(json.dumps(note, indent=1) + "\n", encoding="utf-8")
    save_file({"weight": head["weight"][index].copy(), "bias": head["bias"][index].copy()}, str(out / HEAD_FILE))
    return out


def run_convert(teacher: Path, data: Path, bundles: Path, targets: str, epochs: int | None,
                extra: Sequence[str]) -> float:
    """``edgekit convert`` as a subprocess (its output goes to the console); returns its wall time."""
    argv = [sys.executable, "-m", "edgekit", "convert", str(teacher),
            *(a for split in SPLITS for a in (f"--{split}", str(data / f"{split}.jsonl"))),
            "--targets", targets, "--allow-accuracy-drop", "--no-progress", "--out", str(bundles),
            *(("--epochs", str(epochs)) if epochs else ()), *extra]
    click.echo("$ " + shlex.join(argv[2:]))
    t0 = time.perf_counter()
    code = subprocess.run(argv, check=False).returncode
    if code != 0:
        raise ConversionError(f"edgekit convert failed (exit {code})")
    return time.perf_counter() - t0


def pick_bundle(bundles: Path, targets: str) -> Path:
    """The first target's int8 bundle, else its first bundle, else any bundle in ``bundles``."""
    first = targets.split(",")[0].strip()
    dirs = sorted(p for p in bundles.iterdir() if (p / "manifest.json").is_file())
    for want in (lambda p: p.name == f"{first}-int8", lambda p: p.name.startswith(f"{first}-"), lambda p: True):
        found = [p for p in dirs if want(p)]
        if found:
            return found[0]
    raise ManifestError(f"{bundles}: no bundle (no */manifest.json)")


def check_bundle(bundle: Path, train_rows: Sequence[dict]):
    """The bundle's manifest, refused unless it carries a reference and was converted on these texts."""
    from edgekit.manifest import Manifest

    manifest = Manifest.load(bundle)
    if not manifest.reference:
        raise ManifestError(f"{bundle}: the manifest has no reference: nothing to watch drift against",
                            hint="convert it again with this edgekit")
    recorded = manifest.provenance.get("data", {}).get("train")
    if recorded != fingerprint(train_rows):
        raise ConfigError(f"{bundle} was not converted on the filtered training data of these options "
                          f"(its train fingerprint {str(recorded)[:12]}, these texts' "
                          f"{fingerprint(train_rows)[:12]})",
                          hint="use the --data / --held-out* options of the run that converted it")
    return manifest


# -- the server and the replay ------------------------------------------------------------------


class Server:
    """``edgekit serve`` as a subprocess; every line it prints kept with the requests sent so far."""

    def __init__(self, argv: Sequence[str], log: Path | None) -> None:
        self.lines: list[tuple[int, str]] = []
        self.sent = 0
        self.address = self.metrics_url = None
        self._ready = threading.Event()
        self._log = log.open("w", encoding="utf-8") if log else None
        self.proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(300) or self.metrics_url is None:
            self.stop()
            raise ConfigError("edgekit serve did not start: " + " | ".join(line for _, line in self.lines[-5:]))

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip("\n")
            self.lines.append((self.sent, line))
            if self._log:
                self._log.write(line + "\n")
                self._log.flush()
            if line.startswith("serving") and " on " in line:
                self.address = line.rsplit(" on ", 1)[1].strip()
            elif line.startswith("metrics on "):
                self.metrics_url = line.split()[-1]
                self._ready.set()
        self._ready.set()  # exited before it was ready

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        if self._log:
            self._log.close()


def _poll(server: Server, request: Request, n: int, since_phase: int, held_in_window: float) -> dict:
    from edgekit.runtime.monitor_client import read_metrics

    scrape = read_metrics(server.metrics_url, timeout_s=10)

    def by_signal(name: str) -> dict[str, float]:
        return {dict(k)["signal"]: v for k, v in (scrape.series(name) or {}).items()}

    window = scrape.series("edgekit_drift_window_texts") or {}
    return {"phase": request.phase, "requests": n, "in_phase": since_phase, "held_out_in_window": held_in_window,
            "window_texts": int(sum(window.values())), "psi": by_signal("edgekit_drift_score"),
            "alert": {s: bool(v) for s, v in by_signal("edgekit_drift_alert").items()}}


def replay(server: Server, traffic: Sequence[Request], window: int, check_every: int) -> dict[str, Any]:
    """Send ``traffic`` one text per request; read /metrics after each of the server's verdicts and
    GetModelInfo at the end of each phase. Returns the timeline, the model infos and the answers."""
    from edgekit.runtime.client import EdgeClient

    timeline, infos, answers = [], {}, []
    held_flags: list[bool] = []
    since_verdict = since_phase = 0
    with EdgeClient(server.address, timeout_s=30) as client:
        for n, request in enumerate(traffic, start=1):
            (p,) = client.classify([request.text], allow_cloud=False)
            server.sent = n
            answers.append({"phase": request.phase, "label": request.label, "held_out": request.held_out,
                            "edge_label": p.edge_label or p.label, "edge_score": p.edge_score})
            held_flags.append(request.held_out)
            since_verdict, since_phase = since_verdict + 1, since_phase + 1
            last_of_phase = n == len(traffic) or traffic[n].phase != request.phase
            if since_verdict == check_every:  # the server judged its window with this request
                recent = held_flags[-window:]
                timeline.append(_poll(server, request, n, since_phase, sum(recent) / len(recent)))
                since_verdict = 0
            if last_of_phase:
                info = client.model_info()
                infos[f"phase{request.phase}"] = {"requests": n, "drift": info.summary.get("drift")}
                since_verdict, since_phase = 0, 0  # GetModelInfo made a verdict too
    return {"timeline": timeline, "model_info": infos, "answers": answers}


# -- the report ----------------------------------------------------------------------------------


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Phase 1's highest judged PSI per signal and alerts; when phase 2's alert fired; answer stats."""
    threshold, window = result["settings"]["drift_threshold"], result["settings"]["drift_window"]
    judged1 = [p for p in result["timeline"] if p["phase"] == 1 and p["window_texts"] >= window]
    signals = sorted({s for p in result["timeline"] for s in p["psi"]})
    alert = first_alert(result["timeline"], 2)
    last2 = next((p for p in reversed(result["timeline"]) if p["phase"] == 2), None)
    started = [e for e in result["server_events"] if e["phase"] == 2]
    # every verdict of phase 1: the polls after each, and GetModelInfo's at its end
    end1 = (result["model_info"].get("phase1") or {}).get("drift") or {}
    phase1_alert = any(any(p["alert"].values()) for p in result["timeline"] if p["phase"] == 1) or any(
        end1.get("drifting", {}).values())
    groups: dict[str, list[dict]] = {"kept": [], "held_out": []}
    for a in result.pop("answers"):  # one per request: summarised, not written
        groups["held_out" if a["held_out"] else "kept"].append(a)
    stats = {}
    for name, rows in groups.items():
        if rows:
            stats[name] = {"texts": len(rows), "mean_edge_score": sum(r["edge_score"] for r in rows) / len(rows),
                           "correct": sum(r["edge_label"] == r["label"] for r in rows) / len(rows),
                           "top_edge_labels": Counter(r["edge_label"] for r in rows).most_common(5)}
    return {
        "phase1_verdicts": len(judged1),
        "phase1_max_psi": {s: max((p["psi"].get(s, 0.0) for p in judged1), default=None) for s in signals},
        "phase1_alert": phase1_alert,
        "phase2_alert_after": alert["in_phase"] if alert else None,
        "phase2_alert_signals": sorted(s for s, on in alert["alert"].items() if on) if alert else [],
        "phase2_alert_psi": {s: alert["psi"][s] for s, on in alert["alert"].items() if on} if alert else {},
        "phase2_held_out_in_window_at_alert": alert["held_out_in_window"] if alert else None,
        "phase2_episodes_started": len(started),
        "phase2_alert_at_end": sorted(s for s, on in last2["alert"].items() if on) if last2 else [],
        "within_one_window": bool(alert and alert["in_phase"] <= window),
        "warning_lines": [e["line"] for e in started],
        "threshold": threshold,
        "answers": stats,
    }


def format_markdown(result: dict[str, Any], table_every: int) -> str:
    """The table (a row every ``table_every`` requests of a phase, its last row and the alert's) and the verdict."""
    s, summary, bundle, held = result["settings"], result["summary"], result["bundle"], result["held_out"]
    noise = ", ".join(f"{k} {v:.3f}" for k, v in result["noise_floor"].items())
    title = (f"## Drift: {s['dataset']} without {len(held)} of {result['labels_in_data']} intents "
             f"({bundle['name']}, window {s['drift_window']}, threshold {s['drift_threshold']})")
    setup = (f"Held out ({s['held_out_rule']}): {', '.join(held)}. The bundle answers {bundle['labels']} labels "
             f"(--bundle-labels {bundle['bundle_labels']}); test accuracy {bundle['accuracy']} on the kept intents. "
             f"Phase 1: {s['phase1']} requests of kept-intent test texts; phase 2: {s['phase2']} requests, "
             f"{s['held_out_share']:.0%} of them held-out intents spread evenly. One text per request; the server "
             f"judges its window every {s['check_every']} texts. PSI expected between two samples of the same "
             f"traffic at these window and reference sizes: {noise}.")
    header = ("| phase | requests | in phase | held-out share of window | window | PSI confidence | PSI label "
              "| PSI length | alert |")
    out = [title, "", setup, "", header, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    alert, timeline = first_alert(result["timeline"], 2), result["timeline"]
    for i, p in enumerate(timeline):
        last = i + 1 == len(timeline) or timeline[i + 1]["phase"] != p["phase"]
        if not (p["in_phase"] % table_every == 0 or p is alert or last):
            continue
        filling = "" if p["window_texts"] >= s["drift_window"] else " (filling)"
        psi = " | ".join(f"{p['psi'].get(sig, float('nan')):.3f}" for sig in ("confidence", "label", "length"))
        on = ", ".join(sig for sig, v in p["alert"].items() if v)
        out.append(f"| {p['phase']} | {p['requests']} | {p['in_phase']} | {p['held_out_in_window']:.1%} | "
                   f"{p['window_texts']}{filling} | {psi} | {f'**{on}**' if on else '–'} |")
    max1 = ", ".join(f"{k} {v:.3f}" for k, v in summary["phase1_max_psi"].items() if v is not None)
    verdict1 = "ALERT (a false alarm)" if summary["phase1_alert"] else "no alert"
    out += ["", (f"**Phase 1**: {summary['phase1_verdicts']} verdicts on a full window, highest PSI "
                 f"{max1 or '(none)'} (threshold {summary['threshold']}): {verdict1}.")]
    if alert:
        psi2 = ", ".join(f"{k} {v:.3f}" for k, v in summary["phase2_alert_psi"].items())
        where = "within" if summary["within_one_window"] else "beyond"
        out.append(f"**Phase 2**: alert after {summary['phase2_alert_after']} requests ({where} one window of "
                   f"{s['drift_window']}), held-out intents {summary['phase2_held_out_in_window_at_alert']:.1%} of "
                   f"the window; {psi2}.")
    else:
        out.append(f"**Phase 2**: no alert in {s['phase2']} requests.")
    out.append(f"Drift episodes started in phase 2: {summary['phase2_episodes_started']}; alerting at its end: "
               f"{', '.join(summary['phase2_alert_at_end']) or 'none'}.")
    out += [f"Server log: `{line}`" for line in summary["warning_lines"]]
    for name, st in summary["answers"].items():
        top = ", ".join(f"{label} ({n})" for label, n in st["top_edge_labels"])
        out.append(f"- {name} texts: {st['texts']}, mean edge score {st['mean_edge_score']:.3f}, edge label "
                   f"correct {st['correct']:.1%}, most answered: {top}")
    return "\n".join(out) + "\n"


# -- the command ---------------------------------------------------------------------------------


def _default_teacher() -> Path:
    from edgekit.cache import cache_dir

    return cache_dir() / "bench" / "banking77-mpnet-mean"


def _default_data() -> Path:
    return Path(os.environ.get("EDGEKIT_DATA") or REPO.parent / "shared" / "data") / "banking77"


@click.command()
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="Fine-tuned teacher (default: $EDGEKIT_CACHE/bench/banking77-mpnet-mean).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Directory with train/validation/test.jsonl (default: ../shared/data/banking77).")
@click.option("--held-out", "held_out_count", type=click.IntRange(min=1), default=8, show_default=True,
              help="Intents left out of the conversion.")
@click.option("--held-out-seed", type=int, default=0, show_default=True, help="Which intents (sha256 ranking).")
@click.option("--held-out-label", "held_out_named", multiple=True, help="Name the held-out intents (repeatable).")
@click.option("--bundle-labels", type=click.Choice(["kept", "all"]), default="kept", show_default=True,
              help="kept: cut the teacher's head to the kept labels first; all: convert the teacher as it is.")
@click.option("--targets", default="onnx", show_default=True, help="convert --targets.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="convert --epochs (default: convert's).")
@click.option("--convert-args", default="", help="More options for edgekit convert, as one string.")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Serve this bundle (converted before with the same data options) instead of converting.")
@click.option("--drift-window", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--drift-threshold", type=click.FloatRange(min=0, min_open=True), default=0.25, show_default=True)
@click.option("--phase1", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Requests of kept intents.")
@click.option("--phase2", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Requests with held-out intents mixed in.")
@click.option("--held-out-share", type=click.FloatRange(0, 1, min_open=True), default=0.3, show_default=True,
              help="Share of phase 2's requests from held-out intents.")
@click.option("--seed", type=int, default=0, show_default=True, help="Order of the replayed texts.")
@click.option("--table-every", type=click.IntRange(min=1), default=None,
              help="Requests between two table rows (default: window / 4); the alert row is always shown.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write drift.json, drift.md, server.log (and keep data, teacher, bundles) here.")
def main(teacher, data, held_out_count, held_out_seed, held_out_named, bundle_labels, targets, epochs, convert_args,
         bundle, drift_window, drift_threshold, phase1, phase2, held_out_share, seed, table_every, out) -> None:
    from edgekit.monitoring import DriftSettings

    settings = DriftSettings(window=drift_window, threshold=drift_threshold)
    teacher = teacher or _default_teacher()
    data = data or _default_data()
    if bundle is None and not (teacher / "config.json").is_file():
        raise ModelError(f"{teacher}: no fine-tuned teacher there (no config.json)",
                         hint="--teacher DIR; benchmarks/banking77.sh fine-tunes the banking77 one")
    rows = {}
    for name in SPLITS:
        if not (data / f"{name}.jsonl").is_file():
            raise DataError(f"{data / f'{name}.jsonl'} not found", hint="--data DIR (or set EDGEKIT_DATA)")
        rows[name] = read_rows(data / f"{name}.jsonl")
    labels = sorted({r["label"] for r in rows["train"]})
    held_out = choose_held_out(labels, held_out_count, held_out_seed, held_out_named)
    split = {name: split_rows(r, held_out) for name, r in rows.items()}
    click.echo(f"held out {len(held_out)} of {len(labels)} intents: {', '.join(held_out)}")
    with tempfile.TemporaryDirectory(prefix="edgekit-drift-") as tmp:
        work = out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        convert_seconds = None
        if bundle is None:
            filtered = work / "data"
            filtered.mkdir(exist_ok=True)
            for name, (kept, _) in split.items():
                write_rows(filtered / f"{name}.jsonl", kept)
            (filtered / "held_out.json").write_text(json.dumps(held_out, indent=1) + "\n", encoding="utf-8")
            bundles = work / "bundles"
            if (bundles / "report.json").is_file():
                click.echo(f"bundles: already converted in {bundles} (delete it to convert again)")
            else:
                source = teacher
                if bundle_labels == "kept":
                    kept_labels = [label for label in labels if label not in held_out]
                    source = slice_teacher(teacher, kept_labels, work / f"{teacher.name}-kept{len(kept_labels)}")
                convert_seconds = run_convert(source, filtered, bundles, targets, epochs, shlex.split(convert_args))
            bundle = pick_bundle(bundles, targets)
        manifest = check_bundle(bundle, split["train"][0])
        result = _serve_and_replay(bundle, manifest, settings, split, held_out, phase1, phase2, held_out_share, seed,
                                   work if out else None)
        result.update(held_out=held_out, labels_in_data=len(labels), convert_seconds=convert_seconds)
        result["settings"].update(
            dataset=data.name, teacher=str(teacher),
            held_out_rule="named" if held_out_named else f"the first {held_out_count} by sha256, seed {held_out_seed}")
        result["summary"] = summarize(result)
        every = table_every or max(settings.check_every, drift_window // 4)
        markdown = format_markdown(result, -(-every // settings.check_every) * settings.check_every)
        click.echo(markdown)
        if out is not None:
            (out / "drift.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
            (out / "drift.md").write_text(markdown, encoding="utf-8")
            click.echo(f"written: {out / 'drift.json'}, {out / 'drift.md'}, {out / 'server.log'}")


def _serve_and_replay(bundle: Path, manifest, settings, split, held_out, phase1, phase2, share, seed,
                      out: Path | None) -> dict[str, Any]:
    from edgekit.monitoring import SIGNALS, Reference, psi_noise_floor

    reference = Reference.from_dict(manifest.reference)
    noise = {s: psi_noise_floor(sum(1 for c in reference.counts(s) if c), settings.min_texts, reference.n_texts)
             for s in SIGNALS}
    # held-out texts: test first, then validation and train (convert saw none of them)
    held_pool = split["test"][1] + split["validation"][1] + split["train"][1]
    traffic, reused = build_traffic(split["test"][0], held_pool, phase1, phase2, share, seed)
    argv = [sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0", "--metrics-port", "0",
            "--threads", "1", "--drift-window", str(settings.window), "--drift-threshold", str(settings.threshold)]
    click.echo("$ " + shlex.join(argv[2:]))
    server = Server(argv, out / "server.log" if out else None)
    try:
        t0 = time.perf_counter()
        run = replay(server, traffic, settings.window, settings.check_every)
        seconds = time.perf_counter() - t0
    finally:
        server.stop()
    events = []
    for sent, line in server.lines:
        started = parse_drift_started(line)
        if started:
            events.append({**started, "line": line, "answers_received": sent, "phase": 1 if sent <= phase1 else 2})
    in_bundle = sorted(set(held_out) & set(manifest.labels))
    accuracy = manifest.metrics.get("accuracy")
    return {
        "settings": {"drift_window": settings.window, "drift_threshold": settings.threshold,
                     "check_every": settings.check_every, "phase1": phase1, "phase2": phase2,
                     "held_out_share": share, "seed": seed},
        "bundle": {"path": str(bundle), "name": manifest.name, "labels": len(manifest.labels),
                   "bundle_labels": "all" if in_bundle else "kept", "held_out_labels_in_bundle": in_bundle,
                   "accuracy": f"{accuracy:.4f}" if isinstance(accuracy, float) else "?",
                   "reference_texts": reference.n_texts},
        "noise_floor": noise,
        "traffic": {"requests": len(traffic), "seconds": seconds, **reused},
        "server_events": events,
        "server_warnings": [line for _, line in server.lines if " WARNING " in line],
        **run,
    }


if __name__ == "__main__":
    run_command(main, prog_name="drift.py")
