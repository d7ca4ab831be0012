"""What `edgekit serve` costs beyond its model (issue 12): one-client overhead and throughput under load.

usage: .venv/bin/python benchmarks/server_overhead.py BUNDLE --test E.jsonl [--clients 1,4,16,64]
           [--seconds 5] [--rounds 300] [--blocks 1] [--modes default,...] [--references LIST|none] [--threads 1]
           [--workers 2] [--compare NAME=PYTHON ...] [--out DIR]

Every server is a real `edgekit serve` process; the clients run in this process (see
edgekit/bench/overhead.py for what each figure means). Run it on an idle machine.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli import run_command


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--test", "test_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="Texts to send (JSONL/CSV with a text field).")
@click.option("--clients", default="1,4,16,64", show_default=True, help="Concurrent client counts.")
@click.option("--seconds", type=click.FloatRange(min=0.5), default=5.0, show_default=True, help="Per throughput cell.")
@click.option("--rounds", type=click.IntRange(min=10), default=300, show_default=True,
              help="Interleaved one-client rounds.")
@click.option("--blocks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat the one-client measurement this many times (--rounds each) and list each block's "
                   "overheads: the spread one run hides.")
@click.option("--modes", default=None, metavar="LIST",
              help="Server modes to measure, comma-separated (default: all of default,no-batching,wait-2ms,no-fast-lane).")
@click.option("--references", default="bare-model,fused-minimum,bare-dataplane", show_default=True, metavar="LIST",
              help="Bare servers to measure beside edgekit's, comma-separated, or `none`. `--modes default "
                   "--references none`: issue 12's three subjects alone (in-process, echo, the default server).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Engine threads.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also measure `edgekit serve --workers N` (0: not).")
@click.option("--engine-cpus", default=None, metavar="LIST",
              help="Also measure `edgekit serve --engine-cpus LIST` (the engine thread pinned to LIST, the "
                   "server's other threads to the other CPUs), as `engine-cpus-LIST`.")
@click.option("--compare", multiple=True, metavar="NAME=PYTHON",
              help="Also measure the default server of the edgekit another Python runs (e.g. a venv of an older "
                   "commit), as `default@NAME`, side by side in the same run. Repeatable.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write results.json and results.md here.")
def main(bundle, test_file, clients, seconds, rounds, blocks, modes, references, threads, workers, engine_cpus, compare,
         out) -> None:
    from edgekit.bench.overhead import format_overhead_markdown, run_overhead
    from edgekit.bench.rows import write_figures
    from edgekit.data import load_dataset
    from edgekit.errors import ConfigError

    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError as exc:
        raise ConfigError(f"--clients takes whole numbers separated by commas, got {clients!r}") from exc
    others = {}
    for entry in compare:
        name, sep, python = entry.partition("=")
        if not sep or not name or not python:
            raise ConfigError(f"--compare takes NAME=PYTHON (a Python executable), got {entry!r}")
        if not Path(python).is_file():
            raise ConfigError(f"--compare {name}: {python} is not a file (give a Python executable)")
        others[name] = python
    texts = list(load_dataset(test_file, label_field=None).texts)
    result = run_overhead(bundle, texts, clients=counts, seconds=seconds, rounds=rounds, threads=threads,
                          workers=workers, engine_cpus=engine_cpus, compare=others, blocks=blocks,
                          modes=None if modes is None else _names(modes),
                          references=[] if references.strip() == "none" else _names(references))
    markdown = format_overhead_markdown(result)
    click.echo(markdown)
    if out is not None:
        write_figures(out, "results", result, markdown)


def _names(option: str) -> list[str]:
    return [name.strip() for name in option.split(",") if name.strip()]


if __name__ == "__main__":
    run_command(main, prog_name="server_overhead.py")
