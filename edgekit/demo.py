"""``edgekit demo``: the whole story on the embedded default data set.

1. fine-tune the cloud model on ``shop_intents`` (cached: a second run reuses it);
2. ``convert`` it into gated, calibrated ONNX / OpenVINO / TFLite bundles;
3. start ``edgekit serve-cloud`` and ``edgekit serve`` (the int8 ONNX bundle, falling back to
   the cloud server) as real background processes on 127.0.0.1;
4. classify a handful of shopper queries through the edge server and show who answered;
5. stop both servers.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgekit.cache import cache_dir, cache_key
from edgekit.datasets import split_path
from edgekit.errors import EdgekitError

__all__ = ["QUERIES", "run_demo"]

# The recipe of the demo's cloud model: part of the cache key.
_FINETUNE = {
    "base": "minilm-l6",
    "epochs": 6,
    "learning_rate": 1e-4,
    "max_length": 64,
    "seed": 0,
    # FinetuneConfig's defaults for everything else (batch 32, mean pooling, probe-initialised head) but
    # patience 2 and fp32, pinned in cloud_model_dir (the demo's margins were measured with them);
    # recipe 2: the pooled classifier of issue 10 (recipe 1 read the encoder at [CLS])
    "recipe": 2,
}


def _demo_variants() -> dict[str, list[str]]:
    """What each registered format's spec says the demo tries (a few variants, to stay within
    minutes on 2 cores); ``edgekit convert`` without --variant tries them all."""
    from edgekit.converters.exporters import load_formats

    formats = load_formats()
    return {name: list(formats.get(name).demo_variants) for name in formats if formats.get(name).default_target}

# The demo converts with convert's defaults and its 1-point accuracy gate on (a bundle that misses
# it stops the demo, as it would stop a user's convert), but with a student of 4 of the cloud
# model's own 6 layers. Measured on 2026-12-02 (README): a 3-layer student stayed 2.2 points below
# the cloud model on test (0.9051 vs 0.9272); with 4 layers the start `auto` prefers by 0.003 of
# probe accuracy (all-MiniLM-L6-v2's own layers) loses 1.6 points in every ONNX int8 variant, while
# the cloud model's layers came within 0.6 in fp32 and ONNX int8 (0.9209). Distilled in fp32: those
# margins (OpenVINO int8 0.95 points below, against a 1.0 gate) were measured without bf16 autocast,
# and the demo has not been re-measured with it.
_CONVERT: dict = {"student": "teacher-layers", "student_layers": 4, "mixed_precision": "no"}
# Shopper queries written for the demo (not in the data set): clear ones and vague ones.
QUERIES = [
    "where is my package, it was supposed to arrive yesterday",
    "what time do you close on saturday",
    "do you have the 65 inch tv in stock at this store",
    "i want to speak to a real person please",
    "can i use two coupons on one order",
    "hmm so about that thing from last week",
    "is it too late to do something about my order",
    "tell me a joke about penguins",
]
_PORT = re.compile(r" on [\w.\-\[\]:]*:(\d+)\s*$")


def cloud_model_dir(echo: Callable[[str], None]) -> Path:
    """Fine-tune the demo's cloud model, or reuse the cached one."""
    from edgekit.converters.training.finetune import FinetuneConfig, finetune

    train, validation = split_path("train"), split_path("validation")
    model_dir = cache_dir() / "models" / f"shop-intents-{cache_key(train, validation, **_FINETUNE)}"
    if (model_dir / "config.json").is_file():
        echo(f"[1] cloud model: reusing cached {model_dir}")
        return model_dir
    echo(f"[1] cloud model: fine-tuning {_FINETUNE['base']} on the embedded shop_intents data (minutes on 2 cores)")
    started = time.perf_counter()
    result = finetune(
        FinetuneConfig(
            train=train, validation=validation, out=model_dir, base=_FINETUNE["base"], epochs=_FINETUNE["epochs"],
            seed=_FINETUNE["seed"], max_length=_FINETUNE["max_length"], learning_rate=_FINETUNE["learning_rate"],
            patience=2, mixed_precision="no",
        )
    )
    echo(f"    validation accuracy {result.validation_accuracy:.4f} (best epoch {result.best_epoch}) "
         f"in {time.perf_counter() - started:.0f} s → {model_dir}")
    return model_dir


@contextlib.contextmanager
def _server(args: list[str], name: str, echo: Callable[[str], None], timeout_s: float = 180) -> Iterator[int]:
    """Run ``edgekit <args>`` in the background; yield its port once it reports serving; stop it."""
    cmd = [sys.executable, "-m", "edgekit", *args, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        lines = []
        port = None
        while port is None:
            line = proc.stdout.readline()
            if not line:
                raise EdgekitError(f"{name} server exited before serving:\n" + "".join(lines[-10:]))
            lines.append(line)
            match = _PORT.search(line)
            if match and line.startswith("serving"):
                port = int(match.group(1))
            if time.monotonic() > deadline:
                raise EdgekitError(f"{name} server did not report serving within {timeout_s:.0f} s")
        echo(f"    {name}: {line.strip()} (pid {proc.pid})")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        echo(f"    {name}: stopped")


def run_demo(out: Path, echo: Callable[[str], None]) -> None:
    from edgekit.config import ConvertConfig
    from edgekit.converters.pipeline import convert

    out.mkdir(parents=True, exist_ok=True)
    model_dir = cloud_model_dir(echo)

    echo("[2] edgekit convert: a student of 4 of the cloud model's 6 layers; distil, prune, quantize, export, "
         "calibrate, gate (1 point below the cloud model at most)")
    bundles_dir = out / "bundles"
    result = convert(
        ConvertConfig(model_dir=model_dir, train=split_path("train"), validation=split_path("validation"),
                      test=split_path("test"), out=bundles_dir, variants=_demo_variants(), **_CONVERT),
        echo=lambda s: echo("    " + s),
    )
    echo(f"    bundles: {', '.join(p.name for p in result.bundles)}; report: {bundles_dir / 'report.md'}")

    echo("[3] serving: the cloud model (torch) and the int8 ONNX bundle with fallback to it")
    from edgekit.runtime.client import EdgeClient

    with _server(["serve-cloud", str(model_dir)], "cloud", echo) as cloud_port, \
         _server(["serve", str(bundles_dir / "onnx-int8"), "--cloud", f"127.0.0.1:{cloud_port}",
                  "--cloud-timeout-ms", "2000"], "edge", echo) as edge_port:
        with EdgeClient(f"127.0.0.1:{edge_port}", timeout_s=30) as client:
            info = client.model_info()
            echo(f"[4] {len(QUERIES)} shopper queries → edge server (threshold {info.threshold:.3f}):")
            predictions = client.classify(QUERIES)
            for text, p in zip(QUERIES, predictions):
                echo(f"    {p.route.value:<17} {p.label:<24} score {p.score:.3f} (edge {p.edge_score:.3f})  {text}")
            routes = {p.route.value for p in predictions}
            if "CLOUD" not in routes:
                echo("    (no query fell below the threshold this time; one more with the per-request "
                     "threshold override 1.0 shows the cloud path:)")
                p = client.classify([QUERIES[-3]], threshold=1.0)[0]
                echo(f"    {p.route.value:<17} {p.label:<24} score {p.score:.3f} (edge {p.edge_score:.3f})  {QUERIES[-3]}")
    echo("[5] both servers stopped")
