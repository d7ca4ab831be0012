"""Where `edgekit serve`'s time goes after the model (issue 12): each layer of the request path, cold caches.

usage: .venv/bin/python benchmarks/request_path.py BUNDLE --test E.jsonl [--rounds 1000] [--threads 1] [--out DIR]

In one process, without gRPC (see edgekit/bench/request_path.py for each subject). Run it on an
idle machine; benchmarks/server_overhead.py measures the same path through real server processes.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli import run_command


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test", "test_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="Texts to answer (JSONL/CSV with a text field).")
@click.option("--rounds", type=click.IntRange(min=10), default=1000, show_default=True, help="Timed rounds.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Engine threads.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write results.json and results.md here.")
def main(bundle, test_file, rounds, threads, out) -> None:
    from edgekit.bench.request_path import format_request_path_markdown, run_request_path
    from edgekit.bench.rows import write_figures
    from edgekit.data import load_dataset

    texts = list(load_dataset(test_file, label_field=None).texts)[::10][:100]  # 100 texts across the file
    result = run_request_path(bundle, texts, rounds=rounds, threads=threads)
    markdown = format_request_path_markdown(result)
    click.echo(markdown)
    if out is not None:
        write_figures(out, "results", result, markdown)


if __name__ == "__main__":
    run_command(main, prog_name="request_path.py")
