"""Server load benchmark: N concurrent clients for T seconds against a real edge server, without
and with micro-batching, next to the raw backend's throughput in the same run.

    python benchmarks/load.py BUNDLE_DIR --test TEST.jsonl [--clients 8] [--seconds 10]
        [--max-batch-size 8] [--max-wait-ms 0] [--threads N] [--out DIR]
        [--cloud-triton MODEL_DIR --cloud-venv VENV [--cloud-fraction 1.0] [--cloud-timeout-ms 5000]
         [--cloud-inflight N] [--triton-max-batch-size 64] [--triton-queue-delay-us 500]]

With ``--cloud-triton`` two more rows, side by side: the edge server in front of the cloud model on
NVIDIA Triton (``serve-cloud --engine triton`` from ``--cloud-venv``, a venv with
``edgekit[cloud]``), with Triton's dynamic batching on and then off, ``--cloud-fraction`` of the
texts sent to the cloud. Prints markdown tables; with ``--out`` also writes ``load.json`` and
``load.md`` there. The library function is :func:`edgekit.bench.load.run_load`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from edgekit.cli import run_command
from edgekit.cli._options import engine_choice


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.option("--test", "test_file", type=click.Path(path_type=Path), required=True,
              help="JSONL or CSV file whose texts the clients send (cycled).")
@click.option("--text-field", default="text", show_default=True, help="Field of the texts in --test.")
@click.option("--clients", type=click.IntRange(min=1), default=8, show_default=True, help="Concurrent clients.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="How long each mode runs.")
@click.option("--max-batch-size", type=click.IntRange(min=2), default=8, show_default=True,
              help="Largest micro-batch (texts) of the micro-batching server.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="How long a request may wait for company in the micro-batching server.")
@click.option("--backend", type=engine_choice(), default="auto",
              show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads (default: the engine's).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write load.json and load.md into this directory.")
@click.option("--cloud-triton", "cloud_model_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="MODEL_DIR", help="Add the edge → Triton rows: this fine-tuned cloud model on Triton "
                                        "(dynamic batching on, then off).")
@click.option("--cloud-venv", type=click.Path(file_okay=False, path_type=Path), default=None,
              help='[cloud] A venv with "edgekit[cloud]" (PyTriton needs numpy < 2). Default: $EDGEKIT_CLOUD_VENV, '
                   "else .venv-cloud (what make demo-triton makes).")
@click.option("--cloud-fraction", type=click.FloatRange(0.0, 1.0), default=None,
              help="[cloud] Share of the texts the threshold sends to the cloud (chosen from the bundle's scores; "
                   "1.0: every text not scored 1.0).  [default: 1.0]")
@click.option("--cloud-timeout-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="[cloud] The edge's deadline for one cloud call.  [default: 5000]")
@click.option("--cloud-inflight", type=click.IntRange(min=1), default=None,
              help="[cloud] Cloud calls in flight at once (edgekit serve --cloud-max-inflight, default 4).  [default: --clients]")
@click.option("--triton-max-batch-size", type=click.IntRange(min=1), default=None,
              help="[cloud] Triton's max_batch_size.  [default: 64]")
@click.option("--triton-queue-delay-us", type=click.IntRange(min=0), default=None,
              help="[cloud] Triton's dynamic-batcher queue delay (the batching row).  [default: 500]")
@click.option("--progress/--no-progress", default=True, show_default=True, help="A progress bar over the modes.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
def command(
    bundle_dir: Path,
    test_file: Path,
    text_field: str,
    clients: int,
    seconds: float,
    max_batch_size: int,
    max_wait_ms: float,
    backend: str,
    threads: int | None,
    out_dir: Path | None,
    cloud_model_dir: Path | None,
    progress: bool,
    verbose: int,
    debug: bool,
    **cloud_options: Any,
) -> None:
    """Load-test the bundle in BUNDLE_DIR: raw backend, server without and with micro-batching (and with
    --cloud-triton, the server in front of Triton with its dynamic batching on and off)."""
    from edgekit.bench.load import LoadConfig, format_load_markdown, run_load
    from edgekit.bench.servers import interrupt_on_signals
    from edgekit.data import load_dataset
    from edgekit.log import setup_logging

    setup_logging(verbose)
    cloud = _triton_cloud(cloud_model_dir, **cloud_options)
    texts = load_dataset(test_file, text_field=text_field, label_field=None).texts
    config = LoadConfig(clients=clients, seconds=seconds, backend=backend, threads=threads,
                        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, progress=progress, cloud=cloud)
    with interrupt_on_signals():  # SIGTERM / SIGHUP stop the Triton server on the way out, as Ctrl-C does
        result = run_load(bundle_dir, texts, config)
    table = format_load_markdown(result)
    click.echo(table, nl=False)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "load.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (out_dir / "load.md").write_text(table, encoding="utf-8")
        click.echo(f"wrote {out_dir / 'load.json'} and {out_dir / 'load.md'}", err=True)


_CLOUD_FIELDS = {"cloud_venv": "venv", "cloud_fraction": "fraction", "cloud_timeout_ms": "timeout_ms",
                 "cloud_inflight": "inflight", "triton_max_batch_size": "max_batch_size",
                 "triton_queue_delay_us": "queue_delay_us"}


def _triton_cloud(model_dir: Path | None, **options: Any) -> Any:
    """The TritonCloud of the --cloud-* options (None without --cloud-triton; they need it)."""
    from edgekit.bench.load import TritonCloud
    from edgekit.errors import ConfigError

    given = {field: options[name] for name, field in _CLOUD_FIELDS.items() if options[name] is not None}
    if model_dir is None:
        if given:
            flag = "--" + next(n for n, f in _CLOUD_FIELDS.items() if f in given).replace("_", "-")
            raise ConfigError(f"{flag} applies with --cloud-triton MODEL_DIR only")
        return None
    given.setdefault("venv", Path(os.environ.get("EDGEKIT_CLOUD_VENV") or ".venv-cloud"))
    return TritonCloud(model_dir=model_dir, **given)


def main(argv: list[str] | None = None) -> None:
    """One-line ``Error: ...`` (plus a hint) and the error's exit code; a traceback with --debug."""
    run_command(command, argv, prog_name="benchmarks/load.py")


if __name__ == "__main__":
    main()
