"""ONNX dynamic int8 from the unfused graph vs from the fused one (transformer fusions first), side by side.

usage: .venv/bin/python benchmarks/onnx_fused_int8.py BUNDLES_DIR --test TEST.jsonl [--rounds 3] [--texts 200]

BUNDLES_DIR is a `convert` output with an `onnx-fp32` bundle (its model.onnx is already fused) and
an `onnx-int8` bundle. The script quantizes the fused fp32 graph with the same quantizer options as
the exporter (dynamic, per-channel and per-tensor), then measures every graph with onnxruntime
directly (one thread, batch 1, the bundle's tokenizer, the same texts, the graphs interleaved call
by call) and its test accuracy at batch 1. The exporter's own path is converters/exporters/onnx.py.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@click.command()
@click.argument("bundles", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test", "test_file", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--texts", type=click.IntRange(min=10), default=200, show_default=True, help="Texts timed per round.")
def main(bundles: Path, test_file: Path, rounds: int, texts: int) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tokenizers import Tokenizer

    manifest = json.loads((bundles / "onnx-int8" / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(bundles / "onnx-int8" / manifest["tokenizer_file"]))
    tokenizer.no_padding()
    tokenizer.enable_truncation(manifest["max_length"])
    rows = [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"int8 in the bundle": bundles / "onnx-int8" / "model.onnx",
                  "fp32 (fused)": bundles / "onnx-fp32" / "model.onnx"}
        for name, per_channel in (("int8 per-channel from fused", True), ("int8 per-tensor from fused", False)):
            graphs[name] = Path(tmp) / f"{per_channel}.onnx"
            quantize_dynamic(str(graphs["fp32 (fused)"]), str(graphs[name]), weight_type=QuantType.QInt8,
                             per_channel=per_channel, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        sessions = {name: _session(path) for name, path in graphs.items()}

        def feed(text: str) -> dict:
            enc = tokenizer.encode(text)
            return {"input_ids": np.array([enc.ids], np.int64), "attention_mask": np.array([enc.attention_mask], np.int64)}

        feeds = [feed(r["text"]) for r in rows]
        labels = manifest["labels"]
        sample = feeds[:: max(1, len(feeds) // texts)][:texts]
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(rounds):
            for f in sample:
                for name, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, f)
                    times[name].append(time.perf_counter() - start)
        click.echo(f"{len(rows)} test texts; latency: {len(sample)} texts x {rounds} rounds, one thread, batch 1, interleaved")
        click.echo("| graph | MB | test accuracy (batch 1) | p50 ms |\n|---|---:|---:|---:|")
        for name, session in sessions.items():
            correct = sum(labels[int(session.run(None, f)[0][0].argmax())] == r["label"] for f, r in zip(feeds, rows))
            click.echo(f"| {name} | {graphs[name].stat().st_size / 1e6:.1f} | {correct / len(rows):.4f} | "
                       f"{1000 * float(np.median(times[name])):.3f} |")


if __name__ == "__main__":
    main()
