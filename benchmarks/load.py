"""Server load benchmark: N concurrent clients for T seconds against a real edge server, without
and with micro-batching, next to the raw backend's throughput in the same run.

    python benchmarks/load.py BUNDLE_DIR --test TEST.jsonl [--clients 8] [--seconds 10]
        [--max-batch-size 8] [--max-wait-ms 0] [--threads N] [--out DIR]

Prints a markdown table; with ``--out`` also writes ``load.json`` and ``load.md`` there.
The library function is :func:`edgekit.bench.load.run_load`.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    progress: bool,
    verbose: int,
    debug: bool,
) -> None:
    """Load-test the bundle in BUNDLE_DIR: raw backend, server without and with micro-batching."""
    from edgekit.bench.load import LoadConfig, format_load_markdown, run_load
    from edgekit.data import load_dataset
    from edgekit.log import setup_logging

    setup_logging(verbose)
    texts = load_dataset(test_file, text_field=text_field, label_field=None).texts
    config = LoadConfig(clients=clients, seconds=seconds, backend=backend, threads=threads,
                        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, progress=progress)
    result = run_load(bundle_dir, texts, config)
    table = format_load_markdown(result)
    click.echo(table, nl=False)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "load.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (out_dir / "load.md").write_text(table, encoding="utf-8")
        click.echo(f"wrote {out_dir / 'load.json'} and {out_dir / 'load.md'}", err=True)


def main(argv: list[str] | None = None) -> None:
    """One-line ``Error: ...`` (plus a hint) and the error's exit code; a traceback with --debug."""
    run_command(command, argv, prog_name="benchmarks/load.py")


if __name__ == "__main__":
    main()
