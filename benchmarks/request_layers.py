"""Where one call's time goes inside ``edgekit serve``, layer by layer, at one client.

    python benchmarks/request_layers.py BUNDLE --test E.jsonl [--rounds 1000]
        [--python OTHER/bin/python] [--serve-arg=--max-batch-size=1 ...] [--out DIR]

Starts ``edgekit serve BUNDLE --threads 1`` (from ``--python``'s install), the overhead
benchmark's bare model server (Python gRPC + the same model, nothing of edgekit's) and a
``fused-minimum`` server (the same bare server answering what edgekit's Classify answers for a
confident text, with the same validation and admission, written as one function: no layers, no
batcher, routing or bookkeeping; the floor any restructuring of edgekit's Python could reach), all
three with ``benchmarks/engine_timeline/sitecustomize.py`` timing each layer of every call
(``EDGEKIT_LAYERS``), and the bare gRPC echo; calls them one text at a time, interleaved with the
in-process model as ``benchmarks/server_overhead.py`` does (so every call runs on the caches the
others left), and prints, per layer, the median time and *own* time per call (less its timed
callees) in each server, and per call the Python around the model inside the handler (the
handler's time less tokenizer and engine; on edgekit's fast lane the handler is the servicer). The in-process harness (``request_path.py``) guesses
this from one process; this measures it where it is paid. Issue 12's session-12 profile came from it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from edgekit.cli import run_command


_WARMUP_CALLS = 20  # the interleaved benchmark's warm-up rounds, one call each
_HANDLER, _TOKENIZE, _ENGINE = "grpc: handler call", "model: tokenize", "onnxruntime: run"
_LANE_HANDLER = "servicer: Classify"  # a call on edgekit's fast lane has no grpcio handler layer: its servicer is it


def layer_rows(records: dict[str, list[dict[str, list[float]]]]) -> list[dict[str, Any]]:
    """One row per layer seen in any server: each server's median time and own time per call, in
    µs (None where the server has no such layer); rows ordered by time, the outermost first."""
    servers = list(records)
    layers: dict[str, float] = {}
    for calls in records.values():
        for name in {name for call in calls for name in call}:
            layers[name] = max(layers.get(name, 0.0), float(np.median([c[name][0] for c in calls if name in c])))
    rows = []
    for name in sorted(layers, key=layers.__getitem__, reverse=True):
        row: dict[str, Any] = {"layer": name}
        for server in servers:
            values = [c[name] for c in records[server] if name in c]
            row[server] = None if not values else {
                "us": round(float(np.median([v[0] for v in values])) * 1e6, 1),
                "own_us": round(float(np.median([v[1] for v in values])) * 1e6, 1)}
        rows.append(row)
    return rows


def handler_python_us(calls: list[dict[str, list[float]]]) -> float | None:
    """Median over calls of the handler's time less the tokenizer's and the engine's: the Python
    around the model inside the handler (µs)."""
    handler = _HANDLER if any(_HANDLER in c for c in calls) else _LANE_HANDLER
    values = [c[handler][0] - c.get(_TOKENIZE, (0.0,))[0] - c.get(_ENGINE, (0.0,))[0] for c in calls if handler in c]
    return round(float(np.median(values)) * 1e6, 1) if values else None


def format_markdown(result: dict[str, Any]) -> str:
    servers = list(result["handler_python_us"])
    p50 = result["client_p50_ms"]
    lines = [f"Bundle `{result['bundle']}`, {result['rounds']} interleaved one-client rounds.", "",
             "| subject | client p50 ms | over in-process + echo ms |", "|---|---:|---:|"]
    floor = p50["in-process"] + p50["grpc-echo"]
    for name, value in p50.items():
        over = "–" if name in ("in-process", "grpc-echo") else f"{value - floor:.3f}"
        lines.append(f"| {name} | {value:.3f} | {over} |")
    lines += ["", "Per call, median µs (own: less the timed layers it calls):", "",
              "| layer | " + " | ".join(f"{s} | {s} own" for s in servers) + " |",
              "|---|" + "---:|" * (2 * len(servers))]
    for row in result["layers"]:
        cells = []
        for server in servers:
            figures = row[server]
            cells += ["–", "–"] if figures is None else [f"{figures['us']:.1f}", f"{figures['own_us']:.1f}"]
        lines.append(f"| {row['layer']} | " + " | ".join(cells) + " |")
    lines += ["", "Python around the model inside the handler (handler − tokenizer − engine), median µs per call: "
              + ", ".join(f"{s} {v}" for s, v in result["handler_python_us"].items())]
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test", "test_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="Texts to send (JSONL/CSV with a text field).")
@click.option("--rounds", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--python", "python", type=click.Path(exists=True, dir_okay=False), default=sys.executable,
              help="The Python whose edgekit serves (default: this one).")
@click.option("--serve-arg", "serve_args", multiple=True, help="One more `edgekit serve` argument (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write results.json and results.md here.")
def main(bundle, test_file, rounds, python, serve_args, out) -> None:
    from edgekit.bench.overhead import BARE_MODEL_SCRIPT, ECHO_SCRIPT, FUSED_MINIMUM_SCRIPT, _single_client
    from edgekit.bench.rows import write_figures
    from edgekit.bench.servers import ServerProcess
    from edgekit.data import load_dataset
    from edgekit.runtime.model import load_bundle_model

    texts = list(load_dataset(test_file, label_field=None).texts)
    hooks = os.pathsep.join(filter(None, [str(Path(__file__).with_name("engine_timeline")),
                                          os.environ.get("PYTHONPATH")]))
    model = load_bundle_model(bundle, threads=1)
    servers: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name.replace(' ', '-')}.json"
                 for name in ("bare-model", "fused-minimum", "edgekit serve")}
        argv = {"bare-model": [sys.executable, "-c", BARE_MODEL_SCRIPT, str(bundle), "1"],
                "fused-minimum": [sys.executable, "-c", FUSED_MINIMUM_SCRIPT, str(bundle), "1"],
                "edgekit serve": [python, "-m", "edgekit", "serve", str(bundle), "--port", "0", "--threads", "1",
                                  *serve_args]}
        try:
            servers["grpc-echo"] = ServerProcess([sys.executable, "-c", ECHO_SCRIPT], name="grpc-echo").start()
            for name, command in argv.items():
                env = {**os.environ, "PYTHONPATH": hooks, "EDGEKIT_LAYERS": str(files[name])}
                servers[name] = ServerProcess(command, name=name.replace(" ", "-"), env=env).start()
            times = _single_client(model, servers, texts, rounds)
            time.sleep(1.5)  # the servers write their records every second
            records = {name: json.loads(path.read_text())[_WARMUP_CALLS:] for name, path in files.items()}
        finally:
            for server in servers.values():
                server.stop()
            model.close()
    result = {"bundle": str(bundle), "rounds": rounds,
              "client_p50_ms": {name: round(float(np.median(t)), 4) for name, t in times.items()},
              "layers": layer_rows(records),
              "handler_python_us": {name: handler_python_us(calls) for name, calls in records.items()}}
    markdown = format_markdown(result)
    click.echo(markdown, nl=False)
    if out is not None:
        write_figures(out, "results", result, markdown)


if __name__ == "__main__":
    run_command(main, prog_name="request_layers.py")
