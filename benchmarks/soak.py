"""Hold `edgekit serve` under load for minutes (issue 13): requests, errors by code, p50/p99 and the
server's resident memory over time, with a cloud behind it.

usage: .venv/bin/python benchmarks/soak.py BUNDLE --test E.jsonl [--minutes 5] [--clients 64] [--out DIR]

Both servers are real `edgekit serve` processes on 127.0.0.1 (a second one on the same bundle plays
the cloud, so some queries take the fallback path); the clients run in this process. Bounded in time
(--minutes) and loopback only. Writes soak.json, soak.md and soak.png (with matplotlib) to --out.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli import run_command


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test", "test_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="Texts to send (JSONL/CSV with a text field).")
@click.option("--minutes", type=click.FloatRange(min=0.1, max=240), default=5.0, show_default=True)
@click.option("--clients", type=click.IntRange(min=1, max=1024), default=64, show_default=True)
@click.option("--window-s", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Width of each row of the timeline.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write soak.json, soak.md, soak.png here.")
def main(bundle, test_file, minutes, clients, window_s, out) -> None:
    from edgekit.bench.rows import write_figures
    from edgekit.bench.soak import edge_with_cloud, format_soak_markdown, plot_soak, run_soak
    from edgekit.data import load_dataset

    texts = list(load_dataset(test_file, label_field=None).texts)
    with edge_with_cloud(bundle) as edge:
        result = run_soak(edge.address, texts, clients=clients, seconds=minutes * 60, pid=edge.proc.pid,
                          window_s=window_s)
    markdown = format_soak_markdown(result)
    click.echo(markdown)
    if out is not None:
        write_figures(out, "soak", result, markdown)
        plot_soak(result, out / "soak.png")


if __name__ == "__main__":
    run_command(main, prog_name="soak.py")
