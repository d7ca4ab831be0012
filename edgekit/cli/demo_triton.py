"""``make demo-triton``: the demo's cascade with NVIDIA Triton as the cloud.

    python -m edgekit.cli.demo_triton [--out demo-output] [--cloud-venv .venv-cloud]

1. the demo's outputs: its cloud model (cached) and its int8 ONNX bundle in ``OUT/bundles``
   (``edgekit demo`` runs first when they are missing);
2. ``edgekit serve-cloud MODEL_DIR --engine triton`` from the cloud venv (PyTriton needs numpy < 2);
3. ``edgekit serve`` on the bundle with ``--cloud-protocol kserve-v2`` pointing at Triton;
4. the demo's shopper queries through the edge server: routes EDGE and CLOUD;
5. Triton stopped: the low-confidence queries again, now EDGE_CLOUD_FAILED within the cloud deadline;
6. the edge server stopped.

Both servers run as child processes in sessions of their own and are stopped on the way out,
also on Ctrl-C, SIGTERM or a failure (:mod:`edgekit.bench.servers`); their logs stay in
``OUT/triton-demo/``. Exits non-zero (with the reason) when a route it shows did not come.
Module-level imports: click and the standard library only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from edgekit.runtime.types import Prediction

__all__ = ["command", "main", "run_demo_triton"]

MODEL_NAME = "shop"
CLOUD_TIMEOUT_MS = 2000  # the edge's deadline for one Triton call (2 shared cores: the first calls are slow)


def _line(p: Prediction, text: str) -> str:
    return (f"    {p.route.value:<17} {p.label:<24} score {p.score:.3f} (edge {p.edge_score:.3f}) "
            f"{p.latency_ms:7.1f} ms  {text}")


def _demo_outputs(out: Path, echo: Callable[[str], None]) -> tuple[Path, Path]:
    """The demo's cloud model directory and int8 ONNX bundle (``edgekit demo`` first if it is missing)."""
    from edgekit.demo import cloud_model_dir, run_demo

    bundle = out / "bundles" / "onnx-int8"
    if not (bundle / "manifest.json").is_file():
        from edgekit.converters import quiet_third_party
        from edgekit.deps import require

        require("torch", "transformers", "accelerate", extra="all", what="edgekit demo")
        echo(f"[0] no demo bundle in {bundle}: running the demo first (edgekit demo --out {out})")
        quiet_third_party()
        run_demo(out, lambda s: echo("    " + s))
    return cloud_model_dir(echo), bundle


def run_demo_triton(out: Path, cloud_venv: Path, echo: Callable[[str], None]) -> None:
    from edgekit.bench.servers import ServerProcess, cloud_edgekit, triton_cloud_argv
    from edgekit.demo import QUERIES
    from edgekit.errors import EdgekitError
    from edgekit.runtime.client import EdgeClient
    from edgekit.runtime.types import Route

    cloud = cloud_edgekit(cloud_venv)  # before anything slow
    model_dir, bundle = _demo_outputs(out, echo)
    echo(f"[2] edge bundle {bundle}; cloud venv {cloud_venv} (nvidia-pytriton, numpy < 2)")
    logs = out / "triton-demo"
    echo(f"[3] Triton: edgekit serve-cloud {model_dir} --engine triton --model-name {MODEL_NAME} "
         f"(log: {logs / 'triton.log'}; up to a minute on 2 busy cores)")
    with ServerProcess(triton_cloud_argv(cloud, model_dir, MODEL_NAME), logs / "triton.log", name="Triton") as triton:
        echo(f"    {triton.ready_line} (pid {triton.proc.pid})")
        edge_argv = [sys.executable, "-m", "edgekit", "serve", str(bundle), "--port", "0", "--cloud", triton.address,
                     "--cloud-protocol", "kserve-v2", "--cloud-model", MODEL_NAME,
                     "--cloud-timeout-ms", str(CLOUD_TIMEOUT_MS)]
        echo(f"[4] edge: edgekit serve {bundle} --cloud {triton.address} --cloud-protocol kserve-v2 "
             f"--cloud-model {MODEL_NAME} --cloud-timeout-ms {CLOUD_TIMEOUT_MS} (log: {logs / 'edge.log'})")
        with ServerProcess(edge_argv, logs / "edge.log", name="edge", timeout_s=180) as edge, \
                EdgeClient(edge.address, timeout_s=30) as client:
            echo(f"    {edge.ready_line} (pid {edge.proc.pid}); the cloud's labels checked against the bundle's")
            info = client.model_info()
            echo(f"[5] {len(QUERIES)} shopper queries → edge server (threshold {info.threshold:.3f}):")
            unsure, override = _show(client.classify(QUERIES), QUERIES, echo), None
            if not unsure:
                echo("    (no query fell below the threshold this time; one more with the per-request threshold "
                     "override 1.0 shows the cloud path:)")
                override = 1.0
                unsure = _show(client.classify(QUERIES[-3:-2], threshold=override), QUERIES[-3:-2], echo)
            if not unsure:
                raise EdgekitError("no query was answered by Triton (route CLOUD)", hint=f"see {triton.log}")

            code = triton.stop()
            echo(f"[6] Triton stopped (SIGTERM, exit code {code}); the same low-confidence "
                 f"{'query' if len(unsure) == 1 else 'queries'} again:")
            started = time.perf_counter()
            failed = client.classify(unsure, threshold=override)
            elapsed_ms = (time.perf_counter() - started) * 1000
            for text, p in zip(unsure, failed):
                echo(_line(p, text))
            echo(f"    answered at the edge in {elapsed_ms:.0f} ms (cloud deadline {CLOUD_TIMEOUT_MS} ms)")
            if any(p.route is not Route.EDGE_CLOUD_FAILED for p in failed):
                raise EdgekitError("with Triton stopped, a low-confidence query did not come back EDGE_CLOUD_FAILED",
                                   hint=f"see {edge.log}")
    echo("[7] both servers stopped")


def _show(predictions: Sequence[Prediction], texts: Sequence[str], echo: Callable[[str], None]) -> list[str]:
    """Echo one line per text; return the texts Triton answered (route CLOUD)."""
    from edgekit.runtime.types import Route

    for text, p in zip(texts, predictions):
        echo(_line(p, text))
    return [text for text, p in zip(texts, predictions) if p.route is Route.CLOUD]


@click.command("demo-triton", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default=Path("demo-output"), show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="The demo's output directory (its bundles are served; `edgekit demo` fills it if empty).")
@click.option("--cloud-venv", default=Path(".venv-cloud"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help='A venv with "edgekit[cloud]" (nvidia-pytriton, numpy < 2): make demo-triton makes one.')
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def command(out: Path, cloud_venv: Path, verbose: int, debug: bool) -> None:
    """The demo's cascade with NVIDIA Triton (PyTriton) as the cloud: routes EDGE, CLOUD, EDGE_CLOUD_FAILED."""
    from edgekit.bench.servers import interrupt_on_signals
    from edgekit.deps import require
    from edgekit.log import setup_logging

    setup_logging(verbose)
    require("onnxruntime", "grpc", "prometheus_client", extra="runtime", what="the Triton demo")
    with interrupt_on_signals():  # SIGTERM / SIGHUP stop both servers on the way out, as Ctrl-C does
        run_demo_triton(out, cloud_venv, click.echo)
    click.echo("demo-triton finished")


def main(argv: list[str] | None = None) -> None:
    """One-line ``Error: ...`` (plus a hint) and the error's exit code; a traceback with --debug."""
    from edgekit.cli import run_command

    run_command(command, argv, prog_name="python -m edgekit.cli.demo_triton")


if __name__ == "__main__":
    main()
